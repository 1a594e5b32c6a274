//! Pod-to-pod figures for the benchmarks of `make bench` (encryption,
//! routing modes): TCP throughput (iperf3, 5 s), connections per second
//! (knit-probe `crr`: connect, request, answer, close) and request/answer
//! latency on one connection (knit-probe `rr`, p50 and p99), between two
//! network namespaces of a [`LocalMesh`], and a table row comparing them.

use std::process::{Command, Stdio};

use crate::mesh::{ClusterId, LocalMesh, SERVER_PORT};

const IPERF_PORT: u16 = 5201;
const SECONDS: &str = "3";

/// What one path measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    /// TCP throughput the receiver saw.
    pub gbit_per_sec: f64,
    /// Connections per second (connect, request, answer, close).
    pub connections_per_sec: f64,
    /// Request/answer latency on one connection, median.
    pub p50_us: f64,
    /// Request/answer latency on one connection, 99th percentile.
    pub p99_us: f64,
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
        // iperf3 3.12 exits 0 with -J even when it could not connect (the
        // server not listening yet): only a JSON without "error" counts.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() && v.get("end").is_some() && v.get("error").is_none() {
            let _ = server.wait();
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

/// Every figure from namespace `from` to `to_ip` (a pod or host in
/// namespace `to` whose probe server answers on [`SERVER_PORT`]).
pub fn measure(mesh: &LocalMesh, from: &str, to: &str, to_ip: &str) -> Figures {
    let crr = probe(mesh, from, "crr", to_ip);
    let rr = probe(mesh, from, "rr", to_ip);
    Figures {
        gbit_per_sec: throughput(from, to, to_ip),
        connections_per_sec: crr["connections_per_sec"].as_f64().unwrap_or(0.0),
        p50_us: rr["p50_us"].as_f64().unwrap_or(0.0),
        p99_us: rr["p99_us"].as_f64().unwrap_or(0.0),
    }
}

/// On `mesh`: a client on cluster-a's first node to a pod on its second
/// node and to a pod of cluster-b ([`LocalMesh::client_near_far`]); with
/// `underlay`, also host to host between cluster-a's two nodes.
pub fn across_nodes_and_clusters(
    mesh: &mut LocalMesh,
    underlay: bool,
) -> (Figures, Figures, Option<Figures>) {
    let (client, near, far) = mesh.client_near_far();
    let from = mesh.pod(client).netns.name().to_owned();
    let path = |to| {
        let pod = mesh.pod(to);
        measure(mesh, &from, pod.netns.name(), &pod.ip.to_string())
    };
    let (across_nodes, across_clusters) = (path(near), path(far));
    let host = underlay.then(|| {
        let a = ClusterId(0);
        let (n0, n1) = (mesh.node(a.node(0)), mesh.node(a.node(1)));
        let _server = mesh.serve_in(n1.netns.name(), "host", SERVER_PORT);
        std::thread::sleep(std::time::Duration::from_millis(300));
        measure(mesh, n0.netns.name(), n1.netns.name(), &n1.ip)
    });
    (across_nodes, across_clusters, host)
}

/// A table row: `f` and, against `base`, the throughput and connection
/// ratios and the p99 added.
pub fn row(path: &str, mode: &str, f: Figures, base: Option<Figures>) -> String {
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

/// The header of [`row`]'s table.
pub fn header() -> String {
    format!(
        "{:<16} {:<22} {:>9} {:>7} {:>9} {:>7} {:>8} {:>8} {:>9}",
        "path", "mode", "Gbit/s", "ratio", "conn/s", "ratio", "p50 µs", "p99 µs", "p99 +µs"
    )
}
