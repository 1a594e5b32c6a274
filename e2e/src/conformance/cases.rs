//! The upstream cases, as data: each one's policies (the spec, in YAML) and
//! expected truth tables, written with upstream's operations. Names are
//! upstream's (`should …`); the cases of upstream's UDP and SCTP contexts
//! are prefixed `using UDP:` and `using SCTP:`. Cases that need SCTP are
//! listed in [`NOT_PORTED`] with the reason.

use super::{ANY, Case, Probe, Reachability, Relabel, Step, ns, pod};

/// Upstream cases not run here, each with why.
pub const NOT_PORTED: &[(&str, &str)] = &[
    (
        "using SCTP: should support a 'default-deny-ingress' policy",
        "the kernel here has no SCTP module to serve on",
    ),
    (
        "using SCTP: should enforce policy based on Ports",
        "the kernel here has no SCTP module to serve on",
    ),
    (
        "using SCTP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        "the kernel here has no SCTP module to serve on",
    ),
];

fn tcp(port: u16, expect: Reachability) -> Probe {
    Probe {
        port,
        udp: false,
        expect,
    }
}

fn udp(port: u16, expect: Reachability) -> Probe {
    Probe {
        port,
        udp: true,
        expect,
    }
}

fn one(policies: Vec<(&'static str, &'static str, &str)>, probes: Vec<Probe>) -> Vec<Step> {
    vec![step(policies, probes)]
}

fn step(policies: Vec<(&'static str, &'static str, &str)>, probes: Vec<Probe>) -> Step {
    relabel_step(Vec::new(), policies, probes)
}

fn relabel_step(
    relabels: Vec<Relabel>,
    policies: Vec<(&'static str, &'static str, &str)>,
    probes: Vec<Probe>,
) -> Step {
    Step {
        relabels,
        policies: policies
            .into_iter()
            .map(|(n, name, s)| (n, name, typed(s)))
            .collect(),
        probes,
    }
}

/// A spec with `policyTypes` as upstream's policy builders set it: each
/// rule list the policy has names its type (an explicit list is kept).
fn typed(spec: &str) -> String {
    if spec.contains("policyTypes") {
        return spec.to_owned();
    }
    let types: Vec<&str> = [("\ningress:", "Ingress"), ("\negress:", "Egress")]
        .into_iter()
        .filter(|(section, _)| spec.contains(section))
        .map(|(_, t)| t)
        .collect();
    format!("{spec}policyTypes: [{}]\n", types.join(", "))
}

fn case(name: &'static str, steps: Vec<Step>) -> Case {
    Case {
        name,
        steps,
        known_failure: None,
    }
}

const DENY_INGRESS: &str = "podSelector: {}\npolicyTypes: [Ingress]\n";
const DENY_ALL: &str = "podSelector: {}\npolicyTypes: [Ingress, Egress]\n";
const A_FROM_B: &str =
    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}\n";
const A_FROM_NS_Y: &str = "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}\n";

