//! Affinity that degrades gracefully, on a 3-cluster local mesh: a
//! `failover` threshold (a count, a share of ready local backends) decides
//! when `local` adds remote backends, and `preferredClusters` orders the
//! peers traffic moves to, and `clusters` limits which peers are imported
//! from at all. Every rule is observed as which clusters answer a client in
//! cluster-a.

use std::net::Ipv4Addr;

use knit_e2e::mesh::{ClusterId, GlobalService, Hits, LocalMesh, MeshOptions, PodId};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);
const C: ClusterId = ClusterId(2);

/// cluster-a's `shop/web`: `ready` and `not_ready` backends, affinity
/// local, and `spec_extra` in its GlobalServicePolicy.
fn web_a<'a>(ready: Vec<PodId>, not_ready: Vec<PodId>, spec_extra: &'a str) -> GlobalService<'a> {
    GlobalService {
        affinity: "local",
        not_ready,
        spec_extra,
        ..GlobalService::web(Ipv4Addr::new(10, 96, 1, 50), ready)
    }
}

fn only(h: &Hits, clusters: &[ClusterId]) -> bool {
    h.total() == 40
        && clusters.iter().all(|c| h.from_cluster(&c.name()) > 0)
        && clusters.iter().map(|c| h.from_cluster(&c.name())).sum::<usize>() == 40
}

#[test]
fn failover_thresholds_and_preferred_clusters() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 3,
        nodes: 1,
        ..MeshOptions::default()
    });
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let a: Vec<PodId> = (1..=3)
        .map(|i| mesh.add_pod(A.node(0), "shop", &format!("web-a{i}"), &[("app", "web")]))
        .collect();
    let web_b = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    let web_c = mesh.add_pod(C.node(0), "shop", "web-c", &[("app", "web")]);
    mesh.deploy_service(B, &GlobalService::web(Ipv4Addr::new(10, 96, 2, 50), vec![web_b]));
    mesh.deploy_service(C, &GlobalService::web(Ipv4Addr::new(10, 96, 3, 50), vec![web_c]));
    let vip = Ipv4Addr::new(10, 96, 1, 50);

    // Count: one ready local backend is fewer than 2, so b and c join.
    let count = "failover: {minReadyBackends: 2}";
    mesh.deploy_service(A, &web_a(vec![a[0]], vec![a[1], a[2]], count));
    mesh.wait_for_hits("1 of 2 local: remote backends added", client, vip, false, |h| {
        only(h, &[A, B, C])
    });
    // A second local pod ready: the threshold is met, traffic stays home.
    mesh.deploy_service(A, &web_a(vec![a[0], a[1]], vec![a[2]], count));
    mesh.wait_for_hits("2 of 2 local: local only", client, vip, false, |h| only(h, &[A]));

    // Share: 2 of 3 ready (66 %) meets 60 %; 1 of 3 (33 %) does not.
    let share = "failover: {minReadyPercent: 60}";
    mesh.deploy_service(A, &web_a(vec![a[0], a[1]], vec![a[2]], share));
    mesh.wait_for_hits("66 % ready: local only", client, vip, false, |h| only(h, &[A]));
    mesh.deploy_service(A, &web_a(vec![a[0]], vec![a[1], a[2]], share));
    mesh.wait_for_hits("33 % ready: remote backends added", client, vip, false, |h| {
        only(h, &[A, B, C])
    });

    // Order: with no local backend ready, c is preferred over b...
    let order = "preferredClusters: [cluster-c, cluster-b]";
    mesh.deploy_service(A, &web_a(vec![], a.clone(), order));
    mesh.wait_for_hits(
        "local down: the first preferred cluster",
        client,
        vip,
        false,
        |h| only(h, &[C]),
    );
    // ...and when c falls short too, traffic moves on to b.
    mesh.deploy_service(
        C,
        &GlobalService {
            not_ready: vec![web_c],
            ..GlobalService::web(Ipv4Addr::new(10, 96, 3, 50), vec![])
        },
    );
    mesh.wait_for_hits("c down: the next preferred cluster", client, vip, false, |h| {
        only(h, &[B])
    });
    // Local backends back: they win again over every preference.
    mesh.deploy_service(A, &web_a(vec![a[2]], vec![], order));
    mesh.wait_for_hits("local back: local only", client, vip, false, |h| only(h, &[A]));

    // The `clusters` allow-list: only the named peers' backends are
    // imported, whatever else is ready (before, every peer's were used).
    mesh.deploy_service(C, &GlobalService::web(Ipv4Addr::new(10, 96, 3, 50), vec![web_c]));
    mesh.deploy_service(A, &web_a(vec![], a.clone(), "clusters: [cluster-b]"));
    mesh.wait_for_hits("allowed: cluster-b only", client, vip, false, |h| only(h, &[B]));
    mesh.deploy_service(A, &web_a(vec![], a.clone(), "clusters: [cluster-c]"));
    mesh.wait_for_hits("allowed: cluster-c only", client, vip, false, |h| only(h, &[C]));
    mesh.deploy_service(A, &web_a(vec![], a.clone(), ""));
    mesh.wait_for_hits("no allow-list: every peer", client, vip, false, |h| {
        only(h, &[B, C])
    });

    // No backend anywhere the service may use: connects fail at once and
    // the socket program counts them (`no_backend`).
    mesh.deploy_service(
        A,
        &GlobalService {
            import: false,
            ..web_a(vec![], a.clone(), "")
        },
    );
    mesh.wait_for_hits(
        "a VIP with no backend to refuse connects",
        client,
        vip,
        false,
        |h| h.total() == 0,
    );
    let counted = |mesh: &LocalMesh| mesh.agent_metric(A.node(0), "knit_agent_drops{name=\"no_backend\"}");
    mesh.wait_until(
        "no_backend to be counted",
        std::time::Duration::from_secs(10),
        || counted(&mesh) >= 40,
    );

    // Each of these steps changed service records only: the agent patched
    // them instead of rendering the whole node again.
    let patched = mesh.agent_metric(A.node(0), "knit_agent_applies_total{path=\"patch\"}");
    assert!(patched >= 5, "service changes applied as patches: {patched}");
}
