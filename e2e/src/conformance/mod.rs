//! The Kubernetes NetworkPolicy conformance cases (`test/e2e/network/netpol`
//! upstream) as data (`cases.yaml`, read by [`catalog`]), run on the local
//! mesh.
//!
//! The model is upstream's: namespaces `x`, `y`, `z` (labelled with their
//! names), pods `a`, `b`, `c` in each (labelled `pod: <name>`), every pod
//! serving TCP and UDP on 80 and 81 with the named ports `serve-80-tcp` and
//! so on. A [`Case`] is a list of steps; a step writes policies and probes
//! ports, each against an expected reachability truth table
//! ([`Reachability`], built with upstream's operations). A step may first
//! add labels to a pod or a namespace ([`Relabel`], upstream's
//! `AddPodLabels` and `AddNamespaceLabel`); the labels are reset when the
//! case ends. Loopback (a pod to itself) is ignored, as upstream does.
//!
//! Each pod also has a global Service of its own (`s-<pod>`), and every
//! probe runs twice ([`Target`]): to the pods' IPs, and through the
//! Services' ClusterIPs (the socket-level load balancer picks the pod),
//! as upstream's model reaches pods both ways.
//!
//! [`Layout`] says where the pods live: all in cluster-a, spread over
//! cluster-a and cluster-b by namespace, or with every namespace split
//! across the two. Across clusters the agents run with
//! `--policy-default-local-cluster=false`, so a selector that names no
//! cluster means what it means in one cluster.

mod cases;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub use cases::{Catalog, NotPorted, catalog, read};

use crate::mesh::{ClusterId, LocalMesh, MeshOptions, PodId};

/// Namespaces of the model.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pods of each namespace.
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];

/// A pod of the model, `namespace/name`.
pub type ModelPod = (&'static str, &'static str);

/// Every pod of the model, in table order.
pub fn model_pods() -> Vec<ModelPod> {
    NAMESPACES
        .iter()
        .flat_map(|ns| POD_NAMES.iter().map(move |p| (*ns, *p)))
        .collect()
}

/// A set of pods: `None` fields match any namespace or pod.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer {
    /// Namespace, or any.
    pub namespace: Option<&'static str>,
    /// Pod name, or any.
    pub pod: Option<&'static str>,
}

impl Peer {
    fn matches(&self, (ns, pod): ModelPod) -> bool {
        self.namespace.is_none_or(|n| n == ns) && self.pod.is_none_or(|p| p == pod)
    }
}

/// Any pod.
pub const ANY: Peer = Peer {
    namespace: None,
    pod: None,
};

/// Every pod of namespace `ns`.
pub const fn ns(ns: &'static str) -> Peer {
    Peer {
        namespace: Some(ns),
        pod: None,
    }
}

/// The pod `ns/pod`.
pub const fn pod(ns: &'static str, pod: &'static str) -> Peer {
    Peer {
        namespace: Some(ns),
        pod: Some(pod),
    }
}

/// Who may reach whom: a truth table over the model's pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    allowed: BTreeMap<(ModelPod, ModelPod), bool>,
}

impl Reachability {
    /// Everyone reaches everyone.
    pub fn all() -> Self {
        let pods = model_pods();
        Self {
            allowed: pods
                .iter()
                .flat_map(|f| pods.iter().map(move |t| ((*f, *t), true)))
                .collect(),
        }
    }

    /// Sets every pair from `from` to `to` (upstream's `ExpectPeer`).
    pub fn expect_peer(mut self, from: Peer, to: Peer, allowed: bool) -> Self {
        for ((f, t), v) in &mut self.allowed {
            if from.matches(*f) && to.matches(*t) {
                *v = allowed;
            }
        }
        self
    }

    /// Everything reaching `to` (upstream's `ExpectAllIngress`).
    pub fn expect_all_ingress(self, to: Peer, allowed: bool) -> Self {
        self.expect_peer(ANY, to, allowed)
    }

