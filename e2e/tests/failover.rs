//! Failover decided by the data plane: agents probe every remote node
//! (`knit_agent::health`), and a node that stops answering loses its
//! backends wherever others remain, with its control plane none the wiser.

use std::time::Duration;

use knit_e2e::manifests::node;
use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

#[test]
fn a_dead_node_loses_its_backends_and_gets_them_back() {
    let mut mesh = LocalMesh::start(MeshOptions::default());
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let web1 = mesh.add_pod(B.node(0), "shop", "web-1", &[("app", "web")]);
    let web2 = mesh.add_pod(B.node(1), "shop", "web-2", &[("app", "web")]);
    let vip = std::net::Ipv4Addr::new(10, 96, 1, 30);
    mesh.deploy_service(A, &GlobalService::web(vip, vec![]));
    mesh.deploy_service(
        B,
        &GlobalService::web(std::net::Ipv4Addr::new(10, 96, 2, 30), vec![web1, web2]),
    );
    mesh.wait_for_hits("both of b's backends", client, vip, false, |h| h.names.len() == 2);
    let failing = "knit_agent_failing_nodes ";
    assert_eq!(mesh.agent_metric(A.node(0), failing), 0);

    // b's second node dies; b's control plane still lists web-2 as ready.
    mesh.cut_node(B.node(1));
    let (took, failed) = mesh.time_until_avoided(client, vip, &["cluster-b/web-2"], Duration::from_secs(15));
    eprintln!("node failover: {took:?}, {failed} requests failed meanwhile (probes every 500 ms, 3 missed)");
    assert_eq!(mesh.agent_metric(A.node(0), failing), 1);
    let after = mesh.hits(client, vip, 40, false);
    assert_eq!(after.names.get("cluster-b/web-1"), Some(&40), "{after:?}");

    // The node comes back: its backend is used again.
    mesh.restore_node(B.node(1));
    mesh.wait_for_hits("web-2 back", client, vip, false, |h| h.names.len() == 2);
    mesh.wait_until("no failing node", Duration::from_secs(10), || {
        mesh.agent_metric(A.node(0), failing) == 0
    });
}

/// Dead nodes by the dozen (a peer's nodes gone at once, or nodes whose
/// records outlive them) must not make live ones look dead. Probes to them
/// wait in the kernel's neighbour queues until ARP gives up; the prober
/// once awaited its full send buffer for seconds, answering nobody, and
/// live nodes on both sides flapped between failing and healthy.
#[test]
fn dead_nodes_by_the_dozen_make_no_live_node_fail() {
    const DEAD: usize = 80;
    let mesh = LocalMesh::start(MeshOptions {
        nodes: 1,
        ..MeshOptions::default()
    });
    let id = B.mesh_id();
    let dead: String = (0..DEAD)
        .map(|n| {
            node(
                &format!("gone-{n}"),
                &format!("192.168.50.{}", 100 + n),
                &format!("10.{id}.{}.0/24", 100 + n),
            )
        })
        .collect();
    mesh.write_manifest(B, "gone.yaml", &dead);
    let failing = "knit_agent_failing_nodes ";
    let agents = [A.node(0), B.node(0)];
    mesh.wait_until(
        "every agent to find the dead nodes failing",
        Duration::from_secs(60),
        || {
            agents
                .iter()
                .all(|n| mesh.agent_metric(*n, failing) == DEAD as i64)
        },
    );
    // Each dead node's ARP gives up after 3 s and the queues refill: watch
    // for three such cycles.
    let mut seen = Vec::new();
    for _ in 0..40 {
        seen.push(agents.map(|n| mesh.agent_metric(n, failing)));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        seen.iter().all(|s| *s == [DEAD as i64; 2]),
        "failing nodes per agent, every 250 ms (a and b): {seen:?}\n{}",
        mesh.logs()
    );
}
