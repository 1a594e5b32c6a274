//! The ClusterMesh scenarios end to end on the local mesh (every component
//! for real: etcd with mTLS/RBAC, knit-apiserver with its KVStoreMesh,
//! knit-agent with the eBPF datapath, pods in network namespaces).
//! e2e/kind/scenarios.sh runs the same list on kind clusters. The export,
//! import and peer-failure scenario runs in every routing mode, and the
//! three-cluster mesh mixes them (native, tunnel, hybrid).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use knit_e2e::TestCluster;
use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions, PodId};
use knit_kvstore::records::RoutingMode::{self, Hybrid, Native, Tunnel};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

fn service(vip: Ipv4Addr, backends: Vec<PodId>, export: bool, import: bool) -> GlobalService<'static> {
    GlobalService {
        namespace: "shop",
        name: "web",
        vip,
        backends,
        export,
        import,
        affinity: "none",
        not_ready: Vec::new(),
        spec_extra: "",
    }
}

#[test]
fn export_import_and_peer_failure() {
    export_import_and_peer_failure_in(Tunnel);
}

#[test]
fn export_import_and_peer_failure_in_native_routing() {
    export_import_and_peer_failure_in(Native);
}

#[test]
fn export_import_and_peer_failure_in_hybrid_routing() {
    export_import_and_peer_failure_in(Hybrid);
}

fn export_import_and_peer_failure_in(routing: RoutingMode) {
    let mut mesh = LocalMesh::start(MeshOptions {
        routing_modes: vec![routing; 2],
        ..MeshOptions::default()
    });
    let (a, b) = (A.name(), B.name());
    let client_a = mesh.add_pod(A.node(0), "shop", "client-a", &[("app", "client")]);
    let client_b = mesh.add_pod(B.node(0), "shop", "client-b", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(1), "shop", "web-a1", &[("app", "web")]);
    let web_b1 = mesh.add_pod(B.node(0), "shop", "web-b1", &[("app", "web")]);
    let web_b2 = mesh.add_pod(B.node(1), "shop", "web-b2", &[("app", "web")]);
    let (vip_a, vip_b) = (Ipv4Addr::new(10, 96, 1, 10), Ipv4Addr::new(10, 96, 2, 10));

    // Cross-cluster pod-to-pod, both directions.
    mesh.wait_for_hits("a -> b pod", client_a, mesh.pod(web_b1).ip, false, |h| {
        h.total() == 40
    });
    mesh.wait_for_hits("b -> a pod", client_b, mesh.pod(web_a).ip, false, |h| {
        h.total() == 40
    });

    // Backends of both clusters are used.
    mesh.deploy_service(A, &service(vip_a, vec![web_a], true, true));
    mesh.deploy_service(B, &service(vip_b, vec![web_b1, web_b2], true, true));
    mesh.wait_for_hits("backends of both clusters", client_a, vip_a, false, |h| {
        h.names.len() == 3
    });

    // A cluster with export=false is not used by its peers, but by itself.
    mesh.deploy_service(B, &service(vip_b, vec![web_b1, web_b2], false, true));
    let h = mesh.wait_for_hits("b's export=false honoured", client_a, vip_a, false, |h| {
        h.from_cluster(&b) == 0 && h.total() == 40
    });
    assert_eq!(h.from_cluster(&a), 40, "{h:?}");
    let h = mesh.wait_for_hits("b still uses all backends", client_b, vip_b, false, |h| {
        h.names.len() == 3
    });
    assert!(h.from_cluster(&b) > 0 && h.from_cluster(&a) > 0, "{h:?}");

    // A cluster with import=false uses only its own backends.
    mesh.deploy_service(B, &service(vip_b, vec![web_b1, web_b2], true, true));
    mesh.deploy_service(A, &service(vip_a, vec![web_a], true, false));
    mesh.wait_for_hits("a's import=false honoured", client_a, vip_a, false, |h| {
        h.names.len() == 1 && h.from_cluster(&a) == 40
    });
    mesh.wait_for_hits("b imports a again", client_b, vip_b, false, |h| {
        h.names.len() == 3
    });
    mesh.deploy_service(A, &service(vip_a, vec![web_a], true, true));
    mesh.wait_for_hits("a imports again", client_a, vip_a, false, |h| h.names.len() == 3);

    // A shared service that lives only in b (a has the Service, no pods).
    let vip_db = Ipv4Addr::new(10, 96, 1, 20);
    let db = |vip, backends| GlobalService {
        name: "db",
        vip,
        backends,
        ..service(vip, vec![], true, true)
    };
    mesh.deploy_service(A, &db(vip_db, vec![]));
    mesh.deploy_service(B, &db(Ipv4Addr::new(10, 96, 2, 20), vec![web_b1]));
    mesh.wait_for_hits("a reaches b's shared db", client_a, vip_db, false, |h| {
        h.total() == 40
    });

    // Cluster b's control plane dies: b's agents fail static, and after the
    // grace period a's new connections go only to a.
    let killed = Instant::now();
    mesh.stop_control_plane(B);
    let during = mesh.hits(client_b, vip_b, 20, false);
    assert_eq!(
        during.total(),
        20,
        "b's datapath keeps working without its control plane: {during:?}"
    );
    let h = mesh.wait_for_hits("failover to cluster a", client_a, vip_a, false, |h| {
        h.from_cluster(&b) == 0 && h.total() == 40
    });
    eprintln!("failover after {:?} (grace period 4s): {h:?}", killed.elapsed());
    // b's pods still answer: a service nothing else serves keeps using them.
    let shared = mesh.hits(client_a, vip_db, 20, false);
    assert_eq!(
        shared.from_cluster(&b),
        20,
        "losing b's control plane took down a service only b serves: {shared:?}"
    );

    // While b is down, web-b2 is deleted there (its node's CNI DEL needs no
    // control plane); when b returns, its backends come back without web-b2.
    mesh.delete_pod(web_b2)
        .expect("CNI DEL while the control plane is down");
    mesh.deploy_service(B, &service(vip_b, vec![web_b1], true, true));
    mesh.start_control_plane(B);
    let h = mesh.wait_for_hits(
        "b's backends back, deletion honoured",
        client_a,
        vip_a,
        false,
        |h| h.names.contains_key("cluster-b/web-b1") && h.errors.is_empty(),
    );
    let many = mesh.hits(client_a, vip_a, 100, false);
    assert!(
        !many.names.contains_key("cluster-b/web-b2"),
        "deleted during the outage: {many:?} {h:?}"
    );
    let pod_b2 = mesh.hits(client_a, mesh.pod(web_b2).ip, 2, false);
    assert_eq!(
        pod_b2.total(),
        0,
        "a route to the deleted pod survived: {pod_b2:?}"
    );
}

