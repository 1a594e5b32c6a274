//! What `knitctl observe`, `services`, `identities`, `ipcache` and
//! `endpoints` print for people: one line per flow, one table per node.
//! Pure: the agents' answers ([`knit_agent_api`]) in, text out. `-o json`
//! prints the answers themselves.

use std::fmt::Write as _;

use knit_agent_api::{EndpointTable, Flow, IdentityTable, IpcacheTable, PolicyTable, ServiceTable};

/// RFC 3339 time of a flow (UTC, microseconds).
fn time(flow: &Flow) -> String {
    let nanos = i128::try_from(flow.time_unix_nanos).unwrap_or_default();
    jiff::Timestamp::from_nanosecond(nanos)
        .map(|t| format!("{t:.6}"))
        .unwrap_or_else(|_| flow.time_unix_nanos.to_string())
}

fn end(p: &knit_agent_api::Peer) -> String {
    let mut s = p.name();
    if p.port != 0 {
        let _ = write!(s, ":{}", p.port);
    }
    match (&p.cluster, p.identity) {
        (Some(c), 0) => format!("{s} ({c})"),
        (Some(c), id) => format!("{s} ({c}, identity {id})"),
        (None, 0) => s,
        (None, id) => format!("{s} (identity {id})"),
    }
}

/// One flow on one line, as `hubble observe` prints it.
pub fn flow_line(flow: &Flow) -> String {
    let mut line = format!(
        "{} {} {} {} -> {}",
        time(flow),
        flow.node,
        flow.protocol,
        end(&flow.source),
        end(&flow.destination)
    );
    let verdict = flow.verdict.name().to_uppercase();
    match (&flow.service, &flow.drop_reason) {
        (Some(service), _) if flow.verdict == knit_agent_api::Verdict::Translated => {
            let name = flow.service_name.as_deref().unwrap_or("?");
            let _ = write!(line, " {verdict} from service {service} ({name})");
        }
        (_, Some(reason)) => {
            let _ = write!(line, " {verdict} ({reason})");
        }
        _ => {
            let _ = write!(line, " {verdict}");
        }
    }
    if let Some(direction) = &flow.direction {
        let _ = write!(line, " {direction}");
    }
    if !flow.policies.is_empty() {
        let _ = write!(line, " policies: {}", flow.policies.join(", "));
    } else if flow.verdict == knit_agent_api::Verdict::Denied {
        line.push_str(" policies: none selects the pod any longer");
    }
    line
}

fn differences(out: &mut String, node: &str, differences: &[String]) {
    if differences.is_empty() {
        let _ = writeln!(out, "{node}: the datapath holds what the kvstore says");
    }
    for d in differences {
        let _ = writeln!(out, "{node}: DIFFERS: {d}");
    }
}

/// `knitctl services`.
pub fn services(tables: &[ServiceTable]) -> String {
    let mut out = String::new();
    for t in tables {
        let _ = writeln!(out, "NODE {}", t.node);
        let _ = writeln!(
            out,
            "  FRONTEND                 SERVICE                  AFFINITY  BACKENDS"
        );
        for s in &t.services {
            let frontend = format!("{}:{}/{}", s.vip, s.port, s.protocol);
            let per_cluster: Vec<String> = s
                .backends_per_cluster()
                .into_iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect();
            let _ = writeln!(
                out,
                "  {frontend:<24} {:<24} {:<9} {} ({})",
                s.name.as_deref().unwrap_or("-"),
                s.affinity.as_deref().unwrap_or("-"),
                s.backends.iter().filter(|b| b.in_datapath).count(),
                per_cluster.join(", ")
            );
            for b in &s.backends {
                let _ = writeln!(
                    out,
                    "      {}:{} {} {}{}",
                    b.ip,
                    b.port,
                    b.cluster.as_deref().unwrap_or("?"),
                    b.pod.as_deref().unwrap_or("-"),
                    if b.in_datapath {
                        ""
                    } else {
                        "  (NOT in the datapath)"
                    }
                );
            }
        }
        differences(&mut out, &t.node, &t.differences);
    }
    out
}