    /// Everything `from` sends (upstream's `ExpectAllEgress`).
    pub fn expect_all_egress(self, from: Peer, allowed: bool) -> Self {
        self.expect_peer(from, ANY, allowed)
    }

    /// Pairs that differ, loopback ignored.
    fn differences(&self, observed: &Self) -> usize {
        self.allowed
            .iter()
            .filter(|((f, t), v)| f != t && observed.allowed.get(&(*f, *t)) != Some(v))
            .count()
    }

    /// The table as text: a row per source, `.` reachable, `X` not.
    pub fn table(&self) -> Vec<String> {
        let pods = model_pods();
        let mut lines = vec![format!(
            "     {}",
            pods.iter()
                .map(|(n, p)| format!("{n}/{p}"))
                .collect::<Vec<_>>()
                .join(" ")
        )];
        for f in &pods {
            let mut line = format!("{}/{} ", f.0, f.1);
            for t in &pods {
                let cell = match (f == t, self.allowed[&(*f, *t)]) {
                    (true, _) => "  - ",
                    (false, true) => "  . ",
                    (false, false) => "  X ",
                };
                line.push_str(cell);
            }
            lines.push(line);
        }
        lines
    }
}

/// One probe: a port and protocol, and who should reach whom on it.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Destination port.
    pub port: u16,
    /// UDP rather than TCP.
    pub udp: bool,
    /// The expected truth table.
    pub expect: Reachability,
}

/// Labels a step adds before it writes its policies; reset when the case
/// ends.
#[derive(Clone, Debug)]
pub enum Relabel {
    /// Adds labels to the pod `namespace/pod`.
    Pod(ModelPod, Labels),
    /// Adds labels to a namespace (in every cluster).
    Namespace(&'static str, Labels),
}

/// Labels, as `(key, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// A NetworkPolicy a step writes (into every cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Its namespace.
    pub namespace: &'static str,
    /// Its name; a later step's policy of the same name replaces it.
    pub name: String,
    /// The spec, as YAML (JSON); `{ip:<ns>/<pod>}` becomes that pod's IP.
    pub spec: String,
}

/// Labels changed, policies written (into namespace, YAML of the spec) and
/// probes run, in that order.
#[derive(Clone, Debug)]
pub struct Step {
    /// Labels added first.
    pub relabels: Vec<Relabel>,
    /// Policies written next.
    pub policies: Vec<Policy>,
    /// What to check afterwards.
    pub probes: Vec<Probe>,
}

/// One upstream case.
#[derive(Clone, Debug)]
pub struct Case {
    /// Upstream's name for it.
    pub name: String,
    /// Steps, run in order; policies stay until the case ends.
    pub steps: Vec<Step>,
    /// Why Knit is known not to pass it, if it is.
    pub known_failure: Option<String>,
}

/// Where the model's pods run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// All pods in cluster-a.
    OneCluster,
    /// x in cluster-a, y in cluster-b, z split (a and c in cluster-a, b in cluster-b).
    TwoClusters,
    /// Every namespace split: x/a, x/c, y/b, z/a, z/c in cluster-a, the
    /// rest in cluster-b. Each policy's targets then have pods in both
    /// clusters, and each remote pod is a target as well as a peer.
    SplitNamespaces,
}

impl Layout {
    fn cluster_of(self, (ns, pod): ModelPod) -> ClusterId {
        match (self, ns, pod) {
            (Self::OneCluster, _, _) => ClusterId(0),
            (Self::TwoClusters, "y", _) | (Self::TwoClusters, "z", "b") => ClusterId(1),
            (Self::TwoClusters, _, _) => ClusterId(0),
            (Self::SplitNamespaces, "y", "b") | (Self::SplitNamespaces, "x" | "z", "a" | "c") => ClusterId(0),
            (Self::SplitNamespaces, _, _) => ClusterId(1),
        }
    }

