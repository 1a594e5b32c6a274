//! Transparent encryption on the local mesh (`--encryption=wireguard`):
//! pod traffic between nodes of one cluster and between clusters crosses
//! the underlay bridge only inside WireGuard.
//!
//! Each server pod answers with its name, which carries a marker. A
//! capture on the underlay bridge during requests across nodes and across
//! clusters must not contain the marker, and no VXLAN may cross the bridge.
//! The same requests on a mesh without encryption put the marker in the
//! capture, so the check can fail.

use std::process::Command;
use std::time::Duration;

use knit_e2e::capture::Capture;
use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions, PodId};
use knit_testkit::process::TempDir;

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);
const MARKER: &str = "wgmarker";
const PINGS: usize = 20;

/// Requests from a pod of a's first node to a pod on a's second node and
/// to a pod of b, TCP and UDP, under a capture of the underlay bridge.
fn requests_under_capture(encrypted: bool, dir: &TempDir) -> Capture {
    let mut mesh = LocalMesh::start(MeshOptions {
        encrypted,
        ..MeshOptions::default()
    });
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let near = mesh.add_pod(A.node(1), "shop", &format!("{MARKER}-near"), &[("app", "web")]);
    let far = mesh.add_pod(B.node(0), "shop", &format!("{MARKER}-far"), &[("app", "web")]);
    for (what, to, name) in [
        ("across nodes", near, format!("{}/{MARKER}-near", A.name())),
        ("across clusters", far, format!("{}/{MARKER}-far", B.name())),
    ] {
        mesh.wait_for_hits(what, client, mesh.pod(to).ip, false, |h| {
            h.names.get(&name) == Some(&40)
        });
    }
    if encrypted {
        full_size_packets_cross_whole(&mesh, client, near);
        // Every node has the other three as WireGuard routes.
        mesh.wait_until("every node's WireGuard peers", Duration::from_secs(30), || {
            mesh.node_ids().iter().all(|n| {
                let out = mesh.node(*n).netns.ip(&["route", "show", "table", "75"]);
                String::from_utf8_lossy(&out.stdout).lines().count() == 3
            })
        });
    }
    let file = dir
        .path()
        .join(if encrypted { "encrypted.pcap" } else { "plain.pcap" });
    let capture = Capture::start(mesh.underlay(), "br0", &file);
    for to in [near, far] {
        for udp in [false, true] {
            let hits = mesh.hits(client, mesh.pod(to).ip, 20, udp);
            assert_eq!(hits.total(), 20, "udp={udp}: {hits:?}");
        }
    }
    let from = mesh.node(A.node(0)).netns.name().to_owned();
    let to = mesh.node(A.node(1)).ip.clone();
    capture.stop(&from, &to)
}

/// Full-size pings with DF from `client` to `server` on another node: the
/// pods' MTU leaves room for VXLAN and WireGuard, so each request enters
/// the WireGuard interface as one packet (with only VXLAN's 50 bytes left
/// for, the kernel would split each in two there).
fn full_size_packets_cross_whole(mesh: &LocalMesh, client: PodId, server: PodId) {
    let node = &mesh.node(A.node(0)).netns;
    let sent = || -> u64 {
        let out = node.exec("cat", &["/sys/class/net/knit_wg/statistics/tx_packets"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a count")
    };
    let size = (mesh.options().pod_mtu() - 28).to_string();
    let before = sent();
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            mesh.pod(client).netns.name(),
            "ping",
            "-q",
            "-c",
            &PINGS.to_string(),
        ])
        .args([
            "-i",
            "0.05",
            "-M",
            "do",
            "-s",
            &size,
            &mesh.pod(server).ip.to_string(),
        ])
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "full-size pings: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let packets = sent() - before;
    assert!(
        (PINGS as u64..=PINGS as u64 + 3).contains(&packets),
        "{PINGS} full-size pings entered WireGuard as {packets} packets"
    );
}

#[test]
fn pod_traffic_between_nodes_and_clusters_crosses_the_underlay_only_encrypted() {
    let dir = TempDir::new("encryption");
    let encrypted = requests_under_capture(true, &dir);
    assert!(
        !encrypted.contains(MARKER),
        "a server's answer crossed the underlay in plaintext"
    );
    assert_eq!(encrypted.packets("udp port 8472"), 0, "VXLAN outside WireGuard");
    assert!(
        encrypted.packets("udp port 51871") >= 80,
        "the requests went through WireGuard"
    );

    let plain = requests_under_capture(false, &dir);
    assert!(plain.contains(MARKER), "the capture check cannot see plaintext");
    assert!(plain.packets("udp port 8472") >= 80);
}

/// Requests from a pod on a's second node, whose agent is then stopped,
/// to a pod on a's first node, under a capture of the underlay bridge; and
/// the tunnel device's carrier errors on the stopped node.
fn requests_from_a_node_without_its_agent(strict: bool, dir: &TempDir) -> (Capture, u64) {
    let mut mesh = LocalMesh::start(MeshOptions {
        encrypted: true,
        agent_args: vec![format!("--encryption-strict={strict}")],
        ..MeshOptions::default()
    });
    let server = mesh.add_pod(A.node(0), "shop", "server", &[("app", "web")]);
    let client = mesh.add_pod(A.node(1), "shop", "client", &[("app", "client")]);
    let name = format!("{}/server", A.name());
    mesh.wait_for_hits("across nodes", client, mesh.pod(server).ip, false, |h| {
        h.names.get(&name) == Some(&40)
    });
    let node = mesh.node(A.node(1)).netns.name().to_owned();
    mesh.kill_agent(A.node(1));
    mesh.wait_until(
        "the stopped agent's WireGuard interface to go",
        Duration::from_secs(10),
        || {
            !std::process::Command::new("ip")
                .args(["-n", &node, "link", "show", "knit_wg"])
                .output()
                .is_ok_and(|o| o.status.success())
        },
    );
    let file = dir.path().join(format!("agent-down-strict-{strict}.pcap"));
    let capture = Capture::start(mesh.underlay(), "br0", &file);
    // The pod's datapath stays (fail-static); only WireGuard went with the agent.
    mesh.hits(client, mesh.pod(server).ip, 10, true);
    let to = mesh.node(A.node(0)).ip.clone();
    let capture = capture.stop(&node, &to);
    let errors = mesh
        .node(A.node(1))
        .netns
        .exec("cat", &["/sys/class/net/knit_vxlan/statistics/tx_carrier_errors"]);
    let errors = String::from_utf8_lossy(&errors.stdout)
        .trim()
        .parse()
        .expect("a count");
    (capture, errors)
}

#[test]
fn strict_mode_sends_nothing_in_plaintext_while_a_nodes_agent_is_down() {
    let dir = TempDir::new("encryption-strict");
    let (strict, dropped) = requests_from_a_node_without_its_agent(true, &dir);
    assert_eq!(
        strict.packets("udp port 8472"),
        0,
        "plaintext VXLAN in strict mode"
    );
    assert!(dropped >= 10, "the tunnel device counts the drops: {dropped}");

    // Without strict mode the same node falls back to the main table.
    let (loose, _) = requests_from_a_node_without_its_agent(false, &dir);
    assert!(
        loose.packets("udp port 8472") >= 10,
        "the check cannot see plaintext VXLAN"
    );
}