/// `knitctl identities`.
pub fn identities(tables: &[IdentityTable]) -> String {
    let mut out = String::new();
    for t in tables {
        let _ = writeln!(out, "NODE {}", t.node);
        let _ = writeln!(out, "  IDENTITY  CLUSTER          ADDRESSES  LABELS");
        for i in &t.identities {
            let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                out,
                "  {:<9} {:<16} {:<10} {}",
                i.identity,
                i.cluster.as_deref().unwrap_or("?"),
                i.addresses,
                labels.join(",")
            );
        }
        differences(&mut out, &t.node, &t.differences);
    }
    out
}

/// `knitctl ipcache`.
pub fn ipcache(tables: &[IpcacheTable]) -> String {
    let mut out = String::new();
    for t in tables {
        let _ = writeln!(out, "NODE {}", t.node);
        let _ = writeln!(out, "  PREFIX              IDENTITY  TUNNEL ENDPOINT  ORIGIN");
        for e in &t.entries {
            let _ = writeln!(
                out,
                "  {:<19} {:<9} {:<16} {}",
                e.prefix,
                e.identity,
                e.tunnel_endpoint
                    .map_or("(this node)".to_owned(), |t| t.to_string()),
                e.origin.as_deref().unwrap_or("-")
            );
        }
        differences(&mut out, &t.node, &t.differences);
    }
    out
}

/// `knitctl endpoints`.
pub fn endpoints(tables: &[EndpointTable]) -> String {
    let mut out = String::new();
    for t in tables {
        let _ = writeln!(out, "NODE {}", t.node);
        let _ = writeln!(
            out,
            "  ADDRESS          IDENTITY  INGRESS   EGRESS    IFINDEX  POD"
        );
        let state = |on: bool| if on { "enforced" } else { "open" };
        for e in &t.endpoints {
            let _ = writeln!(
                out,
                "  {:<16} {:<9} {:<9} {:<9} {:<8} {}",
                e.ip,
                e.identity,
                state(e.ingress_enforced),
                state(e.egress_enforced),
                e.ifindex,
                e.pod.as_deref().unwrap_or("-")
            );
        }
        differences(&mut out, &t.node, &t.differences);
    }
    out
}

