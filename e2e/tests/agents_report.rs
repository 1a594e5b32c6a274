//! Every agent reports whether it reaches each peer, and the reports add up
//! to the `n/m` a ClusterMeshPeer shows (read here from `knitctl status -o
//! json`, the same records the operator counts): all of cluster-a's agents
//! reach cluster-b; none does while b's nodes are cut off, each saying why;
//! all do again once they are back; a stopped agent stops counting.

use std::time::Duration;

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions};
use knit_operator::status_table::{AgentsReaching, agents_reaching};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

fn reaching_b(mesh: &LocalMesh) -> Option<AgentsReaching> {
    mesh.status_report(A)
        .map(|r| agents_reaching(&r.nodes, &B.name()))
}

#[test]
fn agents_report_n_of_m_and_name_the_nodes_that_do_not_reach_a_peer() {
    let mut mesh = LocalMesh::start(MeshOptions {
        nodes: 2,
        ..MeshOptions::default()
    });
    mesh.wait_until("2/2 of a's agents to reach b", Duration::from_secs(30), || {
        reaching_b(&mesh).is_some_and(|r| (r.connected, r.total) == (2, 2))
    });

    for n in 0..2 {
        mesh.cut_node(B.node(n));
    }
    mesh.wait_until("0/2 while b's nodes are cut off", Duration::from_secs(30), || {
        reaching_b(&mesh).is_some_and(|r| {
            (r.connected, r.total) == (0, 2)
                && r.not_connected
                    .iter()
                    .all(|(_, why)| why.contains("none of its 2 nodes answers"))
        })
    });
    let table = mesh.knitctl_status(A);
    assert!(table.contains("0/2"), "{table}");
    assert!(
        table.contains("does not reach it: none of its 2 nodes answers"),
        "{table}"
    );

    for n in 0..2 {
        mesh.restore_node(B.node(n));
    }
    mesh.wait_until("2/2 once b's nodes are back", Duration::from_secs(30), || {
        reaching_b(&mesh).is_some_and(|r| (r.connected, r.total) == (2, 2))
    });

    // A stopped agent's report goes with its lease.
    mesh.kill_agent(A.node(1));
    mesh.wait_until(
        "a stopped agent to stop counting",
        Duration::from_secs(40),
        || reaching_b(&mesh).is_some_and(|r| (r.connected, r.total) == (1, 1)),
    );
}
