//! `make bench` part 4: failover times on the local mesh (2 clusters × 2
//! nodes, a client in cluster-a, backends of one global service in both).
//! From the moment something dies until a round of new connections goes
//! only to live backends, polled every 100 ms:
//!
//! - a node of cluster-b loses its network (data-path probes: 500 ms, 3
//!   missed, then the render drops its backends);
//! - every node of cluster-b does (the whole cluster dies);
//! - cluster-b's control plane dies while its nodes live: its backends stay
//!   in use until the grace period (4 s here, 30 s by default) withdraws
//!   them, and requests keep succeeding meanwhile.

use std::net::Ipv4Addr;
use std::time::Duration;

use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

fn main() {
    let mut mesh = LocalMesh::start(MeshOptions::default());
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(1), "shop", "web-a", &[("app", "web")]);
    let web_b1 = mesh.add_pod(B.node(0), "shop", "web-b1", &[("app", "web")]);
    let web_b2 = mesh.add_pod(B.node(1), "shop", "web-b2", &[("app", "web")]);
    let vip = Ipv4Addr::new(10, 96, 1, 40);
    mesh.deploy_service(A, &GlobalService::web(vip, vec![web_a]));
    mesh.deploy_service(
        B,
        &GlobalService::web(Ipv4Addr::new(10, 96, 2, 40), vec![web_b1, web_b2]),
    );
    let all = |mesh: &LocalMesh| {
        mesh.wait_for_hits("all three backends", client, vip, false, |h| h.names.len() == 3);
    };
    all(&mesh);
    let limit = Duration::from_secs(30);
    let mut rows = Vec::new();

    mesh.cut_node(B.node(1));
    rows.push((
        "node of cluster-b loses its network",
        mesh.time_until_avoided(client, vip, &["cluster-b/web-b2"], limit),
    ));
    mesh.restore_node(B.node(1));
    all(&mesh);

    mesh.cut_node(B.node(0));
    mesh.cut_node(B.node(1));
    let gone = ["cluster-b/web-b1", "cluster-b/web-b2"];
    rows.push((
        "every node of cluster-b does",
        mesh.time_until_avoided(client, vip, &gone, limit),
    ));
    mesh.restore_node(B.node(0));
    mesh.restore_node(B.node(1));
    all(&mesh);

    mesh.stop_control_plane(B);
    let (took, failed) = mesh.time_until_avoided(client, vip, &gone, limit);
    rows.push(("cluster-b's control plane dies (grace 4 s)", (took, failed)));
    mesh.start_control_plane(B);

    println!("\nfailover (probes every 500 ms, node failing after 3 missed; 10 requests per 100 ms round)");
    println!(
        "{:<46} {:>12} {:>24}",
        "event", "failover", "requests failed meanwhile"
    );
    for (what, (took, failed)) in rows {
        println!("{what:<46} {:>10.1?} {failed:>24}", took);
    }
}