    /// Every layout, in the order the conformance run reports them.
    pub const ALL: [Self; 3] = [Self::OneCluster, Self::TwoClusters, Self::SplitNamespaces];

    /// Words for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Self::OneCluster => "single cluster",
            Self::TwoClusters => "across clusters",
            Self::SplitNamespaces => "every namespace split across clusters",
        }
    }
}

/// Where a probe connects: each pod's own IP, or its Service's ClusterIP
/// (upstream's model probes both ways).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The pods' IPs.
    Pods,
    /// The ClusterIPs of the pods' Services (`s-<pod>`).
    Services,
}

impl Target {
    fn describe(self) -> &'static str {
        match self {
            Self::Pods => "to pod IPs",
            Self::Services => "through Services",
        }
    }
}

/// The model on a local mesh.
pub struct Model {
    /// The mesh (2 clusters of 2 nodes).
    pub mesh: LocalMesh,
    layout: Layout,
    pods: BTreeMap<ModelPod, PodId>,
}

/// The outcome of one case.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The case's name.
    pub name: String,
    /// Passed.
    pub passed: bool,
    /// Known not to pass, and why.
    pub known_failure: Option<String>,
    /// For a failure: the step, port and both tables side by side.
    pub report: String,
}

impl Model {
    /// Starts a 2-cluster mesh and creates the model's pods per `layout`.
    pub fn start(layout: Layout) -> Self {
        Self::start_routed(layout, knit_kvstore::records::RoutingMode::Tunnel)
    }

    /// [`Model::start`] on a mesh whose clusters both route as `routing`.
    pub fn start_routed(layout: Layout, routing: knit_kvstore::records::RoutingMode) -> Self {
        let agent_args = match layout {
            Layout::OneCluster => Vec::new(),
            Layout::TwoClusters | Layout::SplitNamespaces => {
                vec!["--policy-default-local-cluster=false".to_owned()]
            }
        };
        let mut mesh = LocalMesh::start(MeshOptions {
            nodes: 2,
            agent_args,
            routing_modes: vec![routing; 2],
            ..MeshOptions::default()
        });
        let mut pods = BTreeMap::new();
        for (i, (ns, name)) in model_pods().into_iter().enumerate() {
            let node = layout.cluster_of((ns, name)).node(i % 2);
            let id = mesh.add_pod(node, ns, &format!("{name}-{ns}"), &[("pod", name)]);
            pods.insert((ns, name), id);
        }
        let model = Self { mesh, layout, pods };
        model.write_namespaces(&[]);
        model.write_services();
        let open = Probe {
            port: 80,
            udp: false,
            expect: Reachability::all(),
        };
        let through = model.converge(&open, Target::Services, Duration::from_secs(60));
        assert_eq!(
            open.expect.differences(&through),
            0,
            "the model's Services never all answered ({}):\n{}",
            layout.describe(),
            through.table().join("\n")
        );
        model
    }

    /// The ClusterIP of pod `p`'s own Service.
    fn service_ip(p: ModelPod) -> Ipv4Addr {
        let index = model_pods().iter().position(|m| *m == p).expect("a model pod");
        Ipv4Addr::new(10, 96, 77, 10 + index as u8)
    }

