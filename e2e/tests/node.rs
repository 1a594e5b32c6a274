//! What a pod on a real node needs beyond the mesh, with pods made only by
//! the CNI (`ptp` + `host-local` + `portmap` + `knit-cni`): the node and
//! its pods reach each other (kubelet probes, hostNetwork pods), pods reach
//! a host outside the mesh masqueraded, a plain ClusterIP Service keeps
//! working through the host's DNAT (kube-proxy's stand-in), and an agent
//! that was down while pods came and went catches up, with tc programs
//! attached either way (TCX, netlink). Runs as root.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions, PodId, SERVER_PORT};
use knit_e2e::netns::Netns;

const A: ClusterId = ClusterId(0);
const NODE_PORT: u16 = 9090;

fn one_cluster() -> LocalMesh {
    one_cluster_attached_with("auto")
}

/// One cluster whose agents attach tc programs as `tc_attach` says.
fn one_cluster_attached_with(tc_attach: &str) -> LocalMesh {
    LocalMesh::start(MeshOptions {
        clusters: 1,
        nodes: 2,
        agent_args: vec![format!("--tc-attach={tc_attach}")],
        ..MeshOptions::default()
    })
}

fn pod_addr(mesh: &LocalMesh, p: PodId) -> SocketAddrV4 {
    SocketAddrV4::new(mesh.pod(p).ip, SERVER_PORT)
}

#[test]
fn node_and_outside_reach_pods_and_back() {
    let mut mesh = one_cluster();
    let web = mesh.add_pod(A.node(0), "shop", "web", &[("app", "web")]);
    let client = mesh.add_pod(A.node(1), "shop", "client", &[("app", "client")]);
    let node0 = mesh.node(A.node(0)).netns.name().to_owned();
    let node0_ip: Ipv4Addr = mesh.node(A.node(0)).ip.parse().unwrap();
    let web_name = format!("{}/web", A.name());
    mesh.wait_for_hits("pod to pod across nodes", client, mesh.pod(web).ip, false, |h| {
        h.names.get(&web_name) == Some(&40)
    });

    // Node -> pod (kubelet probes) and pod -> node (a hostNetwork server).
    let from_node = mesh.hits_from(&node0, pod_addr(&mesh, web), 20);
    assert_eq!(
        from_node.names.get(&web_name),
        Some(&20),
        "node -> pod: {from_node:?}"
    );
    let _host_server = mesh.serve_in(&node0, "node/a1", NODE_PORT);
    let node_addr = SocketAddrV4::new(node0_ip, NODE_PORT);
    mesh.wait_until("the node's server to listen", Duration::from_secs(10), || {
        mesh.hits_from(&node0, node_addr, 1).total() == 1
    });
    let to_node = mesh.hits_to(web, node_addr, 20, false);
    assert_eq!(
        to_node.names.get("node/a1"),
        Some(&20),
        "pod -> its node: {to_node:?}"
    );
    let to_other_node = mesh.hits_to(client, node_addr, 20, false);
    assert_eq!(
        to_other_node.names.get("node/a1"),
        Some(&20),
        "pod -> another node: {to_other_node:?}"
    );

    // Pod -> outside: the outside host has no route to pod CIDRs, so every
    // answer proves the request was masqueraded and the reply un-NATed.
    let (ext, _ext_server) = mesh.add_outside_host("inet", "192.168.50.250");
    let outside = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 250), SERVER_PORT);
    mesh.wait_until("the outside server to listen", Duration::from_secs(10), || {
        mesh.hits_from(ext.name(), outside, 1).total() == 1
    });
    for (p, what) in [(web, "tcp"), (client, "tcp")] {
        let h = mesh.hits_to(p, outside, 20, false);
        assert_eq!(
            h.names.get("outside/inet"),
            Some(&20),
            "pod -> outside ({what}): {h:?}"
        );
    }
    let udp = mesh.hits_to(web, outside, 20, true);
    assert_eq!(
        udp.names.get("outside/inet"),
        Some(&20),
        "pod -> outside (udp): {udp:?}"
    );

    // A policy that admits only app=frontend still lets the node in (as
    // Cilium's reserved:host), and the pod's own flows outside get their
    // replies; other pods are dropped.
    mesh.write_manifest(
        A,
        "policy-web.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: frontend}\n",
    );
    mesh.wait_until("the client to be denied", Duration::from_secs(30), || {
        mesh.hits(client, mesh.pod(web).ip, 1, false).total() == 0
    });
    let probe = mesh.hits_from(&node0, pod_addr(&mesh, web), 20);
    assert_eq!(probe.total(), 20, "the node passes the policy: {probe:?}");
    let h = mesh.hits_to(web, outside, 20, false);
    assert_eq!(h.total(), 20, "replies of the pod's own flows pass: {h:?}");
}

/// kube-proxy's stand-in in `node`'s namespace: TCP and UDP to `vip` on
/// the probe port are translated to `backend`.
fn cluster_ip_dnat(node: &Netns, vip: &str, backend: SocketAddrV4) {
    for proto in ["tcp", "udp"] {
        let port = SERVER_PORT.to_string();
        let to = backend.to_string();
        node.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                vip,
                "-p",
                proto,
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        );
    }
}

