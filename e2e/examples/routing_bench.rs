//! `make bench` part: the routing modes on the local mesh. Pod to pod
//! across nodes of one cluster and across clusters, with both clusters in
//! tunnel, native and hybrid routing, and the underlay's own figure host to
//! host (node namespace to node namespace): the limit on this machine.
//!
//! Per path: TCP throughput (iperf3, 5 s), connections per second and
//! request/answer latency (p50, p99) ([`knit_e2e::path_bench`]). Ratios
//! are to the underlay host to host. The target: native across nodes
//! within 10 % of the underlay's throughput (≥ 0.90×) and ahead of the
//! tunnel. Printed either way.

use knit_e2e::mesh::{LocalMesh, MeshOptions};
use knit_e2e::path_bench::{Figures, across_nodes_and_clusters, header, row};
use knit_kvstore::records::RoutingMode;

/// Across nodes and across clusters with both clusters in `mode`; with
/// `underlay`, also host to host on the underlay.
fn run(mode: RoutingMode, underlay: bool) -> (Figures, Figures, Option<Figures>) {
    let mut mesh = LocalMesh::start(MeshOptions {
        routing_modes: vec![mode; 2],
        ..MeshOptions::default()
    });
    across_nodes_and_clusters(&mut mesh, underlay)
}

fn main() {
    let mut results = Vec::new();
    let mut host = None;
    for mode in [RoutingMode::Tunnel, RoutingMode::Native, RoutingMode::Hybrid] {
        println!("{mode} routing mesh...");
        let (nodes, clusters, h) = run(mode, host.is_none());
        host = host.or(h);
        results.push((mode, nodes, clusters));
    }
    let host = host.expect("the underlay figure");
    println!("\n{}", header());
    println!("{}", row("host to host", "underlay", host, None));
    for (path, pick) in [("across nodes", 0usize), ("across clusters", 1usize)] {
        for (mode, nodes, clusters) in &results {
            let f = if pick == 0 { *nodes } else { *clusters };
            println!("{}", row(path, &format!("{mode} routing"), f, Some(host)));
        }
    }
    let figure = |m: RoutingMode| results.iter().find(|r| r.0 == m).map(|r| r.1).unwrap_or_default();
    let (native, tunnel) = (figure(RoutingMode::Native), figure(RoutingMode::Tunnel));
    let ratio = native.gbit_per_sec / host.gbit_per_sec;
    let met = |ok: bool| if ok { "met" } else { "missed" };
    println!(
        "\ntarget: native across nodes >= 0.90x the underlay host to host: {ratio:.2}x ({})",
        met(ratio >= 0.9)
    );
    println!(
        "target: native ahead of the tunnel across nodes: {:.2} vs {:.2} Gbit/s, {:.0} vs {:.0} conn/s, p99 {:.0} vs {:.0} µs ({})",
        native.gbit_per_sec,
        tunnel.gbit_per_sec,
        native.connections_per_sec,
        tunnel.connections_per_sec,
        native.p99_us,
        tunnel.p99_us,
        met(native.gbit_per_sec > tunnel.gbit_per_sec
            && native.connections_per_sec > tunnel.connections_per_sec)
    );
}