    /// A global Service per pod, as upstream's model has (`s-<pod>` in the
    /// pod's namespace, TCP and UDP 80 and 81), in every cluster: its
    /// EndpointSlice lists the pod where it runs, and the other cluster
    /// imports it through the mesh.
    fn write_services(&self) {
        let ports = "  - {name: tcp-80, port: 80, protocol: TCP}\n  - {name: tcp-81, port: 81, protocol: TCP}\n  - {name: udp-80, port: 80, protocol: UDP}\n  - {name: udp-81, port: 81, protocol: UDP}\n";
        let slice_ports = ports.replace("  - ", "- ");
        for c in self.mesh.cluster_ids() {
            let yaml: String = model_pods()
                .into_iter()
                .map(|p @ (ns, name)| {
                    let vip = Self::service_ip(p);
                    let endpoints = if self.layout.cluster_of(p) == c {
                        format!("\n- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n", self.ip(p))
                    } else {
                        " []\n".to_owned()
                    };
                    format!(
                        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s-{name}\n  namespace: \"{ns}\"\nspec:\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n  ports:\n{ports}---\n\
                         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s-{name}-1\n  namespace: \"{ns}\"\n  labels: {{kubernetes.io/service-name: s-{name}}}\naddressType: IPv4\nports:\n{slice_ports}endpoints:{endpoints}---\n\
                         apiVersion: knit.dev/v1alpha1\nkind: GlobalServicePolicy\nmetadata:\n  name: s-{name}\n  namespace: \"{ns}\"\nspec:\n  services: [s-{name}]\n---\n"
                    )
                })
                .collect();
            self.mesh.write_manifest(c, "services.yaml", &yaml);
        }
    }