#[test]
fn the_host_stack_reaches_pods_on_other_nodes() {
    let mut mesh = one_cluster();
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let db = mesh.add_pod(A.node(1), "shop", "db", &[("app", "db")]);
    let db_name = format!("{}/db", A.name());
    mesh.wait_for_hits("client -> db across nodes", client, mesh.pod(db).ip, false, |h| {
        h.names.get(&db_name) == Some(&40)
    });
    // The agent keeps a direct route to the other node's pod CIDR, via
    // that node's underlay address.
    let node0 = &mesh.node(A.node(0)).netns;
    let routes = String::from_utf8_lossy(&node0.ip(&["route", "show", "proto", "75"]).stdout).into_owned();
    let other = mesh.node(A.node(1));
    assert!(
        routes.contains(&format!("{} via {}", other.pod_cidr, other.ip)),
        "no direct route to the other node's pods: {routes:?}"
    );
    mesh.wait_until(
        "the agent to report its node route",
        Duration::from_secs(10),
        || mesh.agent_metric(A.node(0), "knit_agent_node_routes ") == 1,
    );

    // The node itself reaches a pod on another node (kubelet probes from a
    // monitoring agent, hostNetwork pods).
    let from_node = mesh.hits_from(node0.name(), pod_addr(&mesh, db), 20);
    assert_eq!(
        from_node.names.get(&db_name),
        Some(&20),
        "node -> pod on another node: {from_node:?}"
    );

    // A ClusterIP kube-proxy translates to a backend on another node: the
    // request leaves through the host stack and the direct route, the reply
    // comes back through the tunnel and the stack undoes the translation.
    let vip = "10.96.200.2";
    cluster_ip_dnat(node0, vip, pod_addr(&mesh, db));
    let vip: Ipv4Addr = vip.parse().unwrap();
    for udp in [false, true] {
        let h = mesh.hits(client, vip, 40, udp);
        assert_eq!(
            h.names.get(&db_name),
            Some(&40),
            "ClusterIP to another node (udp={udp}): {h:?}"
        );
        assert_eq!(h.peer_mismatch, 0, "replies come from the VIP (udp={udp}): {h:?}");
    }
}

#[test]
fn plain_cluster_ip_through_the_host_dnat() {
    let mut mesh = one_cluster();
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let db = mesh.add_pod(A.node(0), "shop", "db", &[("app", "db")]);
    let db_name = format!("{}/db", A.name());
    // Attached before any traffic: flows the host routed before Knit was
    // on the pods' veths leave host conntrack entries, and a ClusterIP
    // connection from a port one of them used is then remapped by the
    // host's NAT to another source port, whose replies Knit delivers
    // straight to the pod (found by CI: 3 of 40 connects timed out). The
    // window before attachment is issue 22's open point 9.
    mesh.wait_attached(A.node(0), 2);
    mesh.wait_for_hits("client -> db", client, mesh.pod(db).ip, false, |h| {
        h.names.get(&db_name) == Some(&40)
    });

    // kube-proxy's stand-in: DNAT of a ClusterIP Knit does not know, in the
    // node's namespace. Knit's socket LB leaves it alone; the packets go
    // through the host stack, and so do the replies, which the kernel
    // translates back to the VIP.
    let vip = "10.96.200.1";
    cluster_ip_dnat(&mesh.node(A.node(0)).netns, vip, pod_addr(&mesh, db));
    let vip: Ipv4Addr = vip.parse().unwrap();
    let tcp = mesh.hits(client, vip, 40, false);
    assert_eq!(tcp.names.get(&db_name), Some(&40), "ClusterIP over TCP: {tcp:?}");
    assert_eq!(tcp.peer_mismatch, 0, "replies come from the VIP: {tcp:?}");
    let udp = mesh.hits(client, vip, 40, true);
    assert_eq!(udp.names.get(&db_name), Some(&40), "ClusterIP over UDP: {udp:?}");
    assert_eq!(udp.peer_mismatch, 0, "UDP replies come from the VIP: {udp:?}");

    // The kernel hands a client port to a direct connection and, once it
    // closed, to one through the ClusterIP: the same tuple reaches the
    // backend both ways. The reply of the second goes back through the
    // stack, whatever the first left in the connection tracking (before
    // TCP state was tracked, the stale entry of the direct flow sent it
    // straight to the client, which never connected: 1 request in ~50
    // runs of this test failed by port chance, every one here).
    let vip_addr = SocketAddrV4::new(vip, SERVER_PORT);
    for port in [40123, 40124, 40125] {
        let direct = mesh.hit_from_port(client, pod_addr(&mesh, db), port);
        assert_eq!(
            direct.names.get(&db_name),
            Some(&1),
            "direct from port {port}: {direct:?}"
        );
        // The server has closed its end too (as a kernel would only reuse
        // the port later): a SYN must not meet it in CLOSE_WAIT.
        let peer = format!("dst {}:{port}", mesh.pod(client).ip);
        mesh.wait_until(
            "db to close the direct connection",
            Duration::from_secs(5),
            || {
                let ss = mesh.pod(db).netns.exec("ss", &["-Htan", &peer]);
                ss.status.success() && ss.stdout.is_empty()
            },
        );
        let translated = mesh.hit_from_port(client, vip_addr, port);
        assert_eq!(
            translated.names.get(&db_name),
            Some(&1),
            "ClusterIP from port {port}, just used for a direct connection: {translated:?}"
        );
        assert_eq!(translated.peer_mismatch, 0, "{translated:?}");
    }

    // Policy still applies after the host's DNAT: deny the client, and the
    // ClusterIP path is closed too. A connection the client holds open
    // meanwhile is checked again at its next packet and ends too (before,
    // the replies db sent made the client's packets pass as replies of a
    // flow db had opened, for as long as the connection lived).
    let mut held = mesh.probe_background(
        client,
        &[
            "hold",
            "--to",
            &pod_addr(&mesh, db).to_string(),
            "--seconds",
            "40",
        ],
        "hold",
    );
    mesh.wait_until("the held connection to be up", Duration::from_secs(10), || {
        std::fs::read_to_string(held.log_path()).is_ok_and(|l| l.contains("connected"))
    });
    mesh.write_manifest(
        A,
        "policy-db.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: db\n  namespace: shop\nspec:\n  podSelector:\n    matchLabels: {app: db}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: api}\n",
    );
    mesh.wait_until("the direct path to be denied", Duration::from_secs(30), || {
        mesh.hits(client, mesh.pod(db).ip, 1, false).total() == 0
    });
    let denied = mesh.hits(client, vip, 5, false);
    assert_eq!(
        denied.total(),
        0,
        "policy applies behind the ClusterIP: {denied:?}"
    );
    let (survived, log) = held.wait();
    assert!(
        !survived && log.contains("failed after"),
        "the held connection outlived the policy: {log}"
    );
    // The agent reports how full its connection tracking is.
    mesh.wait_until(
        "the agent to count tracked flows",
        Duration::from_secs(15),
        || mesh.agent_metric(A.node(0), "knit_agent_conntrack_entries ") > 0,
    );
    assert_eq!(
        mesh.agent_metric(A.node(0), "knit_agent_conntrack_capacity "),
        131_072
    );
}

