//! Routing modes on the local mesh (`--routing-mode`): tunnel, native,
//! hybrid, and a mixed mesh (cluster-a native, cluster-b tunnel).
//!
//! In each mode: pods reach each other across nodes and across clusters,
//! both ways, over TCP and UDP; a global Service spreads over both
//! clusters; a NetworkPolicy that admits only `app=client` pods of both
//! clusters admits the clients and refuses another pod, which it can only
//! do if the server's node learns the client's identity from its address
//! (nothing masqueraded it, nothing lost it without a tunnel's VNI). A
//! capture on the underlay bridge then proves the mode: a native hop
//! carries the pods' own TCP packets and no VXLAN with their addresses
//! inside; a tunnel hop carries only VXLAN.
//!
//! A node whose pod CIDR no route covers (here: reached through a router
//! that does not know pod CIDRs) is reported and counted; native mode
//! drops its traffic as `no_route` rather than sending it into the void,
//! hybrid mode tunnels to it.

use std::net::Ipv4Addr;
use std::time::Duration;

use knit_e2e::capture::Capture;
use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions, PodId};
use knit_kvstore::records::RoutingMode::{self, Hybrid, Native, Tunnel};
use knit_testkit::process::TempDir;

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

/// Pods of both clusters labelled `app=client` may reach `app=web`.
const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions:\n        - {key: app, operator: In, values: [client]}\n        - {key: knit.dev/cluster, operator: In, values: [cluster-a, cluster-b]}\n";

/// What crossed the underlay bridge while the client sent 20 TCP requests
/// to `to`: (VXLAN packets with `to`'s address inside, bare TCP packets
/// to or from `to`).
fn capture_hop(mesh: &LocalMesh, dir: &TempDir, client: PodId, to: PodId, tag: &str) -> (usize, usize) {
    let file = dir.path().join(format!("{tag}.pcap"));
    let capture = Capture::start(mesh.underlay(), "br0", &file);
    let hits = mesh.hits(client, mesh.pod(to).ip, 20, false);
    assert_eq!(hits.total(), 20, "{tag}: {hits:?}");
    let from = mesh.node(A.node(0)).netns.name().to_owned();
    let sentinel_to = mesh.node(A.node(1)).ip.clone();
    let capture = capture.stop(&from, &sentinel_to);
    let ip = u32::from(mesh.pod(to).ip);
    // The inner IPv4 header starts 30 bytes into the UDP datagram (UDP 8,
    // VXLAN 8, inner Ethernet 14); its addresses at 12 and 16 in it.
    let vxlan = capture.packets(&format!(
        "udp port 8472 and (udp[42:4] = {ip:#010x} or udp[46:4] = {ip:#010x})"
    ));
    let bare = capture.packets(&format!("tcp and host {}", mesh.pod(to).ip));
    (vxlan, bare)
}

/// Runs the scenarios of the module doc on a mesh whose clusters route as
/// `modes`; `near_native` / `far_native` say how a's first node must reach
/// a's second node and b's first node.
fn mode_works_and_the_capture_proves_it(modes: &[RoutingMode], near_native: bool, far_native: bool) {
    let mut mesh = LocalMesh::start(MeshOptions {
        routing_modes: modes.to_vec(),
        ..MeshOptions::default()
    });
    let label = format!("{modes:?}");
    let (client, near, far) = mesh.client_near_far();
    let client_b = mesh.add_pod(B.node(1), "shop", "client-b", &[("app", "client")]);
    let other = mesh.add_pod(A.node(0), "shop", "other", &[("app", "other")]);

    // Both ways, both protocols.
    for (from, to) in [(client, near), (client, far), (client_b, near), (client_b, far)] {
        for udp in [false, true] {
            let h = mesh.hits(from, mesh.pod(to).ip, 20, udp);
            assert_eq!(h.total(), 20, "{label} {from:?} -> {to:?} udp={udp}: {h:?}");
        }
    }

    // A global Service over both clusters.
    let vip = Ipv4Addr::new(10, 96, 1, 10);
    mesh.deploy_service(A, &GlobalService::web(vip, vec![near]));
    mesh.deploy_service(B, &GlobalService::web(Ipv4Addr::new(10, 96, 2, 10), vec![far]));
    mesh.wait_for_hits(
        &format!("{label}: backends of both clusters"),
        client,
        vip,
        false,
        |h| h.names.len() == 2,
    );

    // Identity from the source address: the clients of both clusters pass,
    // the other pod does not.
    mesh.write_manifest(A, "policy-web.yaml", POLICY);
    mesh.write_manifest(B, "policy-web.yaml", POLICY);
    mesh.wait_until(
        &format!("{label}: the policy to refuse other"),
        Duration::from_secs(30),
        || {
            mesh.hits(other, mesh.pod(near).ip, 1, false).total() == 0
                && mesh.hits(other, mesh.pod(far).ip, 1, false).total() == 0
        },
    );
    for (from, to) in [(client, near), (client, far), (client_b, near), (client_b, far)] {
        let h = mesh.hits(from, mesh.pod(to).ip, 20, false);
        assert_eq!(
            h.total(),
            20,
            "{label}: the policy refused a client {from:?} -> {to:?}: {h:?}"
        );
    }

    let native_nodes = mesh.agent_metric(A.node(0), "knit_agent_native_nodes ");
    let expected = usize::from(near_native) + if far_native { 2 } else { 0 };
    assert_eq!(
        native_nodes, expected as i64,
        "{label}: nodes a-n1 reaches natively"
    );

    let dir = TempDir::new("routing-capture");
    for (to, native, hop) in [(near, near_native, "near"), (far, far_native, "far")] {
        let (vxlan, bare) = capture_hop(&mesh, &dir, client, to, hop);
        eprintln!("{label} {hop}: {vxlan} VXLAN packets, {bare} bare TCP packets on the underlay");
        if native {
            assert!(
                vxlan == 0 && bare >= 40,
                "{label} {hop} must be native: {vxlan} VXLAN, {bare} bare"
            );
        } else {
            assert!(
                vxlan >= 40 && bare == 0,
                "{label} {hop} must be tunnelled: {vxlan} VXLAN, {bare} bare"
            );
        }
    }
}