#[test]
fn security_of_the_mesh() {
    let mut mesh = LocalMesh::start(MeshOptions {
        nodes: 1,
        ..MeshOptions::default()
    });
    let client_a = mesh.add_pod(A.node(0), "shop", "client-a", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(0), "shop", "web-a", &[("app", "web")]);
    let (a_url, a_front) = (mesh.etcd_url(A), mesh.front_url(A));

    // A peer with an untrusted CA cannot connect, not even with CN=admin,
    // neither to the peer front nor to etcd.
    let rogue = TestCluster::new("cluster-x", 9);
    for url in [&a_front, &a_url] {
        let (ok, out) = mesh.etcdctl(
            B,
            &rogue.admin_config(),
            url,
            &["get", "knit/v1/", "--prefix", "--keys-only"],
        );
        assert!(
            !ok,
            "a certificate from an untrusted CA was accepted at {url}: {out}"
        );
    }

    // A peer reaches us only through the front, and cannot write there,
    // not even under its own name.
    let b_to_a = mesh.cluster(B).control.peer_config(&A.name());
    let (ok, _) = mesh.etcdctl(B, &b_to_a, &a_url, &["get", "knit/v1/clusters/cluster-a/config"]);
    assert!(!ok, "etcd itself must not trust a peer's CA");
    let a_url = a_front;
    let (ok, _) = mesh.etcdctl(B, &b_to_a, &a_url, &["get", "knit/v1/clusters/cluster-a/config"]);
    assert!(ok, "the peer certificate reads what it may");
    for key in [
        "knit/v1/clusters/cluster-a/endpoints/10.1.1.99",
        "knit/v1/clusters/cluster-b/x",
        "knit/v1/heartbeat",
    ] {
        let (ok, out) = mesh.etcdctl(B, &b_to_a, &a_url, &["put", key, "{}"]);
        assert!(
            !ok && out.contains("permission denied"),
            "peer wrote {key}: {out}"
        );
    }

    // A peer announcing an IP outside its pod CIDRs (here: one of a's pods)
    // is ignored and counted; a's traffic to that IP stays local.
    let hijack = format!(
        r#"{{"ip":"{}","cluster":"cluster-b","identity":{},"node":"cluster-b-node1","namespace":"shop","pod":"evil"}}"#,
        mesh.pod(web_a).ip,
        (2 << 15) | 7
    );
    let b_admin = mesh.cluster(B).control.admin_config();
    let key = format!("knit/v1/clusters/cluster-b/endpoints/{}", mesh.pod(web_a).ip);
    let (ok, out) = mesh.etcdctl(B, &b_admin, "https://127.0.0.1:2379", &["put", &key, &hijack]);
    assert!(ok, "{out}");
    mesh.wait_until("the rejection to be counted", Duration::from_secs(30), || {
        mesh.status_report(A).is_some_and(|r| {
            r.peers
                .iter()
                .any(|p| p.rejected.get("outside_pod_cidrs") == Some(&1))
        })
    });
    let h = mesh.hits(client_a, mesh.pod(web_a).ip, 20, false);
    assert_eq!(h.names.get("cluster-a/web-a"), Some(&20), "{h:?}");
    println!("{}", mesh.knitctl_status(A));
}

#[test]
fn three_clusters_fully_meshed() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 3,
        routing_modes: vec![Native, Tunnel, Hybrid],
        ..MeshOptions::default()
    });
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let mut vips = Vec::new();
    for c in mesh.cluster_ids() {
        let web = mesh.add_pod(c.node(1), "shop", &format!("web-{}", c.name()), &[("app", "web")]);
        let vip = Ipv4Addr::new(10, 96, c.mesh_id() as u8, 10);
        vips.push(vip);
        mesh.deploy_service(c, &service(vip, vec![web], true, true));
    }
    let h = mesh.wait_for_hits("backends of all three clusters", client, vips[0], false, |h| {
        h.names.len() == 3
    });
    for c in mesh.cluster_ids() {
        assert!(h.from_cluster(&c.name()) > 0, "{h:?}");
        let report = mesh.status_report(c).expect("knitctl status -o json");
        assert_eq!(report.cluster, c.name());
        assert_eq!(report.ready_peers().len(), 2, "{report:?}");
    }
}