/// `knitctl policy <pod>`.
pub fn policy(tables: &[PolicyTable]) -> String {
    let mut out = String::new();
    let state = |on: bool| {
        if on {
            "enforced"
        } else {
            "open (no policy selects it)"
        }
    };
    for t in tables {
        let ip = t.ip.map_or("-".to_owned(), |ip| ip.to_string());
        let _ = writeln!(out, "NODE {} POD {} ({ip})", t.node, t.pod);
        let _ = writeln!(out, "  ingress: {}", state(t.ingress_enforced));
        let _ = writeln!(out, "  egress:  {}", state(t.egress_enforced));
        let _ = writeln!(
            out,
            "  DIRECTION VERDICT PEER                         PORT   POLICIES"
        );
        for e in &t.entries {
            let mut peer = e.peer.clone();
            if let Some(c) = &e.peer_cluster {
                let labels: Vec<String> = e
                    .peer_labels
                    .iter()
                    .filter(|(k, _)| !k.starts_with("io.") && k.as_str() != "knit.dev/cluster")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                peer = format!("{peer} ({c} {})", labels.join(","));
            }
            let port = if e.port == 0 {
                e.protocol.clone()
            } else {
                format!("{}/{}", e.port, e.protocol)
            };
            let _ = writeln!(
                out,
                "  {:<9} {:<7} {peer:<28} {port:<6} {}{}",
                e.direction,
                e.verdict,
                if e.policies.is_empty() {
                    "-".to_owned()
                } else {
                    e.policies.join(", ")
                },
                if e.in_datapath {
                    ""
                } else {
                    "  (NOT in the datapath)"
                }
            );
        }
        differences(&mut out, &t.node, &t.differences);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use knit_agent_api::{Backend, Peer, ServiceEntry, Verdict};

    use super::*;

    fn peer(ip: [u8; 4], port: u16, identity: u32, cluster: &str, pod: Option<&str>) -> Peer {
        Peer {
            ip: Ipv4Addr::from(ip),
            port,
            identity,
            cluster: Some(cluster.into()),
            namespace: pod.map(|_| "demo".into()),
            pod: pod.map(str::to_owned),
            labels: Default::default(),
        }
    }

    #[test]
    fn a_flow_line_says_who_what_and_why() {
        let flow = Flow {
            seq: 1,
            time_unix_nanos: 1_700_000_000_123_456_789,
            node: "b-n0".into(),
            verdict: Verdict::Denied,
            drop_reason: Some("policy_denied".into()),
            direction: Some("ingress".into()),
            protocol: "TCP".into(),
            source: peer([10, 1, 1, 5], 40000, 32778, "cluster-a", Some("client")),
            destination: peer([10, 2, 1, 7], 8080, 65547, "cluster-b", Some("server")),
            service: None,
            service_name: None,
            policies: vec!["demo/only-frontend".into()],
        };
        assert_eq!(
            flow_line(&flow),
            "2023-11-14T22:13:20.123456Z b-n0 TCP demo/client:40000 (cluster-a, identity 32778) -> \
             demo/server:8080 (cluster-b, identity 65547) DENIED (policy_denied) ingress policies: demo/only-frontend"
        );
        let translated = Flow {
            verdict: Verdict::Translated,
            drop_reason: None,
            direction: None,
            source: Peer {
                ip: Ipv4Addr::UNSPECIFIED,
                port: 0,
                identity: 0,
                cluster: None,
                namespace: None,
                pod: None,
                labels: Default::default(),
            },
            service: Some("10.96.0.10:80".into()),
            service_name: Some("demo/web".into()),
            policies: vec![],
            ..flow
        };
        assert!(
            flow_line(&translated).ends_with(
                "0.0.0.0 -> demo/server:8080 (cluster-b, identity 65547) TRANSLATED from service 10.96.0.10:80 (demo/web)"
            ),
            "{}",
            flow_line(&translated)
        );
    }

    #[test]
    fn the_services_table_counts_backends_per_cluster_and_shows_differences() {
        let backend = |ip: [u8; 4], cluster: &str, in_datapath: bool| Backend {
            ip: Ipv4Addr::from(ip),
            port: 8080,
            cluster: Some(cluster.into()),
            pod: Some(format!("demo/{cluster}")),
            in_datapath,
        };
        let table = ServiceTable {
            node: "a-n0".into(),
            services: vec![ServiceEntry {
                vip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: "TCP".into(),
                name: Some("demo/web".into()),
                affinity: Some("local".into()),
                backends: vec![
                    backend([10, 1, 1, 5], "cluster-a", true),
                    backend([10, 2, 1, 5], "cluster-b", true),
                    backend([10, 2, 1, 6], "cluster-b", false),
                ],
            }],
            differences: vec!["frontend 10.96.0.10:80/TCP: backend 10.2.1.6:8080 is in the kvstore's endpoints but not in the datapath".into()],
        };
        let text = services(&[table]);
        assert!(
            text.contains(
                "10.96.0.10:80/TCP        demo/web                 local     2 (cluster-a=1, cluster-b=1)"
            ),
            "{text}"
        );
        assert!(
            text.contains("10.2.1.6:8080 cluster-b demo/cluster-b  (NOT in the datapath)"),
            "{text}"
        );
        assert!(text.contains("a-n0: DIFFERS: frontend"), "{text}");
    }
}