/// Every ported case, in upstream's order.
pub fn cases() -> Vec<Case> {
    let all = Reachability::all;
    let x_a_denied = || all().expect_all_ingress(pod("x", "a"), false);
    // x/a admits y only: x and z refused.
    let x_a_only_from_y = || {
        all()
            .expect_peer(ns("x"), pod("x", "a"), false)
            .expect_peer(ns("z"), pod("x", "a"), false)
    };
    vec![
        case(
            "should support a 'default-deny-ingress' policy",
            one(
                vec![("x", "deny-ingress", DENY_INGRESS)],
                vec![tcp(80, all().expect_peer(ANY, ns("x"), false))],
            ),
        ),
        case(
            "should support a 'default-deny-all' policy",
            one(
                vec![("x", "deny-all", DENY_ALL)],
                vec![tcp(
                    80,
                    all()
                        .expect_peer(ANY, ns("x"), false)
                        .expect_peer(ns("x"), ANY, false),
                )],
            ),
        ),
        case(
            "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            one(
                vec![("x", "x-a-allows-x-b", A_FROM_B)],
                vec![tcp(
                    80,
                    x_a_denied().expect_peer(pod("x", "b"), pod("x", "a"), true),
                )],
            ),
        ),
        case(
            "should enforce policy to allow ingress traffic for a target",
            one(
                vec![
                    ("x", "deny-all", DENY_INGRESS),
                    (
                        "x",
                        "allow-all-to-a",
                        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {}\n    namespaceSelector: {}\n",
                    ),
                ],
                vec![tcp(
                    80,
                    all()
                        .expect_peer(ANY, ns("x"), false)
                        .expect_all_ingress(pod("x", "a"), true),
                )],
            ),
        ),
        case(
            "should enforce policy to allow ingress traffic from pods in all namespaces",
            one(
                vec![(
                    "x",
                    "allow-from-another-ns",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {}\n",
                )],
                vec![tcp(80, all())],
            ),
        ),
        case(
            "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            one(
                vec![("x", "allow-client-a-via-ns-selector", A_FROM_NS_Y)],
                vec![tcp(80, x_a_only_from_y())],
            ),
        ),
        case(
            "should enforce policy based on PodSelector with MatchExpressions",
            one(
                vec![(
                    "x",
                    "x-a-allows-x-b",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}\n",
                )],
                vec![tcp(
                    80,
                    x_a_denied().expect_peer(pod("x", "b"), pod("x", "a"), true),
                )],
            ),
        ),
        case(
            "should enforce policy based on NamespaceSelector with MatchExpressions",
            one(
                vec![(
                    "x",
                    "allow-ns-y-match-selector",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [\"y\"]}]}\n",
                )],
                vec![tcp(80, x_a_only_from_y())],
            ),
        ),
        case(
            "should enforce policy based on PodSelector or NamespaceSelector",
            one(
                vec![(
                    "x",
                    "allow-ns-y-match-selector",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [\"x\"]}]}\n  - podSelector: {matchLabels: {pod: b}}\n",
                )],
                vec![tcp(80, all().expect_peer(pod("x", "c"), pod("x", "a"), false))],
            ),
        ),
        case(
            "should enforce policy based on PodSelector and NamespaceSelector",
            one(
                vec![(
                    "x",
                    "allow-ns-y-podselector-and-nsselector",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [\"x\"]}]}\n    podSelector: {matchLabels: {pod: b}}\n",
                )],
                vec![tcp(
                    80,
                    x_a_denied()
                        .expect_peer(pod("y", "b"), pod("x", "a"), true)
                        .expect_peer(pod("z", "b"), pod("x", "a"), true),
                )],
            ),
        ),
        case(
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            one(
                vec![(
                    "x",
                    "allow-ns-y-z-pod-b-c",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [\"x\"]}]}\n    podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}\n",
                )],
                vec![tcp(
                    80,
                    all()
                        .expect_peer(ns("x"), pod("x", "a"), false)
                        .expect_peer(pod("y", "a"), pod("x", "a"), false)
                        .expect_peer(pod("z", "a"), pod("x", "a"), false),
                )],
            ),
        ),
        case(
            "should enforce policy based on any PodSelectors",
            one(
                vec![(
                    "x",
                    "allow-ns-x-pod-b-c",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}\n  - podSelector: {matchLabels: {pod: c}}\n",
                )],
                vec![tcp(
                    80,
                    x_a_denied()
                        .expect_peer(pod("x", "b"), pod("x", "a"), true)
                        .expect_peer(pod("x", "c"), pod("x", "a"), true),
                )],
            ),
        ),
        case(
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            one(
                vec![(
                    "x",
                    "allow-ns-y-pod-a-via-namespace-pod-selector",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}\n    podSelector: {matchLabels: {pod: a}}\n",
                )],
                vec![tcp(
                    80,
                    x_a_denied().expect_peer(pod("y", "a"), pod("x", "a"), true),
                )],
            ),
        ),
        case("should enforce policy based on Ports", {
            let port81 = "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}\n  ports:\n  - {port: 81, protocol: TCP}\n";
            one(
                vec![("x", "allow-client-a-via-ns-selector", port81)],
                vec![tcp(
                    81,
                    all()
                        .expect_peer(ns("x"), pod("x", "a"), false)
                        .expect_peer(ns("y"), pod("x", "a"), true)
                        .expect_peer(ns("z"), pod("x", "a"), false),
                )],
            )
        }),
        case(
            "should enforce multiple, stacked policies with overlapping podSelectors",
            {
                let allowed = x_a_only_from_y;
                let port = |p: u16| {
                    format!(
                        "podSelector: {{matchLabels: {{pod: a}}}}\ningress:\n- from:\n  - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: \"y\"}}}}\n  ports:\n  - {{port: {p}, protocol: TCP}}\n"
                    )
                };
                vec![
                    Step {
                        relabels: Vec::new(),
                        policies: vec![("x", "allow-client-a-via-ns-selector", typed(&port(81)))],
                        probes: vec![tcp(81, allowed()), tcp(80, x_a_denied())],
                    },
                    Step {
                        relabels: Vec::new(),
                        policies: vec![("x", "allow-client-a-via-ns-selector-80", typed(&port(80)))],
                        probes: vec![tcp(80, allowed())],
                    },
                ]
            },
        ),
        case(
            "should support allow-all policy",
            one(
                vec![("x", "allow-all", "podSelector: {}\ningress:\n- {}\n")],
                vec![tcp(80, all()), tcp(81, all())],
            ),
        ),
        case(
            "should allow ingress access on one named port",
            one(
                vec![(
                    "x",
                    "allow-all",
                    "podSelector: {}\ningress:\n- ports:\n  - {port: serve-81-tcp}\n",
                )],
                vec![tcp(81, all()), tcp(80, all().expect_peer(ANY, ns("x"), false))],
            ),
        ),
        case(
            "should allow ingress access from namespace on one named port",
            one(
                vec![(
                    "x",
                    "allow-client-a-via-ns-selector-80",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}\n  ports:\n  - {port: serve-80-tcp, protocol: TCP}\n",
                )],
                vec![
                    tcp(
                        80,
                        all().expect_peer(ns("x"), pod("x", "a"), false).expect_peer(
                            ns("z"),
                            pod("x", "a"),
                            false,
                        ),
                    ),
                    tcp(81, x_a_denied()),
                ],
            ),
        ),
        case(
            "should allow egress access on one named port",
            one(
                vec![(
                    "x",
                    "allow-egress",
                    "podSelector: {}\negress:\n- ports:\n  - {port: serve-80-tcp}\n",
                )],
                vec![tcp(80, all()), tcp(81, all().expect_peer(ns("x"), ANY, false))],
            ),
        ),
        case(
            "should enforce updated policy",
            vec![
                step(
                    vec![(
                        "x",
                        "allow-all-mutate-to-deny-all",
                        "podSelector: {}\ningress:\n- {}\n",
                    )],
                    vec![tcp(81, all())],
                ),
                step(
                    vec![(
                        "x",
                        "allow-all-mutate-to-deny-all",
                        "podSelector: {}\npolicyTypes: [Ingress]\ningress: []\n",
                    )],
                    vec![tcp(81, all().expect_peer(ANY, ns("x"), false))],
                ),
            ],
        ),
        case("should allow ingress access from updated namespace", {
            let from_ns2 = "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns2: updated}}\n";
            vec![
                step(
                    vec![("x", "allow-client-a-via-ns-selector", from_ns2)],
                    vec![tcp(80, x_a_denied())],
                ),
                relabel_step(
                    vec![Relabel::Namespace("y", vec![("ns2", "updated")])],
                    vec![],
                    vec![tcp(80, x_a_denied().expect_peer(ns("y"), ANY, true))],
                ),
            ]
        }),
        case("should allow ingress access from updated pod", {
            let from_pod2 = "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b, pod2: updated}}\n";
            vec![
                step(
                    vec![("x", "allow-client-a-via-pod-selector", from_pod2)],
                    vec![tcp(80, x_a_denied())],
                ),
                relabel_step(
                    vec![Relabel::Pod(("x", "b"), vec![("pod2", "updated")])],
                    vec![],
                    vec![tcp(
                        80,
                        x_a_denied().expect_peer(pod("x", "b"), pod("x", "a"), true),
                    )],
                ),
            ]
        }),
        case(
            "should deny ingress from pods on other namespaces",
            one(
                vec![(
                    "x",
                    "deny-empty-policy",
                    "podSelector: {}\ningress:\n- from:\n  - podSelector: {}\n",
                )],
                vec![tcp(
                    80,
                    all()
                        .expect_peer(ns("y"), ns("x"), false)
                        .expect_peer(ns("z"), ns("x"), false),
                )],
            ),
        ),
        case(
            "should deny ingress access to updated pod",
            vec![
                step(
                    vec![(
                        "x",
                        "deny-ingress-via-label-selector",
                        "podSelector: {matchLabels: {target: isolated}}\npolicyTypes: [Ingress]\n",
                    )],
                    vec![tcp(80, all())],
                ),
                relabel_step(
                    vec![Relabel::Pod(("x", "a"), vec![("target", "isolated")])],
                    vec![],
                    vec![tcp(80, x_a_denied())],
                ),
            ],
        ),
        case(
            "should deny egress from pods based on PodSelector",
            one(
                vec![(
                    "x",
                    "deny-egress-pod-a",
                    "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\n",
                )],
                vec![tcp(80, all().expect_all_egress(pod("x", "a"), false))],
            ),
        ),
        case(
            "should deny egress from all pods in a namespace",
            one(
                vec![(
                    "x",
                    "deny-egress-ns-x",
                    "podSelector: {}\npolicyTypes: [Egress]\n",
                )],
                vec![tcp(80, all().expect_peer(ns("x"), ANY, false))],
            ),
        ),
        case(
            "should work with Ingress, Egress specified together",
            one(
                vec![(
                    "x",
                    "allow-client-a-via-pod-selector",
                    "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress, Ingress]\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}\negress:\n- ports:\n  - {port: 80}\n",
                )],
                vec![
                    tcp(80, x_a_denied().expect_peer(pod("x", "b"), pod("x", "a"), true)),
                    tcp(
                        81,
                        x_a_denied().expect_all_egress(pod("x", "a"), false).expect_peer(
                            pod("x", "b"),
                            pod("x", "a"),
                            true,
                        ),
                    ),
                ],
            ),
        ),
        case(
            "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            {
                let from_x_a = "ingress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"x\"}}\n    podSelector: {matchLabels: {pod: a}}\n";
                let on = |p: &str| format!("podSelector: {{matchLabels: {{pod: {p}}}}}\n{from_x_a}");
                vec![Step {
                    relabels: Vec::new(),
                    policies: vec![
                        (
                            "x",
                            "allow-to-ns-y-pod-a",
                            typed(
                                "podSelector: {matchLabels: {pod: a}}\negress:\n- to:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}\n    podSelector: {matchLabels: {pod: a}}\n",
                            ),
                        ),
                        ("y", "allow-from-xa-on-ya-match-selector", typed(&on("a"))),
                        ("y", "allow-from-xa-on-yb-match-selector", typed(&on("b"))),
                    ],
                    probes: vec![tcp(
                        80,
                        all()
                            .expect_peer(pod("x", "a"), ANY, false)
                            .expect_peer(ANY, pod("y", "a"), false)
                            .expect_peer(pod("x", "a"), pod("y", "a"), true)
                            .expect_peer(ANY, pod("y", "b"), false),
                    )],
                }]
            },
        ),
        case(
            "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            one(
                vec![(
                    "x",
                    "allow-to-ns-y-pod-a",
                    "podSelector: {matchLabels: {pod: a}}\negress:\n- to:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}\n    podSelector: {matchLabels: {pod: a}}\n",
                )],
                vec![tcp(
                    80,
                    all().expect_all_egress(pod("x", "a"), false).expect_peer(
                        pod("x", "a"),
                        pod("y", "a"),
                        true,
                    ),
                )],
            ),
        ),
        case(
            "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            one(
                vec![(
                    "x",
                    "allow-ingress-by-proto",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {protocol: TCP}\n",
                )],
                vec![
                    tcp(80, all()),
                    udp(80, all().expect_peer(ANY, pod("x", "a"), false)),
                ],
            ),
        ),
        case(
            "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            vec![
                step(
                    vec![(
                        "x",
                        "allow-ingress-port-80",
                        "podSelector: {}\ningress:\n- ports:\n  - {port: 80}\n",
                    )],
                    vec![tcp(81, all().expect_peer(ANY, ns("x"), false))],
                ),
                step(
                    vec![("x", "allow-ingress", "podSelector: {}\ningress:\n- {}\n")],
                    vec![tcp(81, all())],
                ),
            ],
        ),
        case(
            "should enforce multiple egress policies with egress allow-all policy taking precedence",
            vec![
                step(
                    vec![(
                        "x",
                        "allow-egress-port-80",
                        "podSelector: {}\negress:\n- ports:\n  - {port: 80}\n",
                    )],
                    vec![tcp(81, all().expect_peer(ns("x"), ANY, false))],
                ),
                step(
                    vec![("x", "allow-egress", "podSelector: {}\negress:\n- {}\n")],
                    vec![tcp(81, all())],
                ),
            ],
        ),
        case(
            "should stop enforcing policies after they are deleted",
            vec![
                step(
                    vec![("x", "deny-all", DENY_ALL)],
                    vec![tcp(
                        80,
                        all()
                            .expect_peer(ns("x"), ANY, false)
                            .expect_peer(ANY, ns("x"), false),
                    )],
                ),
                // The runner deletes a case's policies at its end and fails
                // the case unless everything is open again.
            ],
        ),
        case(
            "should allow egress access to server in CIDR block",
            one(
                vec![(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    "podSelector: {matchLabels: {pod: a}}\negress:\n- to:\n  - ipBlock: {cidr: \"{ip:y/b}/32\"}\n",
                )],
                vec![tcp(
                    80,
                    all().expect_all_egress(pod("x", "a"), false).expect_peer(
                        pod("x", "a"),
                        pod("y", "b"),
                        true,
                    ),
                )],
            ),
        ),
        case(
            "should enforce except clause while egress access to server in CIDR block",
            one(
                vec![(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    "podSelector: {matchLabels: {pod: a}}\negress:\n- to:\n  - ipBlock: {cidr: 0.0.0.0/4, except: [\"{ip:x/b}/32\"]}\n",
                )],
                vec![tcp(80, all().expect_peer(pod("x", "a"), pod("x", "b"), false))],
            ),
        ),
        case(
            "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            vec![
                step(
                    vec![(
                        "x",
                        "allow-client-a-via-cidr-egress-rule",
                        "podSelector: {matchLabels: {pod: a}}\negress:\n- to:\n  - ipBlock: {cidr: 0.0.0.0/4, except: [\"{ip:x/b}/32\"]}\n",
                    )],
                    vec![tcp(80, all().expect_peer(pod("x", "a"), pod("x", "b"), false))],
                ),
                step(
                    vec![(
                        "x",
                        "allow-client-a-via-cidr-egress-rule",
                        "podSelector: {matchLabels: {pod: a}}\negress:\n- to:\n  - ipBlock: {cidr: \"{ip:x/b}/32\"}\n",
                    )],
                    vec![tcp(
                        80,
                        all().expect_all_egress(pod("x", "a"), false).expect_peer(
                            pod("x", "a"),
                            pod("x", "b"),
                            true,
                        ),
                    )],
                ),
            ],
        ),
        case(
            "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            vec![
                step(
                    vec![(
                        "x",
                        "allow-egress-for-target",
                        "podSelector: {matchLabels: {pod: a}}\negress:\n- {}\n",
                    )],
                    vec![tcp(80, all())],
                ),
                step(
                    vec![(
                        "x",
                        "deny-ingress-via-label-selector",
                        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\n",
                    )],
                    vec![tcp(80, x_a_denied())],
                ),
            ],
        ),
        // Upstream calls failing these two a security hole: a policy that
        // names SCTP must not admit TCP. They probe TCP, so they run here.
        case(
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            vec![
                step(
                    vec![("x", "deny-ingress", DENY_INGRESS)],
                    vec![tcp(81, all().expect_peer(ANY, ns("x"), false))],
                ),
                step(
                    vec![(
                        "x",
                        "allow-only-sctp-ingress-on-port-81",
                        "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 81, protocol: SCTP}\n",
                    )],
                    vec![tcp(81, all().expect_peer(ANY, ns("x"), false))],
                ),
            ],
        ),
        case(
            "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
            one(
                vec![(
                    "x",
                    "allow-only-sctp-ingress-on-port-80",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 80, protocol: SCTP}\n",
                )],
                vec![tcp(81, x_a_denied())],
            ),
        ),
        case(
            "should not allow access by TCP when a policy specifies only UDP",
            one(
                vec![(
                    "x",
                    "allow-only-udp-ingress-on-port-81",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 81, protocol: UDP}\n",
                )],
                vec![tcp(81, x_a_denied())],
            ),
        ),
        case(
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            one(
                vec![(
                    "x",
                    "allow-client-a-via-ns-selector-for-immutable-ns-label",
                    A_FROM_NS_Y,
                )],
                vec![tcp(80, x_a_only_from_y())],
            ),
        ),
        case(
            "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            one(
                vec![(
                    "x",
                    "allow-ns-y-match-selector-for-immutable-ns-label",
                    "podSelector: {matchLabels: {pod: a}}\negress:\n- to:\n  - namespaceSelector:\n      matchExpressions:\n      - {key: kubernetes.io/metadata.name, operator: NotIn, values: [\"y\"]}\n",
                )],
                vec![tcp(80, all().expect_peer(pod("x", "a"), ns("y"), false))],
            ),
        ),
        case(
            "using UDP: should support a 'default-deny-ingress' policy",
            one(
                vec![("x", "deny-all", DENY_INGRESS)],
                vec![udp(80, all().expect_peer(ANY, ns("x"), false))],
            ),
        ),
        case("using UDP: should enforce policy based on Ports", {
            let port81 = "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}\n  ports:\n  - {port: 81, protocol: UDP}\n";
            one(
                vec![("x", "allow-ingress-on-port-81-ns-x", port81)],
                vec![udp(81, x_a_only_from_y())],
            )
        }),
        case(
            "using UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            one(
                vec![(
                    "x",
                    "allow-ns-y-pod-a-via-namespace-pod-selector",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}\n    podSelector: {matchLabels: {pod: a}}\n",
                )],
                vec![udp(
                    80,
                    x_a_denied().expect_peer(pod("y", "a"), pod("x", "a"), true),
                )],
            ),
        ),
    ]
}