    /// Writes the model's namespaces into every cluster, each labelled
    /// `ns: <name>` plus what `extra` adds to it.
    fn write_namespaces(&self, extra: &[(&'static str, Labels)]) {
        let namespaces: String = NAMESPACES
            .iter()
            .map(|n| {
                let added: String = extra
                    .iter()
                    .filter(|(ns, _)| ns == n)
                    .flat_map(|(_, labels)| labels.iter().map(|(k, v)| format!(", {k}: \"{v}\"")))
                    .collect();
                format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"{n}\"\n  labels: {{ns: \"{n}\"{added}}}\n---\n")
            })
            .collect();
        for c in self.mesh.cluster_ids() {
            self.mesh.write_manifest(c, "namespaces.yaml", &namespaces);
        }
    }

    /// Writes pod `p`'s manifest with `pod: <name>` plus `extra`.
    fn label_pod(&self, p: ModelPod, extra: &[(String, String)]) {
        let pod = self.mesh.pod(self.pods[&p]);
        let mut labels = vec![("pod", p.1)];
        labels.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.mesh
            .register_pod(pod.node, &pod.namespace, &pod.name, pod.ip, &labels);
    }

    /// Applies `relabels`, keeping what namespaces already gained in `namespaces`.
    fn relabel(&self, relabels: &[Relabel], namespaces: &mut Vec<(&'static str, Labels)>) {
        for r in relabels {
            match r {
                Relabel::Pod(p, labels) => self.label_pod(*p, labels),
                Relabel::Namespace(ns, labels) => {
                    namespaces.push((ns, labels.clone()));
                    self.write_namespaces(namespaces);
                }
            }
        }
    }

    fn ip(&self, p: ModelPod) -> Ipv4Addr {
        self.mesh.pod(self.pods[&p]).ip
    }

    /// Who reaches whom on `port` right now, at the pods' IPs or through
    /// their Services (one request per pair).
    pub fn observe(&self, port: u16, udp: bool, via: Target) -> Reachability {
        let pods = model_pods();
        let address = |p: ModelPod| match via {
            Target::Pods => self.ip(p),
            Target::Services => Self::service_ip(p),
        };
        let targets: Vec<String> = pods.iter().map(|p| format!("{}:{port}", address(*p))).collect();
        let joined = targets.join(",");
        let mut observed = Reachability::all();
        std::thread::scope(|s| {
            let runs: Vec<_> = pods
                .iter()
                .map(|from| {
                    let joined = joined.clone();
                    let p = self.pods[from];
                    s.spawn(move || {
                        let mut args = vec!["matrix", "--to", joined.as_str(), "--timeout-ms", "500"];
                        if udp {
                            args.push("--udp");
                        }
                        (*from, self.mesh.probe(p, &args))
                    })
                })
                .collect();
            for run in runs {
                let (from, out) = run.join().expect("probe thread");
                let answers: BTreeMap<String, bool> = serde_json::from_str(out.trim()).unwrap_or_default();
                for (to, target) in pods.iter().zip(&targets) {
                    observed
                        .allowed
                        .insert((from, *to), answers.get(target).copied().unwrap_or(false));
                }
            }
        });
        observed
    }

    fn write_policies(&self, case: usize, policies: &[Policy]) {
        for Policy {
            namespace,
            name,
            spec,
        } in policies
        {
            let mut spec = spec.clone();
            for p in model_pods() {
                spec = spec.replace(&format!("{{ip:{}/{}}}", p.0, p.1), &self.ip(p).to_string());
            }
            let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
            let yaml = format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: \"{namespace}\"\nspec:\n{indented}"
            );
            // The same policies in every cluster, as one GitOps repository
            // would apply them; a later step's policy of the same name
            // replaces the earlier one.
            for c in self.mesh.cluster_ids() {
                self.mesh
                    .write_manifest(c, &format!("netpol-{case}-{namespace}-{name}.yaml"), &yaml);
            }
        }
    }

    fn remove_policies(&self) {
        for c in self.mesh.cluster_ids() {
            let dir = self.mesh.cluster(c).control.source_dir();
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with("netpol-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Waits until `expect` holds on `probe` (policies reach every agent
    /// within a few seconds); the last observation either way.
    fn converge(&self, probe: &Probe, via: Target, timeout: Duration) -> Reachability {
        let deadline = Instant::now() + timeout;
        loop {
            let observed = self.observe(probe.port, probe.udp, via);
            if probe.expect.differences(&observed) == 0 || Instant::now() > deadline {
                return observed;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs one case and removes its policies; a failure carries both tables.
    pub fn run(&self, index: usize, case: &Case) -> Outcome {
        let mut report = String::new();
        let mut passed = true;
        let mut namespaces = Vec::new();
        for (s, step) in case.steps.iter().enumerate() {
            self.relabel(&step.relabels, &mut namespaces);
            self.write_policies(index, &step.policies);
            for (probe, via) in step
                .probes
                .iter()
                .flat_map(|p| [(p, Target::Pods), (p, Target::Services)])
            {
                let observed = self.converge(probe, via, Duration::from_secs(15));
                let wrong = probe.expect.differences(&observed);
                if wrong > 0 {
                    passed = false;
                    let _ = writeln!(
                        report,
                        "  step {}, {} {} {}: {wrong} pair(s) differ ({}); expected | observed",
                        s + 1,
                        if probe.udp { "UDP" } else { "TCP" },
                        probe.port,
                        via.describe(),
                        self.layout.describe()
                    );
                    for (e, o) in probe.expect.table().iter().zip(observed.table()) {
                        let _ = writeln!(report, "    {e}   |   {o}");
                    }
                }
            }
        }
        self.remove_policies();
        for r in case.steps.iter().flat_map(|s| &s.relabels) {
            if let Relabel::Pod(p, _) = r {
                self.label_pod(*p, &[]);
            }
        }
        if !namespaces.is_empty() {
            self.write_namespaces(&[]);
        }
        // Back to open before the next case: every case also checks that
        // its policies stop being enforced once deleted (upstream's
        // "should stop enforcing policies after they are deleted").
        let open = Probe {
            port: 80,
            udp: false,
            expect: Reachability::all(),
        };
        let reopened = self.converge(&open, Target::Pods, Duration::from_secs(15));
        let stuck = open.expect.differences(&reopened);
        if stuck > 0 {
            passed = false;
            let _ = writeln!(
                report,
                "  after its policies were deleted, TCP 80: {stuck} pair(s) still closed ({}); expected | observed",
                self.layout.describe()
            );
            for (e, o) in open.expect.table().iter().zip(reopened.table()) {
                let _ = writeln!(report, "    {e}   |   {o}");
            }
        }
        Outcome {
            name: case.name.clone(),
            passed,
            known_failure: case.known_failure.clone(),
            report,
        }
    }
}
