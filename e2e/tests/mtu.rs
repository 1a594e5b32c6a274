//! The pod MTU and the tunnel: on an underlay of MTU 1400 (as on many
//! cloud VPN and overlay-on-overlay setups), Knit's default conflist gives
//! pods 1400 − 50 (VXLAN's overhead), so a full-size TCP transfer across
//! nodes and across clusters crosses the tunnel in whole packets: not one
//! outer packet is fragmented on any node. With the pods at 1500 the same
//! transfer fragments every full-size packet (or, where fragments are
//! dropped, stalls). Runs as root; iperf3 from Debian.

use std::process::{Child, Command, Stdio};

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions, NodeId, PodId};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

/// A process killed (by PID) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Ip: FragCreates` and `Ip: ReasmReqds` of node `n`'s namespace.
fn fragments(mesh: &LocalMesh, n: NodeId) -> (u64, u64) {
    let out = mesh.node(n).netns.exec("cat", &["/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap_or_default(), ip.next().unwrap_or_default());
    let field = |want: &str| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == want)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    (field("FragCreates"), field("ReasmReqds"))
}

fn eth0_mtu(mesh: &LocalMesh, p: PodId) -> u64 {
    let out = mesh.pod(p).netns.ip(&["-j", "link", "show", "dev", "eth0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["mtu"].as_u64().unwrap()
}

/// 16 MiB from `from` to `to` with iperf3; panics with its output when it
/// fails.
fn transfer(mesh: &LocalMesh, from: PodId, to: PodId) {
    let server = Killed(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                mesh.pod(to).netns.name(),
                "iperf3",
                "-s",
                "-1",
                "-p",
                "5201",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    let ip = mesh.pod(to).ip.to_string();
    let mut last = String::new();
    for _ in 0..50 {
        let out = mesh.pod(from).netns.exec_status(
            "iperf3",
            &["-c", &ip, "-p", "5201", "-n", "16M", "--connect-timeout", "2000"],
        );
        if out.status.success() {
            drop(server);
            return;
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!(
        "iperf3 {} -> {} failed: {last}",
        mesh.pod(from).name,
        mesh.pod(to).name
    );
}

#[test]
fn full_size_transfers_cross_a_1400_byte_underlay_unfragmented() {
    let mut mesh = LocalMesh::start(MeshOptions {
        underlay_mtu: 1400,
        ..MeshOptions::default()
    });
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let other_node = mesh.add_pod(A.node(1), "shop", "web-a", &[("app", "web")]);
    let other_cluster = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    for p in [client, other_node, other_cluster] {
        assert_eq!(
            eth0_mtu(&mesh, p),
            1350,
            "{}: the underlay's 1400 less VXLAN's 50",
            mesh.pod(p).name
        );
    }
    for to in [other_node, other_cluster] {
        let name = format!("{}/{}", mesh.pod(to).node.cluster.name(), mesh.pod(to).name);
        mesh.wait_for_hits(
            &format!("client -> {name}"),
            client,
            mesh.pod(to).ip,
            false,
            |h| h.names.get(&name) == Some(&40),
        );
    }
    let nodes = [A.node(0), A.node(1), B.node(0)];
    let before: Vec<_> = nodes.iter().map(|n| fragments(&mesh, *n)).collect();
    transfer(&mesh, client, other_node);
    transfer(&mesh, client, other_cluster);
    transfer(&mesh, other_cluster, client);
    let after: Vec<_> = nodes.iter().map(|n| fragments(&mesh, *n)).collect();
    assert_eq!(
        before, after,
        "no node fragmented or reassembled a packet (FragCreates, ReasmReqds per node)"
    );
}

/// On a node where Knit is chained into a CNI that leaves pods at the
/// underlay's full MTU (kindnet's conflist says 1500), the agent counts
/// and names them; pods of Knit's default conflist are not counted.
#[test]
fn a_chained_cni_with_full_size_pods_is_reported() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 1,
        nodes: 1,
        ..MeshOptions::default()
    });
    let node = A.node(0);
    // The underlay's MTU is the default route's interface's.
    mesh.node(node)
        .netns
        .ip(&["route", "replace", "default", "dev", "eth0"]);
    let metric = "knit_agent_pods_over_tunnel_mtu";
    let fits = mesh.add_pod(node, "shop", "fits", &[("app", "web")]);
    assert_eq!(eth0_mtu(&mesh, fits), 1450);
    mesh.wait_until(
        "the agent to check the pod",
        std::time::Duration::from_secs(20),
        || {
            mesh.agent_metrics(node)
                .lines()
                .any(|l| l == format!("{metric} 0"))
        },
    );

    let default = mesh.node(node).cni.conflist.clone();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cni/tests/fixtures/kindnet/10-kindnet.conflist");
    let mut kindnet: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    kindnet["plugins"][0]["ipam"] = default["plugins"][0]["ipam"].clone();
    let state = std::path::PathBuf::from(default["plugins"][2]["stateDir"].as_str().unwrap());
    mesh.set_conflist(node, knit_cni::conflist::chain(&kindnet, &state).unwrap());
    let big = mesh.add_pod(node, "shop", "big", &[("app", "web")]);
    assert_eq!(eth0_mtu(&mesh, big), 1500);
    mesh.wait_until(
        "the agent to report the full-size pod",
        std::time::Duration::from_secs(20),
        || mesh.agent_metric(node, metric) == 1,
    );
}

/// What `ip route get <to>` says in pod `p`'s namespace.
fn route_to(mesh: &LocalMesh, p: PodId, to: PodId) -> String {
    let out = mesh
        .pod(p)
        .netns
        .ip(&["route", "get", &mesh.pod(to).ip.to_string()]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// In hybrid routing the MTU is per path: pods keep the underlay's full
/// 1400 (native hops within a cluster carry it whole), and the agent gives
/// each pod a route with 1400 − 50 to the other cluster's pod CIDRs, which
/// the tunnel carries. Full-size transfers both ways, natively and through
/// the tunnel, fragment nothing on any node.
#[test]
fn hybrid_routing_gives_native_paths_the_full_mtu_and_tunnel_paths_less() {
    use knit_kvstore::records::RoutingMode::Hybrid;
    let mut mesh = LocalMesh::start(MeshOptions {
        underlay_mtu: 1400,
        routing_modes: vec![Hybrid, Hybrid],
        ..MeshOptions::default()
    });
    let (client, near, far) = mesh.client_near_far();
    for p in [client, near, far] {
        assert_eq!(
            eth0_mtu(&mesh, p),
            1400,
            "{}: the underlay's full MTU",
            mesh.pod(p).name
        );
    }
    mesh.wait_until(
        "the routes into the tunnel",
        std::time::Duration::from_secs(30),
        || {
            route_to(&mesh, client, far).contains("mtu 1350")
                && route_to(&mesh, far, client).contains("mtu 1350")
        },
    );
    let native = route_to(&mesh, client, near);
    assert!(
        !native.contains("mtu"),
        "to a pod of the same cluster: the device's 1400: {native}"
    );
    let nodes = [A.node(0), A.node(1), B.node(0)];
    let before: Vec<_> = nodes.iter().map(|n| fragments(&mesh, *n)).collect();
    transfer(&mesh, client, near);
    transfer(&mesh, near, client);
    transfer(&mesh, client, far);
    transfer(&mesh, far, client);
    let after: Vec<_> = nodes.iter().map(|n| fragments(&mesh, *n)).collect();
    assert_eq!(
        before, after,
        "no node fragmented or reassembled a packet (FragCreates, ReasmReqds per node)"
    );
}
