//! A peer that publishes more than its limits allows harms nobody else:
//! records beyond the cap are refused and counted, this cluster's own
//! services and the peer's real pods keep working, also while the mirror
//! restarts for the new limits.

use std::net::Ipv4Addr;

use knit_crds::PeerLimits;
use knit_e2e::manifests::{node, pod};
use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

#[test]
fn a_peer_over_its_limit_harms_nobody_else() {
    let mut mesh = LocalMesh::start(MeshOptions {
        nodes: 1,
        ..MeshOptions::default()
    });
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(0), "shop", "web", &[("app", "web")]);
    let web_b = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    let vip = Ipv4Addr::new(10, 96, 1, 50);
    mesh.deploy_service(A, &GlobalService::web(vip, vec![web_a]));
    // b's pod answers before anything changes (a's agent has learned b).
    let web_b_ip = mesh.pod(web_b).ip;
    mesh.wait_for_hits("b's pod to be reachable from a", client, web_b_ip, false, |h| {
        h.names.get("cluster-b/web-b") == Some(&40)
    });

    // a allows b 100 endpoints; b publishes 400 more (on a simulated node).
    mesh.limit_peer(
        A,
        B,
        PeerLimits {
            endpoints: 100,
            ..Default::default()
        },
    );
    let mut bulk = node("bulk", "192.168.50.90", "10.2.200.0/24");
    for i in 0..250 {
        bulk.push_str(&pod(
            "bulk",
            &format!("p{i}"),
            "bulk",
            &format!("10.2.200.{}", i + 2),
            "bulk",
        ));
    }
    bulk.push_str(&node("bulk2", "192.168.50.91", "10.2.201.0/24"));
    for i in 0..150 {
        bulk.push_str(&pod(
            "bulk",
            &format!("q{i}"),
            "bulk2",
            &format!("10.2.201.{}", i + 2),
            "bulk",
        ));
    }
    mesh.write_manifest(B, "bulk.yaml", &bulk);

    // While a's mirror of b restarts for the new limits and b floods it,
    // b's pod never stops answering.
    let refused = |mesh: &LocalMesh| {
        mesh.status_report(A).is_some_and(|r| {
            r.peers.iter().any(|p| {
                p.rejected.get("over_limit").is_some_and(|n| *n >= 300)
                    && p.counts.get(&knit_kvstore::keys::Kind::Endpoints) == Some(&100)
            })
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut rounds = 0;
    while rounds < 10 || !refused(&mesh) {
        assert!(
            std::time::Instant::now() < deadline,
            "a never refused b's endpoints over the limit\n{}",
            mesh.logs()
        );
        let during = mesh.hits(client, web_b_ip, 10, false);
        assert_eq!(
            during.names.get("cluster-b/web-b"),
            Some(&10),
            "round {rounds}: {during:?}"
        );
        rounds += 1;
    }
    // a's own service, and b's real pod (routed by its node's pod CIDR
    // even if its endpoint record was over the limit), still answer.
    let own = mesh.hits(client, vip, 40, false);
    assert_eq!(own.names.get("cluster-a/web"), Some(&40), "{own:?}");
    let peer = mesh.hits(client, web_b_ip, 20, false);
    assert_eq!(peer.names.get("cluster-b/web-b"), Some(&20), "{peer:?}");

    // Bytes: a allows b 64 KiB per kind (the schema's least) and no
    // longer caps the count; b's 402 endpoint records take about 80 KiB.
    mesh.limit_peer(
        A,
        B,
        PeerLimits {
            bytes: 65_536,
            ..Default::default()
        },
    );
    mesh.wait_until(
        "a to refuse b's endpoints past the byte budget",
        std::time::Duration::from_secs(60),
        || {
            mesh.status_report(A).is_some_and(|r| {
                r.peers.iter().any(|p| {
                    let endpoints = p
                        .counts
                        .get(&knit_kvstore::keys::Kind::Endpoints)
                        .copied()
                        .unwrap_or_default();
                    p.rejected.get("over_byte_budget").is_some_and(|n| *n > 0)
                        && endpoints > 100
                        && endpoints < 402
                })
            })
        },
    );
    let admin = mesh.cluster(A).control.admin_config();
    let (ok, out) = mesh.etcdctl(
        A,
        &admin,
        &mesh.etcd_url(A),
        &["get", "--prefix", "knit/v1/cache/cluster-b/endpoints/"],
    );
    assert!(ok, "{out}");
    // etcdctl prints each key and value on a line of its own.
    let held = out.len() - out.lines().count();
    assert!(held <= 65_536, "a holds {held} bytes of b's endpoints");
    // Nodes have a budget of their own: b's real pod and a's service answer.
    let peer = mesh.hits(client, web_b_ip, 20, false);
    assert_eq!(peer.names.get("cluster-b/web-b"), Some(&20), "{peer:?}");
    let own = mesh.hits(client, vip, 20, false);
    assert_eq!(own.names.get("cluster-a/web"), Some(&20), "{own:?}");
}
