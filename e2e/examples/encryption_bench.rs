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

use std::process::{Command, Stdio};

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions, SERVER_PORT};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);
const IPERF_PORT: u16 = 5201;
const SECONDS: &str = "3";

#[derive(Clone, Copy, Default)]
struct Figures {
    gbit_per_sec: f64,
    connections_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// iperf3 for 5 s from namespace `from` to `to_ip` (a server started in
/// namespace `to`); Gbit/s the receiver saw.
fn throughput(from: &str, to: &str, to_ip: &str) -> f64 {
    let mut server = Command::new("ip")
        .args(["netns", "exec", to, "iperf3", "-s", "-1", "-p"])
        .arg(IPERF_PORT.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    let mut last = String::new();
    for _ in 0..50 {
        let out = Command::new("ip")
            .args([
                "netns", "exec", from, "iperf3", "-J", "-t", "5", "-c", to_ip, "-p",
            ])
            .arg(IPERF_PORT.to_string())
            .output()
            .expect("iperf3");
        if out.status.success() {
            let _ = server.wait();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
            return v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0)
                / 1e9;
        }
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = server.kill();
    let _ = server.wait();
    panic!("iperf3 from {from} to {to_ip}: {last}");
}

/// knit-probe `mode` (`crr` or `rr`) from namespace `from` to `to_ip`'s
/// server.
fn probe(mesh: &LocalMesh, from: &str, mode: &str, to_ip: &str) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["netns", "exec", from])
        .arg(&mesh.bins.probe)
        .args([
            mode,
            "--to",
            &format!("{to_ip}:{SERVER_PORT}"),
            "--seconds",
            SECONDS,
        ])
        .output()
        .expect("knit-probe");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "knit-probe {mode} to {to_ip}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn measure(mesh: &LocalMesh, from: &str, to: &str, to_ip: &str) -> Figures {
    let crr = probe(mesh, from, "crr", to_ip);
    let rr = probe(mesh, from, "rr", to_ip);
    Figures {
        gbit_per_sec: throughput(from, to, to_ip),
        connections_per_sec: crr["connections_per_sec"].as_f64().unwrap_or(0.0),
        p50_us: rr["p50_us"].as_f64().unwrap_or(0.0),
        p99_us: rr["p99_us"].as_f64().unwrap_or(0.0),
    }
}

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

fn row(path: &str, mode: &str, f: Figures, base: Option<Figures>) -> String {
    let ratio = |v: f64, b: f64| format!("{:.2}x", v / b);
    let (tput, conns, added) = match base {
        Some(b) => (
            ratio(f.gbit_per_sec, b.gbit_per_sec),
            ratio(f.connections_per_sec, b.connections_per_sec),
            format!("{:+.0}", f.p99_us - b.p99_us),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    format!(
        "{path:<16} {mode:<22} {:>9.2} {tput:>7} {:>9.0} {conns:>7} {:>8.0} {:>8.0} {added:>9}",
        f.gbit_per_sec, f.connections_per_sec, f.p50_us, f.p99_us
    )
}

fn main() {
    println!("plaintext mesh (VXLAN)...");
    let (plain_nodes, plain_clusters, host) = run(false, true);
    println!("encrypted mesh (VXLAN inside WireGuard, userspace)...");
    let (wg_nodes, wg_clusters, _) = run(true, false);
    let host = host.expect("the underlay figure");
    println!(
        "\n{:<16} {:<22} {:>9} {:>7} {:>9} {:>7} {:>8} {:>8} {:>9}",
        "path", "mode", "Gbit/s", "ratio", "conn/s", "ratio", "p50 µs", "p99 µs", "p99 +µs"
    );
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