#[test]
fn agent_down_while_pods_come_and_go() {
    agent_down_while_pods_come_and_go_attached_with("tcx");
}

/// The same with netlink tc filters, as on kernels before 6.6.
#[test]
fn agent_down_while_pods_come_and_go_with_netlink_tc() {
    agent_down_while_pods_come_and_go_attached_with("netlink");
}

fn agent_down_while_pods_come_and_go_attached_with(tc_attach: &str) {
    let mut mesh = one_cluster_attached_with(tc_attach);
    let client = mesh.add_pod(A.node(1), "shop", "client", &[("app", "client")]);
    let old = mesh.add_pod(A.node(0), "shop", "old", &[("app", "old")]);
    let old_name = format!("{}/old", A.name());
    mesh.wait_for_hits("client -> old", client, mesh.pod(old).ip, false, |h| {
        h.names.get(&old_name) == Some(&40)
    });
    let endpoints = "knit_agent_map_entries{name=\"endpoints\"}";
    mesh.wait_until(
        "the agent to report one endpoint",
        Duration::from_secs(10),
        || mesh.agent_metric(A.node(0), endpoints) == 1,
    );

    mesh.kill_agent(A.node(0));
    mesh.delete_pod(old).expect("CNI DEL while the agent is down");
    // Fail closed: no pod starts before the agent has put its policy in.
    // ADD says "try again later" (the runtime retries the sandbox) and
    // leaves no attachment behind.
    let knit = mesh.node(A.node(0)).cni.conflist.clone();
    let mut impatient = knit.clone();
    impatient["plugins"][2]["attachTimeoutSeconds"] = serde_json::json!(1);
    mesh.set_conflist(A.node(0), impatient);
    let refused = mesh
        .create_sandbox(A.node(0), "shop", "new")
        .expect_err("ADD while the agent is down");
    assert_eq!(refused.code, Some(11), "{}", refused.output);
    assert!(refused.output.contains("not attached"), "{}", refused.output);
    mesh.set_conflist(A.node(0), knit);
    mesh.start_agent(A.node(0));
    let new = mesh.add_pod(A.node(0), "shop", "new", &[("app", "new")]);

    let new_name = format!("{}/new", A.name());
    mesh.wait_for_hits(
        "the pod added while the agent was down",
        client,
        mesh.pod(new).ip,
        false,
        |h| h.names.get(&new_name) == Some(&40),
    );
    mesh.wait_until(
        "the deleted pod's endpoint to go",
        Duration::from_secs(20),
        || mesh.agent_metric(A.node(0), endpoints) == 1,
    );
}
