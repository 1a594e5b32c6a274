//! The datapath, for real: two clusters of two nodes each in network
//! namespaces, knit-agent on every node, packets between pod namespaces.
//! Runs as root (CI does); never skipped.

use std::net::Ipv4Addr;
use std::time::Duration;

use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions, NodeId};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

/// Knit's tc filters (netlink mode, handle "KN" = 0x4b4e) on `dev` of
/// node `n`, as `tc -j filter show` lists them.
fn knit_filters(mesh: &LocalMesh, n: NodeId, dev: &str, direction: &str) -> usize {
    let out = mesh
        .node(n)
        .netns
        .exec("tc", &["-j", "filter", "show", "dev", dev, direction]);
    let filters: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    filters
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter(|f| f["kind"] == "bpf" && f["options"]["handle"] == "0x4b4e")
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn routing_load_balancing_affinity_and_agent_restart_with_tcx() {
    routing_load_balancing_affinity_and_agent_restart("tcx");
}

/// The attach mode of kernels before 6.6, forced on this one.
#[test]
fn routing_load_balancing_affinity_and_agent_restart_with_netlink_tc() {
    routing_load_balancing_affinity_and_agent_restart("netlink");
}

fn routing_load_balancing_affinity_and_agent_restart(tc_attach: &str) {
    let mut mesh = LocalMesh::start(MeshOptions {
        agent_args: vec![format!("--tc-attach={tc_attach}")],
        ..MeshOptions::default()
    });
    let netlink = usize::from(tc_attach == "netlink");
    let (a, b) = (A.name(), B.name());
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let a_same_node = mesh.add_pod(A.node(0), "shop", "web-a1", &[("app", "web")]);
    let a_other_node = mesh.add_pod(A.node(1), "shop", "web-a2", &[("app", "web")]);
    let b_web1 = mesh.add_pod(B.node(0), "shop", "web-b1", &[("app", "web")]);
    let b_web2 = mesh.add_pod(B.node(1), "shop", "web-b2", &[("app", "web")]);
    let b_client = mesh.add_pod(B.node(1), "shop", "client-b", &[("app", "client")]);

    // Pod to pod: same node, across nodes, across clusters, both directions.
    for (from, to) in [
        (client, a_same_node),
        (client, a_other_node),
        (client, b_web1),
        (client, b_web2),
        (b_client, a_other_node),
        (b_client, b_web1),
    ] {
        let ip = mesh.pod(to).ip;
        let name = format!("{}/{}", mesh.pod(to).node.cluster.name(), mesh.pod(to).name);
        mesh.wait_for_hits(
            &format!("{} -> {name}", mesh.pod(from).name),
            from,
            ip,
            false,
            |h| h.names.get(&name) == Some(&40),
        );
    }

    // A global service with backends in both clusters: TCP and UDP, every
    // backend used, replies carry the VIP.
    let vip_a = Ipv4Addr::new(10, 96, 1, 10);
    let vip_b = Ipv4Addr::new(10, 96, 2, 10);
    let svc = |vip, backends, affinity| GlobalService {
        namespace: "shop",
        name: "web",
        vip,
        backends,
        export: true,
        import: true,
        affinity,
        not_ready: Vec::new(),
        spec_extra: "",
    };
    mesh.deploy_service(A, &svc(vip_a, vec![a_same_node, a_other_node], "none"));
    mesh.deploy_service(B, &svc(vip_b, vec![b_web1, b_web2], "none"));
    let h = mesh.wait_for_hits("the VIP to reach all four backends", client, vip_a, false, |h| {
        h.names.len() == 4 && h.errors.is_empty()
    });
    let many = mesh.hits(client, vip_a, 400, false);
    eprintln!("400 TCP connections to {vip_a}: {:?}", many.names);
    assert_eq!(many.total(), 400, "{many:?}");
    assert_eq!(many.peer_mismatch, 0, "getpeername must show the VIP: {many:?}");
    for (name, n) in &many.names {
        assert!(
            (50..=150).contains(n),
            "{name} got {n} of 400 (random choice over 4): {many:?}"
        );
    }
    assert!(h.from_cluster(&a) > 0 && h.from_cluster(&b) > 0);
    let udp = mesh.wait_for_hits("UDP through the VIP", client, vip_a, true, |h| h.names.len() == 4);
    assert_eq!(
        udp.peer_mismatch, 0,
        "UDP replies must come from the VIP: {udp:?}"
    );
    let from_b = mesh.wait_for_hits("cluster b's VIP", b_client, vip_b, false, |h| h.names.len() == 4);
    assert_eq!(from_b.peer_mismatch, 0);

    // Affinity local: only cluster a's backends; when none is ready, fall
    // back to cluster b.
    mesh.deploy_service(A, &svc(vip_a, vec![a_same_node, a_other_node], "local"));
    let h = mesh.wait_for_hits("affinity local", client, vip_a, false, |h| {
        h.from_cluster(&b) == 0
    });
    assert_eq!(h.from_cluster(&a), 40, "{h:?}");
    mesh.deploy_service(A, &svc(vip_a, vec![], "local"));
    let h = mesh.wait_for_hits("local fallback to remote", client, vip_a, false, |h| {
        h.from_cluster(&b) == 40
    });
    assert_eq!(h.names.len(), 2, "{h:?}");
    mesh.deploy_service(A, &svc(vip_a, vec![a_same_node, a_other_node], "remote"));
    mesh.wait_for_hits("affinity remote", client, vip_a, false, |h| {
        h.from_cluster(&b) == 40
    });
    mesh.deploy_service(A, &svc(vip_a, vec![a_same_node, a_other_node], "none"));
    mesh.wait_for_hits("affinity none", client, vip_a, false, |h| h.names.len() == 4);

    // Programs sit where the mode puts them: netlink filters (one per hook)
    // only in netlink mode.
    let pod_dev = knit_cni::attachment::AttachmentStore::new(&mesh.node(A.node(0)).cni_state_dir)
        .get(&mesh.pod(client).sandbox.container_id, "eth0")
        .unwrap()
        .expect("the client's attachment")
        .host_interface;
    assert_eq!(knit_filters(&mesh, A.node(0), "knit_vxlan", "ingress"), netlink);
    assert_eq!(knit_filters(&mesh, A.node(0), &pod_dev, "ingress"), netlink);
    assert_eq!(knit_filters(&mesh, A.node(0), &pod_dev, "egress"), netlink);

    // An agent restart keeps an open TCP connection (to a pod on another
    // cluster, through the tunnel) working, and the maps are kept.
    let target = format!("{}:8080", mesh.pod(b_web1).ip);
    let mut held = mesh.probe_background(client, &["hold", "--to", &target, "--seconds", "6"], "hold");
    std::thread::sleep(Duration::from_millis(800));
    mesh.kill_agent(A.node(0));
    std::thread::sleep(Duration::from_secs(1));
    let during = mesh.hits(client, vip_a, 20, false);
    assert_eq!(
        during.total(),
        20,
        "new connections work while the agent is down: {during:?}"
    );
    assert_eq!(
        knit_filters(&mesh, A.node(0), "knit_vxlan", "ingress"),
        netlink,
        "the filters outlive the agent"
    );
    mesh.start_agent(A.node(0));
    let (ok, out) = held.wait();
    assert!(ok, "the held connection broke across the agent restart: {out}");
    assert!(out.contains("ok "), "{out}");
    mesh.wait_for_hits("service after the restart", client, vip_a, false, |h| {
        h.names.len() == 4
    });
    assert_eq!(
        knit_filters(&mesh, A.node(0), &pod_dev, "ingress"),
        netlink,
        "the restarted agent replaced its programs in place, adding none"
    );
}

fn policy_denied_drops(mesh: &LocalMesh, n: NodeId) -> u64 {
    mesh.agent_metrics(n)
        .lines()
        .find(|l| l.starts_with("knit_agent_drops{name=\"policy_denied\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn network_policy_selects_peers_by_cluster() {
    let mut mesh = LocalMesh::start(MeshOptions::default());
    let web = mesh.add_pod(A.node(0), "shop", "web", &[("app", "web")]);
    let fe_a = mesh.add_pod(A.node(1), "shop", "frontend-a", &[("app", "frontend")]);
    let fe_b = mesh.add_pod(B.node(0), "shop", "frontend-b", &[("app", "frontend")]);
    let other_a = mesh.add_pod(A.node(0), "shop", "other", &[("app", "other")]);
    let web_ip = mesh.pod(web).ip;
    let web_name = format!("{}/web", A.name());
    for from in [fe_a, fe_b, other_a] {
        mesh.wait_for_hits("open access before any policy", from, web_ip, false, |h| {
            h.names.get(&web_name) == Some(&40)
        });
    }

    mesh.write_manifest(
        A,
        "policy-web.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-from-frontend-a\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: frontend, knit.dev/cluster: cluster-a}\n    ports:\n    - {protocol: TCP, port: 8080}\n",
    );
    mesh.wait_until(
        "cluster-b's frontend to be denied",
        Duration::from_secs(30),
        || mesh.hits(fe_b, web_ip, 1, false).total() == 0,
    );
    let allowed = mesh.hits(fe_a, web_ip, 40, false);
    assert_eq!(
        allowed.names.get(&web_name),
        Some(&40),
        "app=frontend from cluster-a: {allowed:?}"
    );
    let denied_b = mesh.hits(fe_b, web_ip, 3, false);
    assert_eq!(
        denied_b.total(),
        0,
        "app=frontend from cluster-b must be dropped: {denied_b:?}"
    );
    let denied_other = mesh.hits(other_a, web_ip, 3, false);
    assert_eq!(
        denied_other.total(),
        0,
        "app=other from cluster-a must be dropped: {denied_other:?}"
    );
    assert!(
        policy_denied_drops(&mesh, A.node(0)) > 0,
        "drops are counted per reason"
    );

    // The selected pod's own connections still get their replies, from a
    // cluster its policy does not admit.
    let out = mesh.hits(web, mesh.pod(fe_b).ip, 20, false);
    assert_eq!(
        out.total(),
        20,
        "replies of flows the selected pod opened pass: {out:?}"
    );

    // Removing the policy opens the pod again.
    mesh.remove_manifest(A, "policy-web.yaml");
    mesh.wait_for_hits("access after the policy is removed", fe_b, web_ip, false, |h| {
        h.total() == 40
    });
}

/// Whether this kernel makes WireGuard interfaces (tried in a namespace of
/// the test's own).
fn kernel_has_wireguard() -> bool {
    let scratch = knit_e2e::netns::Netns::new("wgprobe");
    std::process::Command::new("ip")
        .args([
            "-n",
            scratch.name(),
            "link",
            "add",
            "wgprobe",
            "type",
            "wireguard",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// With encryption on, the agent takes the kernel's WireGuard where the
/// kernel has one (Debian's 6.1 and 5.10 under `make test-kernels`) and
/// boringtun on TUN where it has none (this machine's): pods reach each
/// other across nodes and clusters, and every tunnel of a node handshakes,
/// on either path.
#[test]
fn encryption_takes_the_kernels_wireguard_where_there_is_one() {
    let kernel = kernel_has_wireguard();
    // Set by `make test-kernels` in VMs whose kernel has WireGuard.
    if std::env::var_os("KNIT_EXPECT_KERNEL_WIREGUARD").is_some() {
        assert!(kernel, "this kernel was to have WireGuard");
    }
    let mut mesh = LocalMesh::start(MeshOptions {
        encrypted: true,
        ..MeshOptions::default()
    });
    mesh.client_near_far();
    let link = mesh.node(A.node(0)).netns.ip(&["-d", "link", "show", "knit_wg"]);
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert_eq!(
        link.contains("wireguard"),
        kernel,
        "kernel WireGuard {}: {link}",
        if kernel { "present" } else { "absent" }
    );
    assert_eq!(link.contains("tun"), !kernel, "{link}");
    mesh.wait_until("a-n0's 3 tunnels to handshake", Duration::from_secs(60), || {
        mesh.status_report(A).is_some_and(|r| {
            r.nodes.iter().any(|n| {
                n.node == mesh.node(A.node(0)).name
                    && n.wireguard_tunnels.len() == 3
                    && n.wireguard_tunnels.values().all(|t| t.up)
            })
        })
    });
}

/// Packets node `n` sent into its VXLAN device.
fn tunnel_tx_packets(mesh: &LocalMesh, n: NodeId) -> u64 {
    let out = mesh
        .node(n)
        .netns
        .exec("cat", &["/sys/class/net/knit_vxlan/statistics/tx_packets"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Cluster a routes natively, cluster b in hybrid mode: pods of a node's
/// own cluster are reached through the FIB (`bpf_fib_lookup`,
/// `bpf_redirect_neigh`) and taken in by `from_netdev`, with no packet
/// into the tunnel device; the clusters reach each other through the
/// tunnel (b is not native). The capture-based proof is
/// `e2e/tests/routing.rs`; this one needs no tcpdump, so it also runs on
/// the kernels of `make test-kernels`.
#[test]
fn native_and_hybrid_routing_bypass_the_tunnel_inside_a_cluster() {
    use knit_kvstore::records::RoutingMode::{Hybrid, Native};
    let mut mesh = LocalMesh::start(MeshOptions {
        routing_modes: vec![Native, Hybrid],
        ..MeshOptions::default()
    });
    let (client, near, far) = mesh.client_near_far();
    let client_b = mesh.add_pod(B.node(1), "shop", "client-b", &[("app", "client")]);
    for n in [A.node(0), B.node(1)] {
        assert_eq!(mesh.agent_metric(n, "knit_agent_native_nodes "), 1, "{n:?}");
    }
    let before = tunnel_tx_packets(&mesh, A.node(0));
    for udp in [false, true] {
        let h = mesh.hits(client, mesh.pod(near).ip, 20, udp);
        assert_eq!(h.total(), 20, "a-n0 -> a-n1 natively, udp={udp}: {h:?}");
    }
    assert_eq!(
        tunnel_tx_packets(&mesh, A.node(0)),
        before,
        "no packet to a pod of the same cluster went into the tunnel"
    );
    let h = mesh.hits(client, mesh.pod(far).ip, 20, false);
    assert_eq!(h.total(), 20, "a -> b through the tunnel: {h:?}");
    assert!(tunnel_tx_packets(&mesh, A.node(0)) >= before + 20);
    let near_b = mesh.add_pod(B.node(0), "shop", "near-b", &[("app", "web")]);
    let before = tunnel_tx_packets(&mesh, B.node(1));
    let h = mesh.hits(client_b, mesh.pod(near_b).ip, 20, false);
    assert_eq!(h.total(), 20, "hybrid b-n1 -> b-n0: {h:?}");
    assert_eq!(
        tunnel_tx_packets(&mesh, B.node(1)),
        before,
        "hybrid inside b: no tunnel"
    );
    let h = mesh.hits(client_b, mesh.pod(near).ip, 20, false);
    assert_eq!(h.total(), 20, "b -> a through the tunnel: {h:?}");
}
