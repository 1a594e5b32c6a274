//! A Cilium user's global service, as written: a Service annotated
//! `io.cilium/global-service: "true"` and `io.cilium/service-affinity:
//! local` (the older spellings of `service.cilium.io/global` and
//! `service.cilium.io/affinity`), with no GlobalServicePolicy, in two
//! clusters. Each cluster's clients stay on their own backends while one
//! is ready, and move to the peer's when none is.

use std::net::Ipv4Addr;

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

const LEGACY: &[(&str, &str)] = &[
    ("io.cilium/global-service", "true"),
    ("io.cilium/service-affinity", "local"),
];

#[test]
fn the_users_annotated_global_service_keeps_local_affinity() {
    let mut mesh = LocalMesh::start(MeshOptions {
        nodes: 1,
        ..MeshOptions::default()
    });
    let client_a = mesh.add_pod(A.node(0), "shop", "client-a", &[("app", "client")]);
    let client_b = mesh.add_pod(B.node(0), "shop", "client-b", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(0), "shop", "web-a", &[("app", "web")]);
    let web_b = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    let (vip_a, vip_b) = (Ipv4Addr::new(10, 96, 1, 60), Ipv4Addr::new(10, 96, 2, 60));
    mesh.deploy_annotated_service(A, ("shop", "web"), vip_a, &[web_a], LEGACY);
    mesh.deploy_annotated_service(B, ("shop", "web"), vip_b, &[web_b], LEGACY);

    // Affinity local: each cluster's own backend only. (A cluster's
    // backends are programmed before the peer's export arrives, so this is
    // checked again once the peer's backends are in: below, by failover.)
    for (client, vip, home) in [(client_a, vip_a, A), (client_b, vip_b, B)] {
        mesh.wait_for_hits("local backends only", client, vip, false, |h| {
            h.total() == 40 && h.from_cluster(&home.name()) == 40
        });
    }
    // No ready backend left in cluster-a: its clients go to cluster-b's,
    // which shows cluster-b's backend was imported all along.
    mesh.deploy_annotated_service(A, ("shop", "web"), vip_a, &[], LEGACY);
    mesh.wait_for_hits("failover to cluster-b", client_a, vip_a, false, |h| {
        h.total() == 40 && h.from_cluster(&B.name()) == 40
    });
    // Back: local again.
    mesh.deploy_annotated_service(A, ("shop", "web"), vip_a, &[web_a], LEGACY);
    let h = mesh.wait_for_hits("local again", client_a, vip_a, false, |h| {
        h.total() == 40 && h.from_cluster(&A.name()) == 40
    });
    assert_eq!(h.from_cluster(&B.name()), 0, "affinity local: {h:?}");
}
