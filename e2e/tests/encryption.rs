//! Transparent encryption on the local mesh (`--encryption=wireguard`):
//! pod traffic between nodes of one cluster and between clusters crosses
//! the underlay bridge only inside WireGuard.
//!
//! Each server pod answers with its name, which carries a marker. A
//! capture on the underlay bridge during requests across nodes and across
//! clusters must not contain the marker, and no VXLAN may cross the bridge.
//! The same requests on a mesh without encryption put the marker in the
//! capture, so the check can fail. Every agent reports its tunnels up and
//! counts no plaintext packet.
//!
//! Strict mode drops, never leaks, while a node's agent is down; and a
//! VXLAN packet forged on the underlay with a node's address is dropped
//! (only what WireGuard decrypted carries identity), while the same packet
//! reaches its pod on a mesh without encryption.

use std::process::Command;
use std::time::Duration;

use knit_e2e::capture::Capture;
use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions, PodId, SERVER_PORT, assert_no_failures};
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
        // Every agent of a reports its three tunnels up (the keepalive
        // handshakes even the one no request used).
        mesh.wait_until(
            "a's agents to report 3 tunnels up",
            Duration::from_secs(60),
            || {
                mesh.status_report(A).is_some_and(|r| {
                    r.nodes.len() == 2
                        && r.nodes.iter().all(|n| {
                            n.wireguard_tunnels.len() == 3
                                && n.wireguard_tunnels
                                    .values()
                                    .all(|t| t.up && t.last_handshake.is_some())
                        })
                })
            },
        );
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
    let capture = capture.stop(&from, &to);
    if encrypted {
        let plaintext = "knit_agent_encryption_plaintext_packets_total";
        let metrics = mesh.agent_metrics(A.node(0));
        assert!(metrics.contains(&format!("\n{plaintext} ")), "{metrics}");
        assert_eq!(mesh.agent_metric(A.node(0), plaintext), 0, "{plaintext}");
        let down = "knit_agent_wireguard_peers_without_handshake";
        assert_eq!(mesh.agent_metric(A.node(0), down), 0, "{down}");
    }
    capture
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

const FORGED: usize = 20;
/// The port db counts datagrams on.
const SINK_PORT: u16 = 7070;

/// A host on the underlay sends VXLAN datagrams to a's first node from
/// the address of a's second node (a raw socket), each carrying a UDP
/// datagram "from" that node's pod to db's sink. Returns how many reached
/// db, and how many the target node counted as `forged_tunnel_source`.
fn forged_node_packets(encrypted: bool) -> (u64, i64) {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 1,
        encrypted,
        ..MeshOptions::default()
    });
    let db = mesh.add_pod(A.node(0), "shop", "db", &[("app", "db")]);
    let api = mesh.add_pod(A.node(1), "shop", "api", &[("app", "api")]);
    let name = format!("{}/db", A.name());
    mesh.wait_for_hits("api -> db", api, mesh.pod(db).ip, false, |h| {
        h.names.get(&name) == Some(&40)
    });
    let drops = "knit_agent_drops{name=\"forged_tunnel_source\"}";
    let dropped_before = mesh.agent_metric(A.node(0), drops);
    let sink = mesh.probe_background(
        db,
        &["count", "--port", &SINK_PORT.to_string(), "--seconds", "4"],
        "sink",
    );
    std::thread::sleep(Duration::from_millis(500));
    let tunnel = format!("{}:{}", mesh.node(A.node(0)).ip, knit_agent::netdev::VXLAN_PORT);
    let inner_src = format!("{}:5555", mesh.pod(api).ip);
    let inner_dst = format!("{}:{SINK_PORT}", mesh.pod(db).ip);
    let posing_as = mesh.node(A.node(1)).ip.clone();
    let (attacker, _attacker_server) = mesh.add_outside_host("evil", "192.168.50.251");
    let sent = attacker.exec(
        &mesh.bins.probe.to_string_lossy(),
        &[
            "vxlan-send",
            "--to",
            &tunnel,
            "--vni",
            "65537",
            "--inner-src",
            &inner_src,
            "--inner-dst",
            &inner_dst,
            "--count",
            &FORGED.to_string(),
            "--outer-src",
            &posing_as,
        ],
    );
    assert!(
        String::from_utf8_lossy(&sent.stdout).contains(&format!("\"sent\":{FORGED}")),
        "{sent:?}"
    );
    let (ok, out) = { sink }.wait();
    assert!(ok, "the sink failed: {out}");
    let line = out.lines().find(|l| l.starts_with('{')).expect("count line");
    let reached = serde_json::from_str::<serde_json::Value>(line).unwrap()["count"]
        .as_u64()
        .unwrap();
    let dropped = mesh.agent_metric(A.node(0), drops) - dropped_before;
    (reached, dropped)
}

