//! The operator's toolbox on the local mesh: `knitctl observe` shows the
//! datapath's flow events with both ends named, and `knitctl services`,
//! `identities`, `ipcache` and `endpoints` show what a node's datapath
//! holds, compared with the kvstore. Every check reads the commands' JSON.
//!
//! - A request cluster-b's policy refuses shows up in
//!   `observe --verdict denied` on the server's node with the client's
//!   identity, labels, cluster and pod, and the policy that selects the
//!   server; once a policy admits the client, `--verdict allowed` shows the
//!   admission. A connect to a global service's VIP shows as a
//!   translation to a backend, a connect to a service without backends as
//!   a `no_backend` drop; the metric counts denials per peer cluster;
//!   `knitctl policy` shows the server's allow entry for the client's
//!   identity and the policy that produced it.
//! - `services` lists a global service's backends per cluster; after
//!   cluster-b withdraws its backend, it shows cluster-a's alone, the
//!   datapath agrees (every request answered by cluster-a), and a backend
//!   removed from the pinned map behind the agent's back is reported as a
//!   difference.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use knit_agent_api::{EndpointTable, Flow, IdentityTable, IpcacheTable, PolicyTable, ServiceTable, Verdict};
use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions, NodeId};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

/// cluster-b's web pods take requests from `app=other` only.
const DENY_CLIENT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-from-other\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: other}\n";

/// ...and from cluster-a's clients.
const ALLOW_CLIENT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-from-a-clients\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: client, knit.dev/cluster: cluster-a}\n";

