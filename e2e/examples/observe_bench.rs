//! `make bench` part: what observation costs. On the local mesh, a client
//! opens connection after connection (knit-probe `crr`: connect, request,
//! answer, close) to a global service's VIP whose backend, on another node,
//! a NetworkPolicy selects: every connection makes a translation event on
//! the client's node and a policy verdict event on the server's. The
//! datapath's emission is switched off and on by the `knit_observe` map
//! of both nodes (the agents keep reading), in alternating rounds, and
//! connections per second compared. Target: observation on loses at most
//! 5 % of connections per second. Printed either way.

use std::net::Ipv4Addr;
use std::process::Command;

use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions, NodeId, PodId, SERVER_PORT};

const A: ClusterId = ClusterId(0);
const ROUNDS: usize = 7;

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: client}\n";

/// Sets the event kinds node `n`'s datapath emits (bits 1 << EVENT_*).
fn emit(mesh: &LocalMesh, n: NodeId, mask: u32) {
    let pin = mesh.agent_pin_dir(n).join("maps/knit_observe");
    let value: Vec<String> = mask.to_ne_bytes().iter().map(|b| b.to_string()).collect();
    let status = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&pin)
        .args(["key", "0", "0", "0", "0", "value"])
        .args(&value)
        .status()
        .expect("bpftool");
    assert!(status.success(), "bpftool map update {}", pin.display());
}

fn events(mesh: &LocalMesh, n: NodeId) -> i64 {
    mesh.agent_metrics(n)
        .lines()
        .filter(|l| l.starts_with("knit_agent_flow_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum()
}

/// knit-probe `crr` for 3 s from pod `p` (in its cgroup: the socket
/// programs translate the VIP) to `vip`.
fn connections_per_sec(mesh: &LocalMesh, p: PodId, vip: Ipv4Addr) -> f64 {
    let to = format!("{vip}:{SERVER_PORT}");
    let out = mesh.probe(p, &["crr", "--to", &to, "--seconds", "3"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["connections_per_sec"].as_f64().unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut mesh = LocalMesh::start(MeshOptions::default());
    let (client, near, _far) = mesh.client_near_far();
    let vip = Ipv4Addr::new(10, 96, 1, 10);
    mesh.deploy_service(A, &GlobalService::web(vip, vec![near]));
    mesh.write_manifest(A, "policy-web.yaml", POLICY);
    mesh.wait_for_hits("the service", client, vip, false, |h| h.total() > 0);
    let nodes = [A.node(0), A.node(1)];
    // Thousands of connections a second leave the client's ports in
    // TIME_WAIT; without reuse, connect() runs out of even ports after
    // about 14,000 and the rate falls tenfold whatever is measured.
    let tw_reuse = Command::new("ip")
        .args(["netns", "exec", mesh.pod(client).netns.name()])
        .args(["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])
        .status()
        .expect("sysctl");
    assert!(tw_reuse.success());
    let all = (1 << 1) | (1 << 2) | (1 << 3);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut per_sec = Vec::new();
    for round in 0..ROUNDS {
        for observed in [false, true] {
            for n in nodes {
                emit(&mesh, n, if observed { all } else { 0 });
            }
            let before: i64 = nodes.iter().map(|n| events(&mesh, *n)).sum();
            let t = std::time::Instant::now();
            let conns = connections_per_sec(&mesh, client, vip);
            std::thread::sleep(std::time::Duration::from_millis(300));
            let seen: i64 = nodes.iter().map(|n| events(&mesh, *n)).sum::<i64>() - before;
            println!(
                "round {}: observation {:<3} {conns:>7.0} conn/s, {seen} events read",
                round + 1,
                if observed { "on" } else { "off" }
            );
            if observed {
                on.push(conns);
                per_sec.push(seen as f64 / t.elapsed().as_secs_f64());
            } else {
                off.push(conns);
            }
        }
    }
    for n in nodes {
        emit(&mesh, n, all);
    }
    let (off, on) = (median(off), median(on));
    let loss = 1.0 - on / off;
    println!("\nobservation   conn/s (median of {ROUNDS})   events/s read");
    println!("off           {off:>9.0}");
    println!("on            {on:>9.0}                {:>9.0}", median(per_sec));
    println!(
        "\ntarget: observation on loses at most 5 % of connections per second: {:.1} % ({})",
        loss * 100.0,
        if loss <= 0.05 { "met" } else { "missed" }
    );
}