#[test]
fn a_vxlan_packet_forged_on_the_underlay_is_dropped_with_encryption_on() {
    let (reached, dropped) = forged_node_packets(true);
    assert_eq!(reached, 0, "forged packets reached db");
    assert_eq!(dropped, FORGED as i64, "the node counts every forged packet");

    // Without encryption nothing tells the forged packets from the node's
    // own: they reach db, so the check can fail.
    let (reached, _) = forged_node_packets(false);
    assert_eq!(reached, FORGED as u64, "the control's forged packets reach db");
}

/// The key node `n` of cluster `c` reports, and whether it announced a
/// next one.
fn reported_key(mesh: &LocalMesh, c: ClusterId, node: &str) -> Option<(String, bool)> {
    let report = mesh.status_report(c)?;
    let wg = report.nodes.iter().find(|n| n.node == node)?.wireguard.clone()?;
    Some((wg.public_key.to_string(), wg.next.is_some()))
}

#[test]
fn rotating_node_keys_under_steady_traffic_fails_no_request() {
    let mut mesh = LocalMesh::start(MeshOptions {
        encrypted: true,
        ..MeshOptions::default()
    });
    let (client, near, far) = mesh.client_near_far();
    let rotating = [(A, A.node(1)), (B, B.node(0))];
    let before: Vec<String> = rotating
        .iter()
        .map(|(c, n)| reported_key(&mesh, *c, &mesh.node(*n).name).expect("a key").0)
        .collect();

    let stop = TempDir::new("rotation");
    let stop = stop.path().join("stop");
    let addr = |p: PodId| std::net::SocketAddrV4::new(mesh.pod(p).ip, SERVER_PORT);
    let mut clients = vec![
        mesh.start_steady_client(client, addr(near), &stop, "a to a-n1"),
        mesh.start_steady_client(client, addr(far), &stop, "a to b-n0"),
    ];
    std::thread::sleep(Duration::from_secs(2));
    // On demand: the file next to the key.
    for (_, n) in rotating {
        let key = mesh.node(n).cni_state_dir.with_file_name("wireguard.key.rotate");
        std::fs::write(key, "").expect("ask for a rotation");
    }
    mesh.wait_until(
        "both nodes to announce a next key",
        Duration::from_secs(10),
        || {
            rotating
                .iter()
                .all(|(c, n)| reported_key(&mesh, *c, &mesh.node(*n).name).is_some_and(|(_, next)| next))
        },
    );
    mesh.wait_until(
        "both nodes to take their new key",
        Duration::from_secs(30),
        || {
            rotating.iter().zip(&before).all(|((c, n), old)| {
                reported_key(&mesh, *c, &mesh.node(*n).name).is_some_and(|(key, next)| key != *old && !next)
            })
        },
    );
    // New handshakes under the new keys, while the clients go on.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&stop, "").unwrap();
    assert_no_failures(&mesh, &mut clients, 100, "while two nodes rotated their keys");

    for to in [near, far] {
        let hits = mesh.hits(client, mesh.pod(to).ip, 20, true);
        assert_eq!(hits.total(), 20, "after the rotation: {hits:?}");
    }
}

/// Cluster b runs without encryption while a encrypts (not strict): pods
/// still reach each other both ways, in plaintext; every agent on each
/// side reports the other's encryption as a mismatch (the ClusterMeshPeer
/// condition's source), and a's nodes count the plaintext they send.
#[test]
fn a_peer_cluster_without_encryption_is_reported_and_its_plaintext_counted() {
    let mut mesh = LocalMesh::start(MeshOptions {
        encrypted: true,
        plaintext_clusters: vec![B],
        ..MeshOptions::default()
    });
    let a_pod = mesh.add_pod(A.node(0), "shop", "a-pod", &[("app", "web")]);
    let b_pod = mesh.add_pod(B.node(0), "shop", "b-pod", &[("app", "web")]);
    for (from, to, name) in [
        (a_pod, b_pod, format!("{}/b-pod", B.name())),
        (b_pod, a_pod, format!("{}/a-pod", A.name())),
    ] {
        mesh.wait_for_hits("across the mixed mesh", from, mesh.pod(to).ip, false, |h| {
            h.names.get(&name) == Some(&40)
        });
    }
    mesh.wait_until(
        "every agent to report the mismatch",
        Duration::from_secs(30),
        || {
            let side = |c: ClusterId, peer: ClusterId, theirs: &str| {
                mesh.status_report(c).is_some_and(|r| {
                    r.nodes.len() == 2
                        && r.nodes.iter().all(|n| {
                            n.peers.get(&peer.name()).is_some_and(|v| {
                                v.encryption_mismatch.as_deref() == Some(theirs) && !v.connected
                            })
                        })
                })
            };
            side(A, B, "none") && side(B, A, "wireguard")
        },
    );
    let plaintext = "knit_agent_encryption_plaintext_packets_total";
    mesh.wait_until("a-n0 to count its plaintext", Duration::from_secs(10), || {
        mesh.agent_metric(A.node(0), plaintext) >= 40
    });
}