/// `knitctl observe <args> -o json` on node `n`: every flow it printed.
fn observe(mesh: &LocalMesh, n: NodeId, args: &[&str]) -> Vec<Flow> {
    let mut all = vec!["observe", "-o", "json", "--last", "100000"];
    all.extend_from_slice(args);
    mesh.knitctl_agent(n, &all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The first flow `knitctl observe <args>` on node `n` prints that
/// `wanted` accepts, waiting for it: the agent drains the datapath's ring
/// every 100 ms, so an event is served a moment after the packet.
fn observed(mesh: &LocalMesh, n: NodeId, args: &[&str], what: &str, wanted: impl Fn(&Flow) -> bool) -> Flow {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let flows = observe(mesh, n, args);
        if let Some(f) = flows.iter().find(|f| wanted(f)) {
            return f.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no {what} among {flows:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn table<T: serde::de::DeserializeOwned>(mesh: &LocalMesh, n: NodeId, command: &[&str]) -> T {
    let mut args = command.to_vec();
    args.extend(["-o", "json"]);
    let text = mesh.knitctl_agent(n, &args);
    let mut tables: Vec<T> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(tables.len(), 1, "one node asked");
    tables.remove(0)
}

#[test]
fn observe_names_denied_allowed_and_translated_flows_across_clusters() {
    let mut mesh = LocalMesh::start(MeshOptions::default());
    let (client, _near, far) = mesh.client_near_far();
    let client_ip = mesh.pod(client).ip;
    let far_ip = mesh.pod(far).ip;
    let server_node = B.node(0);

    mesh.write_manifest(B, "policy-deny.yaml", DENY_CLIENT);
    mesh.wait_until(
        "cluster-b's policy to refuse the client",
        Duration::from_secs(30),
        || mesh.hits(client, far_ip, 1, false).total() == 0,
    );
    let args = ["--verdict", "denied", "--pod", "shop/client"];
    let f = observed(&mesh, server_node, &args, "denied flow client -> far", |f| {
        f.source.ip == client_ip && f.destination.ip == far_ip
    });
    assert_eq!(f.node, mesh.node(server_node).name);
    assert_eq!(
        (f.verdict, f.drop_reason.as_deref()),
        (Verdict::Denied, Some("policy_denied"))
    );
    assert_eq!(
        (f.direction.as_deref(), f.protocol.as_str()),
        (Some("ingress"), "TCP")
    );
    assert_eq!(f.source.cluster.as_deref(), Some("cluster-a"));
    assert_eq!(
        (f.source.namespace.as_deref(), f.source.pod.as_deref()),
        (Some("shop"), Some("client"))
    );
    assert_ne!(f.source.identity, 0);
    assert_eq!(f.source.labels.get("app").map(String::as_str), Some("client"));
    assert_eq!(
        f.source.labels.get("knit.dev/cluster").map(String::as_str),
        Some("cluster-a")
    );
    assert_eq!(f.destination.cluster.as_deref(), Some("cluster-b"));
    assert_eq!(f.destination.pod.as_deref(), Some("far"));
    assert_eq!(f.destination.port, 8080);
    assert_eq!(f.policies, vec!["shop/web-from-other"]);
    assert!(
        observe(&mesh, server_node, &args)
            .iter()
            .all(|f| f.verdict == Verdict::Denied),
        "the filter holds"
    );
    let counted = mesh.agent_metric(
        server_node,
        "knit_agent_flow_events_total{verdict=\"denied\",reason=\"policy_denied\",cluster=\"cluster-a\"}",
    );
    assert!(counted >= 1, "denials from cluster-a counted: {counted}");
    // The human form names the same.
    let line = mesh.knitctl_agent(server_node, &["observe", "--verdict", "denied", "--last", "1"]);
    assert!(
        line.contains("shop/client")
            && line.contains("DENIED (policy_denied)")
            && line.contains("shop/web-from-other"),
        "{line}"
    );

    mesh.write_manifest(B, "policy-allow.yaml", ALLOW_CLIENT);
    mesh.wait_until(
        "cluster-b's policy to admit the client",
        Duration::from_secs(30),
        || mesh.hits(client, far_ip, 1, false).total() == 1,
    );
    let args = ["--verdict", "allowed", "--cluster", "cluster-a"];
    let f = observed(&mesh, server_node, &args, "allowed flow client -> far", |f| {
        f.source.ip == client_ip && f.destination.ip == far_ip
    });
    assert_eq!(
        (f.drop_reason.as_deref(), f.direction.as_deref()),
        (None, Some("ingress"))
    );
    assert_eq!(f.policies, vec!["shop/web-from-a-clients", "shop/web-from-other"]);

    // What applies to the server, and which policy produced it.
    let t: PolicyTable = table(&mesh, server_node, &["policy", "shop/far"]);
    assert_eq!(
        (t.ip, t.ingress_enforced, t.egress_enforced),
        (Some(far_ip), true, false)
    );
    let from_client = t
        .entries
        .iter()
        .find(|e| e.peer == format!("identity {}", f.source.identity))
        .unwrap_or_else(|| panic!("no entry for the client's identity in {t:#?}"));
    assert_eq!(
        (
            from_client.direction.as_str(),
            from_client.verdict.as_str(),
            from_client.in_datapath
        ),
        ("ingress", "allow", true)
    );
    assert_eq!(from_client.policies, vec!["shop/web-from-a-clients"]);
    assert_eq!(from_client.peer_cluster.as_deref(), Some("cluster-a"));
    assert_eq!(t.differences, Vec::<String>::new());

    // A global service: the client's connect is translated on its node.
    let vip = Ipv4Addr::new(10, 96, 1, 10);
    mesh.deploy_service(A, &GlobalService::web(vip, vec![]));
    mesh.deploy_service(B, &GlobalService::web(Ipv4Addr::new(10, 96, 2, 10), vec![far]));
    mesh.wait_for_hits("the far backend through the VIP", client, vip, false, |h| {
        h.total() > 0
    });
    let args = ["--verdict", "translated", "--port", "8080"];
    let f = observed(&mesh, A.node(0), &args, "translation to far", |f| {
        f.destination.ip == far_ip
    });
    assert_eq!(f.service.as_deref(), Some("10.96.1.10:8080"));
    assert_eq!(f.service_name.as_deref(), Some("shop/web"));
    assert_eq!(
        (f.destination.cluster.as_deref(), f.destination.pod.as_deref()),
        (Some("cluster-b"), Some("far"))
    );

    // A service with no backend anywhere: the connect is refused and seen.
    let empty_vip = Ipv4Addr::new(10, 96, 1, 20);
    let mut empty = GlobalService::web(empty_vip, vec![]);
    empty.name = "empty";
    mesh.deploy_service(A, &empty);
    mesh.wait_until(
        "the empty service's drop to be observed",
        Duration::from_secs(30),
        || {
            let _ = mesh.hits(client, empty_vip, 1, false);
            observe(&mesh, A.node(0), &["--drop-reason", "no_backend"])
                .iter()
                .any(|f| {
                    f.service.as_deref() == Some("10.96.1.20:8080")
                        && f.service_name.as_deref() == Some("shop/empty")
                })
        },
    );
}

/// The frontend of `vip` on port 8080/TCP in `t`.
fn frontend(t: &ServiceTable, vip: Ipv4Addr) -> Option<&knit_agent_api::ServiceEntry> {
    t.services
        .iter()
        .find(|s| s.vip == vip && s.port == 8080 && s.protocol == "TCP")
}

/// Removes the pinned `knit_backends` entries of `backend` on node `n`,
/// behind the agent's back (bpftool, on the pin the agent made).
fn remove_backend_behind_the_agent(mesh: &LocalMesh, n: NodeId, backend: Ipv4Addr) -> usize {
    let pin = mesh.agent_pin_dir(n).join("maps/knit_backends");
    let dump = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .expect("bpftool");
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&dump.stdout).expect("bpftool JSON");
    let mut removed = 0;
    for e in entries {
        let hex = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().trim_start_matches("0x").to_owned())
                .collect()
        };
        let value = hex(&e["value"]);
        let addr: Vec<u8> = value[..4]
            .iter()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        if addr == backend.octets() {
            let status = Command::new("bpftool")
                .args(["map", "delete", "pinned"])
                .arg(&pin)
                .arg("key")
                .arg("hex")
                .args(hex(&e["key"]))
                .status()
                .expect("bpftool");
            assert!(status.success());
            removed += 1;
        }
    }
    removed
}

#[test]
fn inspection_commands_show_what_the_datapath_holds_and_where_it_differs() {
    let mut mesh = LocalMesh::start(MeshOptions::default());
    let (client, near, far) = mesh.client_near_far();
    let node = A.node(0);
    let vip = Ipv4Addr::new(10, 96, 1, 10);
    mesh.deploy_service(A, &GlobalService::web(vip, vec![near]));
    mesh.deploy_service(B, &GlobalService::web(Ipv4Addr::new(10, 96, 2, 10), vec![far]));
    mesh.wait_for_hits("backends of both clusters", client, vip, false, |h| {
        h.names.len() == 2
    });

    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(mesh.agent_socket(node))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "the agent's socket is not for everyone");
    let t: ServiceTable = table(&mesh, node, &["services"]);
    let s = frontend(&t, vip).unwrap_or_else(|| panic!("no frontend {vip} in {t:#?}"));
    assert_eq!(
        (s.name.as_deref(), s.affinity.as_deref()),
        (Some("shop/web"), Some("none"))
    );
    let per_cluster: Vec<(String, usize)> = s.backends_per_cluster().into_iter().collect();
    assert_eq!(
        per_cluster,
        vec![("cluster-a".to_owned(), 1), ("cluster-b".to_owned(), 1)]
    );
    assert_eq!(t.differences, Vec::<String>::new());

    // The other tables name the same pods.
    let endpoints: EndpointTable = table(&mesh, node, &["endpoints"]);
    let own = endpoints
        .endpoints
        .iter()
        .find(|e| e.ip == mesh.pod(client).ip)
        .unwrap_or_else(|| panic!("the client is not among {endpoints:#?}"));
    assert_eq!(own.pod.as_deref(), Some("shop/client"));
    assert!(!own.ingress_enforced && !own.egress_enforced);
    let ipcache: IpcacheTable = table(&mesh, node, &["ipcache"]);
    let far_entry = ipcache
        .entries
        .iter()
        .find(|e| e.prefix == format!("{}/32", mesh.pod(far).ip))
        .unwrap_or_else(|| panic!("far is not in {ipcache:#?}"));
    assert_eq!(far_entry.origin.as_deref(), Some("cluster-b shop/far"));
    assert_eq!(
        far_entry.tunnel_endpoint.map(|t| t.to_string()),
        Some(mesh.node(B.node(0)).ip.clone())
    );
    assert_eq!(ipcache.differences, Vec::<String>::new());
    let identities: IdentityTable = table(&mesh, node, &["identities"]);
    let far_identity = identities
        .identities
        .iter()
        .find(|i| i.identity == far_entry.identity)
        .unwrap_or_else(|| panic!("far's identity is not in {identities:#?}"));
    assert_eq!(far_identity.cluster.as_deref(), Some("cluster-b"));
    assert_eq!(far_identity.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(identities.differences, Vec::<String>::new());

    // cluster-b withdraws its backend: the table follows, and so does the
    // datapath.
    mesh.deploy_service(B, &GlobalService::web(Ipv4Addr::new(10, 96, 2, 10), vec![]));
    mesh.wait_until(
        "the far backend to leave the table",
        Duration::from_secs(30),
        || {
            let t: ServiceTable = table(&mesh, node, &["services"]);
            frontend(&t, vip).is_some_and(|s| {
                s.backends
                    .iter()
                    .all(|b| b.cluster.as_deref() == Some("cluster-a"))
            })
        },
    );
    let t: ServiceTable = table(&mesh, node, &["services"]);
    assert_eq!(t.differences, Vec::<String>::new());
    let hits = mesh.hits(client, vip, 20, false);
    assert_eq!(
        hits.from_cluster("cluster-a"),
        20,
        "the datapath agrees: {hits:?}"
    );

    // Behind the agent's back, the near backend leaves the pinned map.
    assert!(remove_backend_behind_the_agent(&mesh, node, mesh.pod(near).ip) >= 1);
    let t: ServiceTable = table(&mesh, node, &["services"]);
    let expected = format!(
        "frontend {vip}:8080/TCP: backend {}:8080 is in the kvstore's endpoints but not in the datapath",
        mesh.pod(near).ip
    );
    assert!(t.differences.contains(&expected), "{:#?}", t.differences);
    let s = frontend(&t, vip).unwrap();
    assert!(
        s.backends
            .iter()
            .any(|b| b.ip == mesh.pod(near).ip && !b.in_datapath)
    );
    let text = mesh.knitctl_agent(node, &["services"]);
    assert!(
        text.contains("DIFFERS") && text.contains("(NOT in the datapath)"),
        "{text}"
    );
}
