//! Fail static for real: a control plane that restarts with an **empty**
//! etcd (the mesh apiserver's etcd lives in memory in Kubernetes) makes no
//! request fail anywhere, with realistic state in both clusters.
//!
//! Readers (agents, and the peer's KVStoreMesh) keep every key the empty
//! etcd lacks until the writer's canary for its kind is back
//! (`knit_kvstore::drain`); the KVStoreMesh deletes leftovers only after
//! listing its peer completely. Traffic: steady TCP clients across clusters
//! to pod IPs, both ways, and through a global service VIP, while first
//! cluster-b's and then cluster-a's control plane restart empty.
//!
//! And the apiserver alone down for longer than its lease, its etcd alive:
//! etcd deletes every key the apiserver wrote (its export and its mirror)
//! in one revision, canaries included, and readers hold them until the
//! canaries are back.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use knit_e2e::manifests::{node, pod};
use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions, PodId, SERVER_PORT};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);
/// Simulated nodes per cluster, each with a full /24 of pods.
const BULK_NODES: usize = 80;
const PODS_PER_NODE: usize = 250;

/// 20,000 pods on 80 simulated nodes of cluster `c` (10 label sets).
/// Nothing is ever sent to them; their nodes' addresses are unused ones on
/// the underlay.
fn bulk(c: ClusterId) -> String {
    let id = c.mesh_id();
    let mut out = String::new();
    for n in 0..BULK_NODES {
        let name = format!("bulk-{n}");
        out.push_str(&node(
            &name,
            &format!("192.168.50.{}", 100 + n),
            &format!("10.{id}.{}.0/24", 100 + n),
        ));
        for p in 0..PODS_PER_NODE {
            let ip = format!("10.{id}.{}.{}", 100 + n, p + 2);
            out.push_str(&pod(
                "bulk",
                &format!("p-{n}-{p}"),
                &name,
                &ip,
                &format!("bulk-{}", p % 10),
            ));
        }
    }
    out
}

#[test]
fn empty_etcd_restarts_fail_no_request() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 1,
        grace_period: "4s".into(),
        ..MeshOptions::default()
    });
    // The pods first: knit-cni's ADD waits for the agent, which in a debug
    // build takes longer than ADD's 30 s to take in 40,000 endpoints.
    let client_a = mesh.add_pod(A.node(0), "shop", "client-a", &[("app", "client")]);
    let client_b = mesh.add_pod(B.node(0), "shop", "client-b", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(0), "shop", "web-a", &[("app", "web")]);
    let web_b = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    for c in [A, B] {
        mesh.write_manifest(c, "bulk.yaml", &bulk(c));
    }
    let vip = std::net::Ipv4Addr::new(10, 96, 7, 1);
    for (c, backend) in [(A, web_a), (B, web_b)] {
        mesh.deploy_service(c, &GlobalService::web(vip, vec![backend]));
    }
    let total = BULK_NODES * PODS_PER_NODE;
    for c in [A, B] {
        mesh.wait_peer_synced(c, total);
    }
    mesh.wait_for_hits("the VIP to reach both clusters", client_a, vip, false, |h| {
        h.names.len() == 2
    });

    let stop = knit_e2e::TempDir::new("fail-static");
    let stop = stop.path().join("stop");
    let addr = |p: PodId| SocketAddrV4::new(mesh.pod(p).ip, SERVER_PORT);
    let mut clients = vec![
        mesh.start_steady_client(client_a, addr(web_b), &stop, "a to b pod"),
        mesh.start_steady_client(client_b, addr(web_a), &stop, "b to a pod"),
        mesh.start_steady_client(client_a, SocketAddrV4::new(vip, SERVER_PORT), &stop, "a to VIP"),
    ];
    std::thread::sleep(Duration::from_secs(2));

    let mut took = Vec::new();
    for c in [B, A] {
        let (started, at) = (Instant::now(), knit_testkit::unix_seconds());
        mesh.restart_control_plane_empty(c);
        for other in [A, B] {
            mesh.wait_peer_synced(other, total);
        }
        took.push((c.name(), at, started.elapsed()));
        std::thread::sleep(Duration::from_secs(2));
    }
    std::fs::write(&stop, "").unwrap();

    knit_e2e::mesh::assert_no_failures(
        &mesh,
        &mut clients,
        200,
        &format!("during empty restarts (cluster, started at, took): {took:?}"),
    );
}

