//! Upgrades and version skew for real: the previous release's binaries
//! (built from a pinned commit, [`knit_e2e::previous`]) and the ones under
//! test in one mesh, under steady cross-cluster traffic.
//!
//! Both clusters start on the previous release, each with two mesh
//! apiserver replicas. cluster-a is upgraded the way a rollout does it:
//! the mesh apiserver replicas one by one (each a new pod: an empty
//! in-memory etcd, the new apiserver; the next goes only once the new one
//! has caught up, and the peer's replicas mirror it again), then the agent
//! DaemonSet node by node (the new install-cni's knit-cni, the new agent;
//! pinned programs keep forwarding meanwhile). That leaves a new cluster beside
//! an old one; cluster-b follows, and then cluster-a is rolled back, which
//! leaves an old cluster beside a new one. At each mixed step, freshly
//! created pods of both clusters must reach each other, and the global
//! service must be answered by both clusters from both. Steady clients
//! (pod to pod both ways, and each cluster's VIP) must fail 0 requests
//! from start to end.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use knit_e2e::mesh::{Binaries, ClusterId, GlobalService, LocalMesh, MeshOptions, PodId, SERVER_PORT};
use knit_e2e::previous::{PREVIOUS, previous_binaries};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

/// Mesh apiserver replicas per cluster.
const REPLICAS: usize = 2;

/// Waits until every replica of both clusters mirrors its peer with at
/// least `endpoints` endpoints: an empty etcd has been filled again, and
/// the peer's replicas read the new one.
fn wait_synced(mesh: &LocalMesh, endpoints: usize) {
    for c in [A, B] {
        for r in 0..REPLICAS {
            mesh.wait_replica_synced(c, r, endpoints);
        }
    }
}

/// Moves cluster `c` to `bins` as a rollout does: the mesh apiserver
/// replicas one by one (each a new pod, empty etcd; the next once every
/// replica is synced), then each node's agent. Returns how long it took.
fn roll(mesh: &mut LocalMesh, c: ClusterId, bins: &Binaries, endpoints: usize) -> Duration {
    let started = Instant::now();
    mesh.set_cluster_binaries(c, bins.clone());
    for r in 0..REPLICAS {
        mesh.replace_replica(c, r);
        let t = Instant::now();
        wait_synced(mesh, endpoints);
        eprintln!(
            "{} replica {r} replaced, every replica synced {:.1} s later",
            c.name(),
            t.elapsed().as_secs_f64()
        );
        assert_runs(
            mesh.cluster(c).control.replica_apiserver_pid(r),
            &bins.apiserver,
            "an apiserver replica",
        );
    }
    for i in 0..mesh.options().nodes {
        mesh.replace_agent(c.node(i));
        assert_runs(mesh.agent_pid(c.node(i)), &bins.agent, "an agent");
        std::thread::sleep(Duration::from_secs(1));
    }
    started.elapsed()
}

/// The process `pid` runs the executable `bin` (the build rolled to).
fn assert_runs(pid: Option<u32>, bin: &std::path::Path, what: &str) {
    let pid = pid.unwrap_or_else(|| panic!("{what} is not running"));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the process's executable");
    assert_eq!(exe, bin.canonicalize().unwrap(), "{what} runs another build");
}

/// New pods in both clusters reach each other, and `vip` is answered by
/// both clusters from both clients: the mixed versions export, mirror and
/// program what is new. Returns the pods made.
fn fresh_pods_connect(
    mesh: &mut LocalMesh,
    step: &str,
    clients: [PodId; 2],
    vip: std::net::Ipv4Addr,
) -> [PodId; 2] {
    let new_a = mesh.add_pod(A.node(0), "shop", &format!("fresh-a-{step}"), &[("app", "fresh")]);
    let new_b = mesh.add_pod(B.node(1), "shop", &format!("fresh-b-{step}"), &[("app", "fresh")]);
    for (client, to) in [(clients[0], new_b), (clients[1], new_a)] {
        let ip = mesh.pod(to).ip;
        mesh.wait_for_hits(
            &format!("{step}: a fresh pod across clusters"),
            client,
            ip,
            false,
            |h| h.total() == 40,
        );
    }
    for client in clients {
        mesh.wait_for_hits(
            &format!("{step}: the VIP from both clusters"),
            client,
            vip,
            false,
            |h| h.names.len() == 2 && h.total() == 40,
        );
    }
    [new_a, new_b]
}

#[test]
fn a_rolling_upgrade_and_a_rollback_between_releases_fail_no_request() {
    let old = previous_binaries();
    let new = Binaries::locate();
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 2,
        binaries: vec![(A, old.clone()), (B, old.clone())],
        apiserver_replicas: REPLICAS,
        ..MeshOptions::default()
    });
    for n in mesh.node_ids() {
        assert_runs(mesh.agent_pid(n), &old.agent, "an agent of the previous release");
    }
    let client_a = mesh.add_pod(A.node(1), "shop", "client-a", &[("app", "client")]);
    let client_b = mesh.add_pod(B.node(1), "shop", "client-b", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(0), "shop", "web-a", &[("app", "web")]);
    let web_b = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    let vip = std::net::Ipv4Addr::new(10, 96, 9, 1);
    for (c, backend) in [(A, web_a), (B, web_b)] {
        mesh.deploy_service(c, &GlobalService::web(vip, vec![backend]));
    }
    wait_synced(&mesh, 2);
    for client in [client_a, client_b] {
        mesh.wait_for_hits("the VIP to reach both clusters", client, vip, false, |h| {
            h.names.len() == 2
        });
    }

    let stop = knit_e2e::TempDir::new("upgrade");
    let stop = stop.path().join("stop");
    let addr = |p: PodId| SocketAddrV4::new(mesh.pod(p).ip, SERVER_PORT);
    let mut steady = vec![
        mesh.start_steady_client(client_a, addr(web_b), &stop, "a to b pod"),
        mesh.start_steady_client(client_b, addr(web_a), &stop, "b to a pod"),
        mesh.start_steady_client(client_a, SocketAddrV4::new(vip, SERVER_PORT), &stop, "a to VIP"),
        mesh.start_steady_client(client_b, SocketAddrV4::new(vip, SERVER_PORT), &stop, "b to VIP"),
    ];
    std::thread::sleep(Duration::from_secs(2));

    let mut steps = Vec::new();
    let mut endpoints = 2;
    for (step, c, bins, check) in [
        ("upgrade cluster-a", A, &new, Some("new-a-old-b")),
        ("upgrade cluster-b", B, &new, None),
        ("roll cluster-a back", A, &old, Some("old-a-new-b")),
    ] {
        let took = roll(&mut mesh, c, bins, endpoints);
        eprintln!("{step}: {took:?}");
        steps.push((step, took));
        if let Some(check) = check {
            fresh_pods_connect(&mut mesh, check, [client_a, client_b], vip);
            endpoints += 1;
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, "").unwrap();
    knit_e2e::mesh::assert_no_failures(
        &mesh,
        &mut steady,
        300,
        &format!("while rolling between {PREVIOUS:.12} and this build: {steps:?}"),
    );
}
