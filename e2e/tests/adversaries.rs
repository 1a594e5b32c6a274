//! Adversaries on the local mesh, with real packets: what a pod, a host on
//! the underlay or another node may try, and what the datapath makes of
//! it. (Peers that lie and flood are in `apiserver/tests/security.rs` and
//! `e2e/tests/kvstore.rs`; crafted packets in `agent/tests/bpf_*.rs`.)
//!
//! - Forged mesh packets on the tunnel port: a host on the underlay and a
//!   pod of the node itself send VXLAN datagrams to a node's tunnel port
//!   carrying a packet "from" a pod that the target's NetworkPolicy
//!   admits. None reaches the target; each is counted as
//!   `forged_tunnel_source`.
//! - A pod that takes another pod's address on its own interface and sends
//!   from it, to be admitted as that pod. Nothing reaches the target; each
//!   is counted as `unknown_source`.
//!
//! - A pod whose labels the agent does not know yet (its endpoint not yet
//!   exported) in a namespace with a policy: it gets and sends nothing
//!   until they arrive, then what its policy allows.
//!
//! The admitted pod's own packets still pass (the control). Runs as root.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use knit_agent::netdev::VXLAN_PORT;
use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions, PodId};

const A: ClusterId = ClusterId(0);
/// The port the target counts datagrams on.
const SINK_PORT: u16 = 7070;
const FORGED: usize = 20;

fn sink(mesh: &LocalMesh, pod: PodId, seconds: &str) -> knit_testkit::ChildProcess {
    mesh.probe_background(
        pod,
        &["count", "--port", &SINK_PORT.to_string(), "--seconds", seconds],
        "sink",
    )
}

fn counted(mut sink: knit_testkit::ChildProcess) -> u64 {
    let (ok, out) = sink.wait();
    assert!(ok, "the sink failed: {out}");
    let line = out.lines().find(|l| l.starts_with('{')).expect("count line");
    serde_json::from_str::<serde_json::Value>(line).unwrap()["count"]
        .as_u64()
        .unwrap()
}

#[test]
fn forged_tunnel_packets_reach_no_pod() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 1,
        nodes: 2,
        ..MeshOptions::default()
    });
    let db = mesh.add_pod(A.node(0), "shop", "db", &[("app", "db")]);
    let local = mesh.add_pod(A.node(0), "shop", "local", &[("app", "local")]);
    let api = mesh.add_pod(A.node(1), "shop", "api", &[("app", "api")]);
    let db_name = format!("{}/db", A.name());
    mesh.write_manifest(
        A,
        "policy-db.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: db\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels: {app: db}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: api}\n",
    );
    mesh.wait_for_hits("api -> db", api, mesh.pod(db).ip, false, |h| {
        h.names.get(&db_name) == Some(&40)
    });
    mesh.wait_until("the policy to hold local -> db", Duration::from_secs(30), || {
        mesh.hits(local, mesh.pod(db).ip, 1, false).total() == 0
    });

    // The control: api's own datagrams reach the sink.
    let db_sink = SocketAddrV4::new(mesh.pod(db).ip, SINK_PORT);
    let control = sink(&mesh, db, "3");
    std::thread::sleep(Duration::from_millis(500));
    mesh.hits_to(api, db_sink, 2, true);
    assert_eq!(counted(control), 2, "api's datagrams reach db");

    // A host on the underlay and a pod of db's node send VXLAN datagrams
    // to db's node, "from" api (whose identity db admits), with api's
    // identity as VNI too.
    let node0_ip: Ipv4Addr = mesh.node(A.node(0)).ip.parse().unwrap();
    let tunnel = SocketAddrV4::new(node0_ip, VXLAN_PORT).to_string();
    let inner_src = SocketAddrV4::new(mesh.pod(api).ip, 5555).to_string();
    let vni = "65537";
    let args = [
        "vxlan-send",
        "--to",
        &tunnel,
        "--vni",
        vni,
        "--inner-src",
        &inner_src,
        "--inner-dst",
        &db_sink.to_string(),
        "--count",
        &FORGED.to_string(),
    ];
    let forged = sink(&mesh, db, "4");
    std::thread::sleep(Duration::from_millis(500));
    let (attacker, _attacker_server) = mesh.add_outside_host("evil", "192.168.50.251");
    let sent = attacker.exec(&mesh.bins.probe.to_string_lossy(), &args);
    assert!(
        String::from_utf8_lossy(&sent.stdout).contains(&format!("\"sent\":{FORGED}")),
        "{sent:?}"
    );
    let sent = mesh.probe(local, &args);
    assert!(sent.contains(&format!("\"sent\":{FORGED}")), "{sent}");
    assert_eq!(counted(forged), 0, "forged packets reached db");
    let drops = "knit_agent_drops{name=\"forged_tunnel_source\"}";
    mesh.wait_until(
        "the node to count every forged packet",
        Duration::from_secs(10),
        || mesh.agent_metric(A.node(0), drops) == 2 * FORGED as i64,
    );
}