#[test]
fn an_apiserver_down_longer_than_its_lease_fails_no_request() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 1,
        grace_period: "4s".into(),
        lease_ttl_secs: 3,
        ..MeshOptions::default()
    });
    let client_a = mesh.add_pod(A.node(0), "shop", "client-a", &[("app", "client")]);
    let client_b = mesh.add_pod(B.node(0), "shop", "client-b", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(0), "shop", "web-a", &[("app", "web")]);
    let web_b = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    let vip = std::net::Ipv4Addr::new(10, 96, 7, 2);
    for (c, backend) in [(A, web_a), (B, web_b)] {
        mesh.deploy_service(c, &GlobalService::web(vip, vec![backend]));
    }
    for c in [A, B] {
        mesh.wait_peer_synced(c, 2);
    }
    mesh.wait_for_hits("b's VIP to reach both clusters", client_b, vip, false, |h| {
        h.names.len() == 2
    });

    let stop = knit_e2e::TempDir::new("lease-expiry");
    let stop = stop.path().join("stop");
    let addr = |p: PodId| SocketAddrV4::new(mesh.pod(p).ip, SERVER_PORT);
    let mut clients = vec![
        mesh.start_steady_client(client_b, addr(web_a), &stop, "b to a pod"),
        mesh.start_steady_client(client_a, addr(web_b), &stop, "a to b pod"),
        mesh.start_steady_client(client_b, SocketAddrV4::new(vip, SERVER_PORT), &stop, "b to VIP"),
    ];
    std::thread::sleep(Duration::from_secs(2));

    // cluster-b's apiserver goes; its etcd stays. Its mesh reports, under
    // a lease of their own with the same TTL, vanish with the rest.
    mesh.stop_apiserver(B);
    mesh.wait_until("cluster-b's leases to expire", Duration::from_secs(30), || {
        mesh.status_report(B).is_some_and(|r| r.peers.is_empty())
    });
    std::thread::sleep(Duration::from_secs(3));
    mesh.restart_apiserver_with(B, &[]);
    for c in [A, B] {
        mesh.wait_peer_synced(c, 2);
    }
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, "").unwrap();

    knit_e2e::mesh::assert_no_failures(
        &mesh,
        &mut clients,
        100,
        "while the apiserver was down past its lease",
    );
}

/// The identity numbers cluster-b's agent holds for cluster-a's pods, by
/// the pods' `app` label.
fn identities_of_a(mesh: &LocalMesh) -> std::collections::BTreeMap<String, u32> {
    let out = mesh.knitctl_agent(B.node(0), &["identities", "-o", "json"]);
    let tables: Vec<knit_agent_api::IdentityTable> = serde_json::from_str(&out).unwrap();
    tables[0]
        .identities
        .iter()
        .filter(|i| i.cluster.as_deref() == Some("cluster-a"))
        .filter_map(|i| Some((i.labels.get("app")?.clone(), i.identity)))
        .collect()
}

/// A pod keeps its security identity when its control plane restarts
/// empty: peers' ipcaches and policy maps, keyed by the number, see no
/// change. Pods made in the reverse of their names' order would otherwise
/// be numbered again in name order.
#[test]
fn identities_survive_an_empty_restart() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 1,
        ..MeshOptions::default()
    });
    for (name, app) in [("zz", "zeta"), ("mm", "mu"), ("aa", "alpha")] {
        mesh.add_pod(A.node(0), "shop", name, &[("app", app)]);
        mesh.wait_until(
            &format!("{app} to reach cluster-b"),
            Duration::from_secs(30),
            || identities_of_a(&mesh).contains_key(app),
        );
    }
    let before = identities_of_a(&mesh);
    mesh.restart_control_plane_empty(A);
    mesh.wait_peer_synced(B, 3);
    mesh.wait_until(
        "cluster-b to hold a's identities again",
        Duration::from_secs(30),
        || identities_of_a(&mesh).len() == before.len(),
    );
    assert_eq!(
        identities_of_a(&mesh),
        before,
        "identities renumbered by an empty restart"
    );
}
