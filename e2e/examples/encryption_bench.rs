//! `make bench` part: what encryption costs on the local mesh. Pod to pod
//! across nodes of one cluster and across clusters, on a mesh without
//! encryption and on one with WireGuard (the userspace path, boringtun, the
//! only one this machine's kernel allows), and the underlay's own figure
//! host to host (node namespace to node namespace, no tunnel): the limit on
//! this machine.
//!
//! Per path: TCP throughput (iperf3, 5 s), connections per second
//! (knit-probe `crr`: connect, request, answer, close) and request/answer
//! latency on one connection (knit-probe `rr`, p50 and p99). The ratios
//! are to the same path without encryption; the targets are ≥ 0.5× the
//! plaintext throughput and under 100 µs added to the p99. Both are
//! printed either way.

use knit_e2e::mesh::{LocalMesh, MeshOptions};
use knit_e2e::path_bench::{Figures, across_nodes_and_clusters, header, row};

/// Across nodes and across clusters on one mesh; with `underlay`, also
/// host to host on the underlay.
fn run(encrypted: bool, underlay: bool) -> (Figures, Figures, Option<Figures>) {
    let mut mesh = LocalMesh::start(MeshOptions {
        encrypted,
        ..MeshOptions::default()
    });
    across_nodes_and_clusters(&mut mesh, underlay)
}

fn main() {
    println!("plaintext mesh (VXLAN)...");
    let (plain_nodes, plain_clusters, host) = run(false, true);
    println!("encrypted mesh (VXLAN inside WireGuard, userspace)...");
    let (wg_nodes, wg_clusters, _) = run(true, false);
    let host = host.expect("the underlay figure");
    println!("\n{}", header());
    println!("{}", row("host to host", "underlay, no tunnel", host, None));
    println!("{}", row("across nodes", "plaintext", plain_nodes, None));
    println!(
        "{}",
        row(
            "across nodes",
            "WireGuard (userspace)",
            wg_nodes,
            Some(plain_nodes)
        )
    );
    println!("{}", row("across clusters", "plaintext", plain_clusters, None));
    println!(
        "{}",
        row(
            "across clusters",
            "WireGuard (userspace)",
            wg_clusters,
            Some(plain_clusters)
        )
    );
    let worst_ratio = (wg_nodes.gbit_per_sec / plain_nodes.gbit_per_sec)
        .min(wg_clusters.gbit_per_sec / plain_clusters.gbit_per_sec);
    let worst_added = (wg_nodes.p99_us - plain_nodes.p99_us).max(wg_clusters.p99_us - plain_clusters.p99_us);
    let met = |ok: bool| if ok { "met" } else { "missed" };
    println!(
        "\ntarget: throughput with encryption >= 0.5x plaintext: {worst_ratio:.2}x ({})",
        met(worst_ratio >= 0.5)
    );
    println!(
        "target: added p99 per round trip < 100 µs: {worst_added:+.0} µs ({})",
        met(worst_added < 100.0)
    );
}
