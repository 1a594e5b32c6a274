//! The Multi-Cluster Services API on a 3-cluster local mesh: cluster-a and
//! cluster-b export `shop/web` with a `ServiceExport` (YAML through the
//! directory sources, no GlobalServicePolicy); cluster-c has no copy of the
//! Service. Importing (what the operator does in Kubernetes; here `knitctl
//! mcs render`) gives cluster-c a derived Service whose ClusterIP is the
//! clusterset VIP, and a client there reaches backends in both other
//! clusters through it. The ServiceImport names both clusters, oldest
//! export first.

use std::net::Ipv4Addr;

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);
const C: ClusterId = ClusterId(2);

#[test]
fn a_cluster_without_the_service_reaches_it_through_the_clusterset_vip() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 3,
        nodes: 1,
        ..MeshOptions::default()
    });
    let web_a = mesh.add_pod(A.node(0), "shop", "web-a", &[("app", "web")]);
    let web_b = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    let client = mesh.add_pod(C.node(0), "shop", "client", &[("app", "client")]);
    mesh.deploy_service_export(
        A,
        ("shop", "web"),
        Ipv4Addr::new(10, 96, 1, 60),
        &[web_a],
        "2026-01-01T00:00:00Z",
    );
    mesh.deploy_service_export(
        B,
        ("shop", "web"),
        Ipv4Addr::new(10, 96, 2, 60),
        &[web_b],
        "2026-02-01T00:00:00Z",
    );

    // cluster-c imports once both exports have reached its kvstore.
    let import = mesh.cluster(C).control.source_dir().join("mcs-shop-web.yaml");
    mesh.wait_until(
        "cluster-c to import shop/web from both clusters",
        std::time::Duration::from_secs(30),
        || {
            mesh.import_clusterset_services(C, "shop");
            std::fs::read_to_string(&import)
                .is_ok_and(|y| y.contains("cluster: cluster-a") && y.contains("cluster: cluster-b"))
        },
    );
    let yaml = std::fs::read_to_string(&import).unwrap();
    assert!(
        yaml.find("cluster: cluster-a") < yaml.find("cluster: cluster-b"),
        "the oldest export comes first: {yaml}"
    );
    let vip: Ipv4Addr = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("clusterIP: "))
        .expect("the derived Service's clusterset VIP")
        .trim_matches('\'')
        .trim_matches('"')
        .parse()
        .unwrap();
    assert!(
        yaml.contains("kind: ServiceImport") && yaml.contains("ClusterSetIP"),
        "{yaml}"
    );

    let hits = mesh.wait_for_hits("the clusterset VIP to reach a and b", client, vip, false, |h| {
        h.total() == 40 && h.from_cluster(&A.name()) > 0 && h.from_cluster(&B.name()) > 0
    });
    assert_eq!(hits.peer_mismatch, 0, "replies come from the VIP: {hits:?}");

    // A ServiceExport is what exports: without it cluster-b's backends go.
    mesh.remove_manifest(B, "svc-shop-web.yaml");
    mesh.wait_for_hits("only cluster-a once b stops exporting", client, vip, false, |h| {
        h.total() == 40 && h.from_cluster(&A.name()) == 40
    });
}
