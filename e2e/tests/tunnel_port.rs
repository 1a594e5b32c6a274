//! The tunnel's UDP port on a node where something already holds it, as
//! on k3s (flannel's `flannel.1`) or beside Cilium in VXLAN mode: the agent
//! stops at once with an error naming the owner and `tunnelPort`, never a
//! crash loop on "address in use"; on another port it starts. Each case
//! runs knit-agent in a network namespace of its own. And across the mesh:
//! a peer that announces another tunnel port is reported unreachable by
//! every agent, with the port and the fix, until it agrees again. Runs as
//! root.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use knit_e2e::mesh::{Binaries, ClusterId, LocalMesh, MeshOptions};
use knit_e2e::netns::{Netns, run_bpffs};
use knit_operator::status_table::agents_reaching;

/// Runs the agent in `ns` with `extra` arguments until it exits or
/// `deadline` passes; returns (exited, stderr + stdout).
fn agent(ns: &Netns, pins: &std::path::Path, extra: &[&str], deadline: Duration) -> (bool, String) {
    let bins = Binaries::locate();
    let pin_dir = pins.join(ns.name());
    let mut args = vec![
        "netns".to_owned(),
        "exec".to_owned(),
        ns.name().to_owned(),
        bins.agent.display().to_string(),
        "--cluster-name=cluster-a".into(),
        "--node-name=n1".into(),
        "--etcd-config=/nonexistent/knit-test/config.yaml".into(),
        format!("--bpf-pin-dir={}", pin_dir.display()),
        format!("--source-dir={}", pins.display()),
        "--metrics-addr=127.0.0.1:9964".into(),
        format!("--api-socket={}", pin_dir.with_extension("sock").display()),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let mut child = Command::new("ip")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn knit-agent");
    let start = Instant::now();
    let exited = loop {
        if child.try_wait().expect("wait").is_some() {
            break true;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    (
        exited,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

#[test]
fn a_taken_vxlan_port_stops_the_agent_with_the_owner_named() {
    let pins = run_bpffs();

    // flannel's device on 8472.
    let flannel = Netns::new("port-flannel");
    flannel.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "nolearning",
    ]);
    flannel.ip(&["link", "set", "flannel.1", "up"]);
    let (exited, out) = agent(&flannel, pins.path(), &[], Duration::from_secs(20));
    assert!(exited, "the agent must stop at once: {out}");
    assert!(
        out.contains("8472") && out.contains("flannel.1") && out.contains("tunnelPort"),
        "{out}"
    );
    let links = flannel.ip(&["-j", "link", "show"]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("knit_vxlan"),
        "no half-made tunnel device"
    );

    // A process's socket on 8472.
    let socket = Netns::new("port-socket");
    let mut holder = Command::new("ip")
        .args(["netns", "exec", socket.name(), "python3", "-c"])
        .arg("import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 8472)); print('bound', flush=True); time.sleep(60)")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "bound");
    let (exited, out) = agent(&socket, pins.path(), &[], Duration::from_secs(20));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(exited, "{out}");
    assert!(
        out.contains("8472") && out.contains(&format!("pid {}", holder.id())) && out.contains("python3"),
        "{out}"
    );

    // Beside flannel on another port, the agent makes its device, loads
    // its datapath and goes on to its etcd config, which this test does
    // not write.
    let (_, out) = agent(
        &flannel,
        pins.path(),
        &["--tunnel-port=8473"],
        Duration::from_secs(20),
    );
    assert!(!out.contains("already taken"), "{out}");
    assert!(
        out.contains("datapath loaded") && out.contains("config.yaml"),
        "{out}"
    );
    let dev = flannel.ip(&["-d", "-j", "link", "show", "knit_vxlan"]);
    let dev: serde_json::Value = serde_json::from_slice(&dev.stdout).expect("knit_vxlan exists");
    assert_eq!(dev[0]["linkinfo"]["info_data"]["port"], 8473, "{dev}");
}

#[test]
fn a_peer_announcing_another_tunnel_port_is_reported_unreachable() {
    let (a, b) = (ClusterId(0), ClusterId(1));
    let mut mesh = LocalMesh::start(MeshOptions {
        nodes: 1,
        ..MeshOptions::default()
    });
    let reaching = |mesh: &LocalMesh| {
        mesh.status_report(a)
            .map(|r| agents_reaching(&r.nodes, &b.name()))
    };
    mesh.wait_until("a's agent to reach b", Duration::from_secs(30), || {
        reaching(&mesh).is_some_and(|r| (r.connected, r.total) == (1, 1))
    });

    mesh.restart_apiserver_with(b, &["--tunnel-port=8473"]);
    mesh.wait_until("a's agent to see b's other port", Duration::from_secs(40), || {
        reaching(&mesh).is_some_and(|r| {
            r.connected == 0
                && r.not_connected
                    .iter()
                    .any(|(_, why)| why.contains("UDP 8473") && why.contains("tunnelPort"))
        })
    });
    let table = mesh.knitctl_status(a);
    assert!(
        table.contains("its tunnel is on UDP 8473, this cluster's on 8472"),
        "{table}"
    );

    mesh.restart_apiserver_with(b, &[]);
    mesh.wait_until("a's agent to reach b again", Duration::from_secs(40), || {
        reaching(&mesh).is_some_and(|r| (r.connected, r.total) == (1, 1))
    });
}