#[test]
fn a_pod_borrowing_another_pods_address_reaches_nothing() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 1,
        nodes: 1,
        ..MeshOptions::default()
    });
    let db = mesh.add_pod(A.node(0), "shop", "db", &[("app", "db")]);
    let api = mesh.add_pod(A.node(0), "shop", "api", &[("app", "api")]);
    let evil = mesh.add_pod(A.node(0), "shop", "evil", &[("app", "evil")]);
    mesh.write_manifest(
        A,
        "policy-db.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: db\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels: {app: db}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: api}\n",
    );
    mesh.wait_attached(A.node(0), 3);
    mesh.wait_until("the policy to hold evil -> db", Duration::from_secs(30), || {
        mesh.hits(evil, mesh.pod(db).ip, 1, false).total() == 0
    });
    let db_sink = SocketAddrV4::new(mesh.pod(db).ip, SINK_PORT).to_string();
    let api_ip = mesh.pod(api).ip.to_string();
    let send = |from: PodId, n: usize| {
        let out = mesh.probe(
            from,
            &[
                "udp-send",
                "--from",
                &api_ip,
                "--to",
                &db_sink,
                "--count",
                &n.to_string(),
            ],
        );
        assert!(out.contains(&format!("\"sent\":{n}")), "{out}");
    };

    // The control: api's own datagrams reach the sink.
    let control = sink(&mesh, db, "3");
    std::thread::sleep(Duration::from_millis(500));
    send(api, 2);
    assert_eq!(counted(control), 2, "api's datagrams reach db");

    // evil takes api's address and sends from it.
    let unknown = "knit_agent_drops{name=\"unknown_source\"}";
    let before = mesh.agent_metric(A.node(0), unknown);
    let taken = mesh
        .pod(evil)
        .netns
        .ip(&["addr", "add", &format!("{api_ip}/32"), "dev", "eth0"]);
    assert!(taken.status.success(), "{taken:?}");
    let spoofed = sink(&mesh, db, "3");
    std::thread::sleep(Duration::from_millis(500));
    send(evil, FORGED);
    assert_eq!(
        counted(spoofed),
        0,
        "datagrams from a borrowed address reached db"
    );
    mesh.wait_until(
        "the node to count every borrowed-address datagram",
        Duration::from_secs(10),
        || mesh.agent_metric(A.node(0), unknown) - before >= FORGED as i64,
    );
}

#[test]
fn a_pod_whose_labels_are_not_known_yet_gets_nothing() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 1,
        nodes: 1,
        ..MeshOptions::default()
    });
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let other = mesh.add_pod(A.node(0), "shop", "other", &[("app", "other")]);
    // A namespace without policies, to see what the new pod sends.
    let open = mesh.add_pod(A.node(0), "open", "open", &[("app", "open")]);
    // shop admits only the client into its pods.
    mesh.write_manifest(
        A,
        "policy-shop.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: only-client\n  namespace: shop\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: client}\n",
    );
    mesh.wait_until(
        "the policy to hold other -> client",
        Duration::from_secs(30),
        || mesh.hits(other, mesh.pod(client).ip, 1, false).total() == 0,
    );

    // A pod the runtime made but kubelet has not reported yet: attached
    // (ADD returned), its labels unknown.
    let late = mesh.create_sandbox(A.node(0), "shop", "late").expect("ADD");
    let late_ip = mesh.pod(late).ip;
    let _server = mesh.serve_in(
        mesh.pod(late).netns.name(),
        "cluster-a/late",
        knit_e2e::mesh::SERVER_PORT,
    );
    std::thread::sleep(Duration::from_secs(1));
    let before = mesh.hits(client, late_ip, 3, false);
    assert_eq!(
        before.total(),
        0,
        "the admitted client reached a pod whose policy is not in: {before:?}"
    );
    let to_open = SocketAddrV4::new(mesh.pod(open).ip, knit_e2e::mesh::SERVER_PORT);
    let out = mesh.hits_from(mesh.pod(late).netns.name(), to_open, 3);
    assert_eq!(out.total(), 0, "a pod whose policy is not in sent: {out:?}");
    assert_eq!(
        mesh.agent_metric(A.node(0), "knit_agent_endpoints_awaiting_identity "),
        1
    );

    // Its labels arrive: the policy applies as written.
    mesh.register_pod(A.node(0), "shop", "late", late_ip, &[("app", "late")]);
    mesh.wait_for_hits(
        "client -> late once its labels are known",
        client,
        late_ip,
        false,
        |h| h.names.get("cluster-a/late") == Some(&40),
    );
    assert_eq!(
        mesh.hits(other, late_ip, 3, false).total(),
        0,
        "other is still held out"
    );
    let out = mesh.hits_from(mesh.pod(late).netns.name(), to_open, 20);
    assert_eq!(out.total(), 20, "no egress policy selects late: {out:?}");
    assert_eq!(
        mesh.agent_metric(A.node(0), "knit_agent_endpoints_awaiting_identity "),
        0
    );
}