#[test]
fn tunnel_mode_tunnels_every_hop() {
    mode_works_and_the_capture_proves_it(&[Tunnel, Tunnel], false, false);
}

#[test]
fn native_mode_routes_every_hop_between_native_clusters() {
    mode_works_and_the_capture_proves_it(&[Native, Native], true, true);
}

#[test]
fn hybrid_mode_is_native_inside_a_cluster_and_tunnels_between_clusters() {
    mode_works_and_the_capture_proves_it(&[Hybrid, Hybrid], true, false);
}

#[test]
fn a_native_cluster_and_a_tunnel_cluster_tunnel_between_them() {
    mode_works_and_the_capture_proves_it(&[Native, Tunnel], true, false);
}

/// Node a-n0 reaches the rest of the underlay only through a router (a's
/// control-plane namespace) that knows no pod CIDR: its segment route
/// goes, the router alone stays on-link. The kernel then refuses the
/// direct route to a-n1's pod CIDR (gateway not on-link), and nothing
/// else covers it.
fn route_a_n0_through_a_router(mesh: &LocalMesh) {
    let router = &mesh.cluster(A).cp;
    for setting in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.eth0.send_redirects=0",
    ] {
        router.exec("sysctl", &["-qw", setting]);
    }
    let n0 = &mesh.node(A.node(0)).netns;
    let router_ip = mesh.cluster(A).cp_ip.as_str();
    n0.ip(&["route", "add", &format!("{router_ip}/32"), "dev", "eth0"]);
    n0.ip(&["route", "replace", "192.168.50.0/24", "via", router_ip]);
    n0.ip(&["route", "del", &mesh.node(A.node(1)).pod_cidr]);
}

#[test]
fn an_unroutable_node_is_reported_dropped_in_native_mode_and_tunnelled_in_hybrid() {
    for mode in [Native, Hybrid] {
        let mut mesh = LocalMesh::start(MeshOptions {
            clusters: 1,
            routing_modes: vec![mode],
            ..MeshOptions::default()
        });
        let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
        let web = mesh.add_pod(A.node(1), "shop", "web", &[("app", "web")]);
        let name = format!("{}/web", A.name());
        mesh.wait_for_hits("natively at first", client, mesh.pod(web).ip, false, |h| {
            h.names.get(&name) == Some(&40)
        });
        assert_eq!(mesh.agent_metric(A.node(0), "knit_agent_native_nodes "), 1);

        route_a_n0_through_a_router(&mesh);
        mesh.wait_until(
            &format!("{mode}: a-n0 to report a-n1 unroutable"),
            Duration::from_secs(30),
            || mesh.agent_metric(A.node(0), "knit_agent_native_unroutable_nodes ") == 1,
        );
        assert!(
            mesh.logs()
                .contains("no route but the default covers the node's pod CIDRs"),
            "{mode}: the agent names the unroutable node"
        );
        let no_route = r#"knit_agent_drops{name="no_route"} "#;
        let before = mesh.agent_metric(A.node(0), no_route);
        let h = mesh.hits(client, mesh.pod(web).ip, 10, false);
        match mode {
            Native => {
                assert_eq!(
                    h.total(),
                    0,
                    "native: an unroutable node's pods are not reached: {h:?}"
                );
                mesh.wait_until("the drops to be counted", Duration::from_secs(10), || {
                    mesh.agent_metric(A.node(0), no_route) > before
                });
            }
            _ => {
                assert_eq!(h.total(), 10, "hybrid: the tunnel takes over: {h:?}");
                assert_eq!(mesh.agent_metric(A.node(0), "knit_agent_native_nodes "), 0);
            }
        }
    }
}
