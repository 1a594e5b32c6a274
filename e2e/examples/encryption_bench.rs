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

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions, SERVER_PORT};
use knit_e2e::path_bench::{Figures, header, measure, row};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

/// Across nodes and across clusters on one mesh; with `underlay`, also
/// host to host on the underlay.
fn run(encrypted: bool, underlay: bool) -> (Figures, Figures, Option<Figures>) {
    let mut mesh = LocalMesh::start(MeshOptions {
        encrypted,
        ..MeshOptions::default()
    });
    let client = mesh.add_pod(A.node(0), "bench", "client", &[("app", "client")]);
    let near = mesh.add_pod(A.node(1), "bench", "near", &[("app", "web")]);
    let far = mesh.add_pod(B.node(0), "bench", "far", &[("app", "web")]);
    for (what, to, name) in [
        ("across nodes", near, format!("{}/near", A.name())),
        ("across clusters", far, format!("{}/far", B.name())),
    ] {
        mesh.wait_for_hits(what, client, mesh.pod(to).ip, false, |h| {
            h.names.get(&name) == Some(&40)
        });
    }
    let from = mesh.pod(client).netns.name().to_owned();
    let path = |to: knit_e2e::mesh::PodId| {
        let pod = mesh.pod(to);
        measure(&mesh, &from, pod.netns.name(), &pod.ip.to_string())
    };
    let (across_nodes, across_clusters) = (path(near), path(far));
    let host = underlay.then(|| {
        let (n0, n1) = (mesh.node(A.node(0)), mesh.node(A.node(1)));
        let _server = mesh.serve_in(n1.netns.name(), "host", SERVER_PORT);
        std::thread::sleep(std::time::Duration::from_millis(300));
        measure(&mesh, n0.netns.name(), n1.netns.name(), &n1.ip)
    });
    (across_nodes, across_clusters, host)
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
