//! The tc programs of `ebpf/knit.bpf.c` run by the kernel on crafted
//! packets with `BPF_PROG_TEST_RUN`, as aya's own integration tests do: no
//! interfaces, no namespaces, milliseconds per case. Each case fills the
//! maps, runs one packet through `from_pod`, `from_tunnel` or `to_pod` and
//! checks the verdict, the rewritten MACs, the connection tracking and the
//! drop counter of every reason a tc program can give.
//!
//! Not reachable here: `no_backend` is counted by the socket programs
//! (`cgroup/connect4`), which `BPF_PROG_TEST_RUN` cannot run
//! (`e2e/tests/affinity.rs` counts it on real connects);
//! `redirect_failed` needs `bpf_skb_set_tunnel_key` to fail, which it does
//! not on a well-formed packet; and the kernel's test runner refuses IPv4
//! packets whose IP header itself is cut short, so `malformed` is tested
//! with packets cut after it. Needs root (loading programs, a bpffs of its
//! own), like the rest of the privileged suite.

mod bpf_harness;

use bpf_harness::*;

#[test]
fn from_pod_delivers_to_a_local_pod_with_its_macs() {
    let p = two_pods("deliver", false);
    let (verdict, out) = p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40000, 80, SYN), 0);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &MAC_B, "addressed to b's interface");
    assert_eq!(&out[6..12], &NODE_MAC_B, "from the host side of b's veth");
    // a opened the flow, and b received its opening.
    assert_eq!(
        p.ct_flags(POD_A, POD_B, 40000, 80, TCP),
        Some(CT_F_EGRESS | CT_F_INGRESS)
    );
}

#[test]
fn from_pod_enforces_the_destinations_ingress_policy() {
    let mut p = two_pods("policy", true);
    let syn = tcp(POD_A, POD_B, 40001, 80, SYN);
    assert_eq!(p.run(PROG_FROM_POD, &syn, 0).0, TC_ACT_SHOT);
    assert_eq!(p.drops(DropReason::Policy), 1);

    // Another port or protocol stays denied; the allowed one passes and is remembered.
    p.allow(POD_B, IDENTITY_A, 80, TCP);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40001, 81, SYN), 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(
        p.run(PROG_FROM_POD, &packet(POD_A, POD_B, UDP, 40001, 80, 0), 0)
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::Policy), 3);
    assert_eq!(p.run(PROG_FROM_POD, &syn, 0).0, TC_ACT_REDIRECT);
    assert_eq!(
        p.ct_flags(POD_A, POD_B, 40001, 80, TCP),
        Some(CT_F_EGRESS | CT_F_ALLOWED | CT_F_INGRESS)
    );
    assert_eq!(
        p.drops(DropReason::Policy),
        3,
        "an admitted packet is not counted"
    );
}

#[test]
fn policy_wildcards_match_any_identity_port_or_protocol() {
    let mut p = two_pods("wildcard", true);
    // Identity 0: any source, on port 53/UDP only.
    p.allow(POD_B, 0, 53, UDP);
    assert_eq!(
        p.run(PROG_FROM_POD, &packet(POD_A, POD_B, UDP, 5353, 53, 0), 0).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 5353, 53, SYN), 0).0,
        TC_ACT_SHOT
    );
    // Port and protocol 0: identity A on every port.
    p.allow(POD_B, IDENTITY_A, 0, 0);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 5353, 8443, SYN), 0).0,
        TC_ACT_REDIRECT
    );
}

#[test]
fn replies_of_a_selected_pods_own_flows_pass_its_policy() {
    // b is selected by a policy that admits nothing.
    let mut p = two_pods("reply", true);
    p.endpoint(
        POD_A,
        IDENTITY_A,
        true,
        [0x02, 0, 0, 0, 0, 0x0a],
        [0x02, 0, 0, 0, 1, 0x0a],
    );
    let reply = tcp(POD_B, POD_A, 80, 40002, ACK);
    // Unsolicited, b → a is denied by a's policy.
    assert_eq!(p.run(PROG_FROM_POD, &reply, 0).0, TC_ACT_SHOT);
    // a opens the flow (denied by b's policy, but its egress is tracked)...
    p.allow(POD_B, IDENTITY_A, 80, TCP);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40002, 80, SYN), 0).0,
        TC_ACT_REDIRECT
    );
    // ...so b's reply reaches a.
    assert_eq!(p.run(PROG_FROM_POD, &reply, 0).0, TC_ACT_REDIRECT);
}

#[test]
fn from_pod_sends_remote_pods_into_the_tunnel() {
    let mut p = two_pods("tunnel", false);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    let syn = tcp(POD_A, REMOTE_POD, 40003, 80, SYN);
    // No tunnel device configured yet: nowhere to send it.
    assert_eq!(p.run(PROG_FROM_POD, &syn, 0).0, TC_ACT_SHOT);
    assert_eq!(p.drops(DropReason::NoRoute), 1);
    p.tunnel_device(7);
    // The tunnel key is set (outer destination: b's node) and the packet
    // goes to the tunnel device.
    assert_eq!(p.run(PROG_FROM_POD, &syn, 0).0, TC_ACT_REDIRECT);
    assert_eq!(p.drops(DropReason::RedirectFailed), 0);
}

#[test]
fn from_pod_leaves_what_is_not_mesh_traffic_to_the_host_stack() {
    let p = two_pods("stack", false);
    // Not IPv4 (ARP): untouched.
    let mut arp = tcp(POD_A, OUTSIDE, 1, 2, SYN);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(p.run(PROG_FROM_POD, &arp, 0).0, TC_ACT_OK);
    // To the outside: the host routes it, and the pod's end of the flow is
    // remembered for the replies (TCP SYN and UDP open flows, a bare ACK
    // does not).
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, OUTSIDE, 40004, 443, SYN), 0).0,
        TC_ACT_OK
    );
    assert_eq!(p.stack_flow(POD_A, 40004, TCP), Some(STACK_FLOW_OPENED));
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, OUTSIDE, 40005, 443, ACK), 0).0,
        TC_ACT_OK
    );
    assert_eq!(p.stack_flow(POD_A, 40005, TCP), None);
    assert_eq!(
        p.run(PROG_FROM_POD, &packet(POD_A, OUTSIDE, UDP, 40006, 53, 0), 0)
            .0,
        TC_ACT_OK
    );
    assert_eq!(p.stack_flow(POD_A, 40006, UDP), Some(STACK_FLOW_OPENED));
    // A local pod answering such a flow (after the host's NAT) goes back
    // through the stack too, not straight into a.
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 443, 40004, ACK), 0).0,
        TC_ACT_OK
    );
}

#[test]
fn a_local_pod_not_attached_yet_is_reached_through_the_stack_without_marking_the_port() {
    let mut p = two_pods("unattached", false);
    let unattached = Ipv4Addr::new(10, 1, 1, 12);
    p.route(unattached, 0, None);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, unattached, 40020, 80, SYN), 0).0,
        TC_ACT_OK
    );
    assert_eq!(
        p.stack_flow(POD_A, 40020, TCP),
        None,
        "no NAT on this path: a's later flows from 40020 keep their direct replies"
    );
}

#[test]
fn a_port_once_opened_into_the_stack_keeps_the_direct_replies_of_later_mesh_flows() {
    let mut p = two_pods("port-reuse", false);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    p.tunnel_device(7);
    // a connects to a Service the socket LB does not know yet: the SYN
    // leaves through the stack and port 40030 is remembered.
    for port in [40030, 40031] {
        assert_eq!(
            p.run(PROG_FROM_POD, &tcp(POD_A, OUTSIDE, port, 80, SYN), 0).0,
            TC_ACT_OK
        );
        assert_eq!(p.stack_flow(POD_A, port, TCP), Some(STACK_FLOW_OPENED));
    }
    // Later the kernel hands the same ports to a's connections to a remote
    // pod and to b, which go through the mesh.
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, REMOTE_POD, 40030, 8080, SYN), 0)
            .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40031, 8080, SYN), 0).0,
        TC_ACT_REDIRECT
    );
    // Their SYN-ACKs are delivered to a, not handed to the stack (which
    // never saw the SYNs and lost the replies: connects timed out).
    let (verdict, _) = p.run(
        PROG_FROM_TUNNEL,
        &tcp(REMOTE_POD, POD_A, 8080, 40030, SYN | ACK),
        0,
    );
    assert_eq!(verdict, TC_ACT_REDIRECT, "the remote pod's reply reaches a");
    let (verdict, _) = p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 8080, 40031, SYN | ACK), 0);
    assert_eq!(verdict, TC_ACT_REDIRECT, "b's reply reaches a");
    // A reply the stack translated (from the Service's backend, a tuple a
    // never sent) still goes back through the stack.
    let (verdict, _) = p.run(PROG_FROM_TUNNEL, &tcp(REMOTE_POD, POD_A, 80, 40030, SYN | ACK), 0);
    assert_eq!(verdict, TC_ACT_OK);
}

#[test]
fn a_udp_port_the_stack_brings_requests_to_is_served_not_opened() {
    let mut p = two_pods("served", false);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    // A masqueraded client's datagram, routed by the host into a's port 80.
    assert_eq!(
        p.run(PROG_TO_POD, &packet(REMOTE_NODE, POD_A, UDP, 40010, 80, 0), 3)
            .0,
        TC_ACT_OK
    );
    assert_eq!(p.stack_flow(POD_A, 80, UDP), Some(STACK_FLOW_SERVED));
    // a's answer goes back through the stack without becoming a flow of a's.
    assert_eq!(
        p.run(PROG_FROM_POD, &packet(POD_A, REMOTE_NODE, UDP, 80, 40010, 0), 0)
            .0,
        TC_ACT_OK
    );
    assert_eq!(p.stack_flow(POD_A, 80, UDP), Some(STACK_FLOW_SERVED));
    // So a remote pod's datagram to port 80 stays on the mesh path.
    let (verdict, _) = p.run(PROG_FROM_TUNNEL, &packet(REMOTE_POD, POD_A, UDP, 40011, 80, 0), 0);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // A port a opened keeps its replies on the stack path, whichever way
    // they come.
    p.run(PROG_FROM_POD, &packet(POD_A, OUTSIDE, UDP, 40012, 53, 0), 0);
    p.run(PROG_TO_POD, &packet(OUTSIDE, POD_A, UDP, 53, 40012, 0), 3);
    assert_eq!(p.stack_flow(POD_A, 40012, UDP), Some(STACK_FLOW_OPENED));
    assert_eq!(
        p.run(PROG_FROM_TUNNEL, &packet(REMOTE_POD, POD_A, UDP, 53, 40012, 0), 0)
            .0,
        TC_ACT_OK
    );
}

#[test]
fn deny_entries_win_over_any_allow_entry() {
    let mut p = two_pods("deny", true);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    let remote = (2 << 16) | 5;
    // Allowed from anyone on any port...
    p.allow(POD_B, 0, 0, 0);
    let syn = |sport| tcp(REMOTE_POD, POD_B, sport, 80, SYN);
    assert_eq!(p.run(PROG_FROM_TUNNEL, &syn(40020), 0).0, TC_ACT_REDIRECT);
    // ...but a deny of the remote identity on port 80 wins over that
    // wildcard, and only there.
    p.entry(POLICY_DENY, POLICY_INGRESS, POD_B, remote, 80, TCP);
    assert_eq!(p.run(PROG_FROM_TUNNEL, &syn(40021), 0).0, TC_ACT_SHOT);
    assert_eq!(p.drops(DropReason::Policy), 1);
    assert_eq!(
        p.run(PROG_FROM_TUNNEL, &tcp(REMOTE_POD, POD_B, 40022, 81, SYN), 0)
            .0,
        TC_ACT_REDIRECT
    );
    // A deny by address prefix wins over an exact allow of the identity.
    p.allow(POD_B, remote, 81, TCP);
    p.cidr_entry(
        POLICY_DENY,
        POLICY_INGRESS,
        POD_B,
        (Ipv4Addr::new(10, 2, 0, 0), 16),
        0,
        0,
    );
    assert_eq!(
        p.run(PROG_FROM_TUNNEL, &tcp(REMOTE_POD, POD_B, 40023, 81, SYN), 0)
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::Policy), 2);
}

#[test]
fn from_pod_drops_unknown_sources_and_malformed_packets() {
    let mut p = two_pods("unknown", false);
    assert_eq!(
        p.run(
            PROG_FROM_POD,
            &tcp(Ipv4Addr::new(10, 1, 1, 99), POD_B, 1, 80, SYN),
            0
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::UnknownSource), 1);
    // A pod that borrows the address of another pod of this node (behind
    // another veth) to take its identity.
    p.endpoint_on(POD_B, 42);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 1, 80, SYN), 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::UnknownSource), 2);
    assert_eq!(
        p.ct_flags(POD_B, POD_A, 1, 80, TCP),
        None,
        "nothing tracked for it"
    );
    // A TCP packet cut short after its IPv4 header (no ports to read).
    // (The kernel's test runner refuses packets whose IPv4 header itself
    // is incomplete, so that case cannot be fed to the program here.)
    let truncated = &tcp(POD_A, POD_B, 1, 80, SYN)[..14 + 20];
    assert_eq!(p.run(PROG_FROM_POD, truncated, 0).0, TC_ACT_SHOT);
    assert_eq!(p.drops(DropReason::Malformed), 1);
    // TCP flags cut off: ports present, the flags byte missing.
    let no_flags = &tcp(POD_A, POD_B, 1, 80, SYN)[..14 + 20 + 12];
    assert_eq!(p.run(PROG_FROM_POD, no_flags, 0).0, TC_ACT_SHOT);
    assert_eq!(p.drops(DropReason::Malformed), 2);
}

#[test]
fn from_tunnel_delivers_with_the_sources_ipcache_identity() {
    let mut p = two_pods("from-tunnel", true);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    let syn = tcp(REMOTE_POD, POD_B, 40007, 80, SYN);
    assert_eq!(p.run(PROG_FROM_TUNNEL, &syn, 0).0, TC_ACT_SHOT);
    assert_eq!(p.drops(DropReason::Policy), 1);
    // Allowing another identity does not admit the remote pod...
    p.allow(POD_B, IDENTITY_A, 80, TCP);
    assert_eq!(p.run(PROG_FROM_TUNNEL, &syn, 0).0, TC_ACT_SHOT);
    // ...allowing its own does, and the packet is addressed to b.
    p.allow(POD_B, (2 << 16) | 5, 80, TCP);
    let (verdict, out) = p.run(PROG_FROM_TUNNEL, &syn, 0);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&MAC_B[..], &NODE_MAC_B[..]));
}

#[test]
fn from_tunnel_admits_only_what_the_node_that_sent_it_hosts() {
    let mut p = two_pods("forged", false);
    let other_node = Ipv4Addr::new(192, 168, 50, 3);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    p.route_prefix((Ipv4Addr::new(10, 2, 2, 0), 24), 2 << 16, Some(other_node));
    let from_remote = tcp(REMOTE_POD, POD_B, 40040, 80, SYN);
    assert_eq!(
        p.run_from(PROG_FROM_TUNNEL, &from_remote, 0, REMOTE_NODE).0,
        TC_ACT_REDIRECT
    );
    // Another node of the mesh, a host on the underlay or a pod that
    // reaches the tunnel port poses as the remote pod...
    for outer in [other_node, Ipv4Addr::new(192, 168, 50, 99), POD_A] {
        assert_eq!(
            p.run_from(PROG_FROM_TUNNEL, &from_remote, 0, outer).0,
            TC_ACT_SHOT,
            "sent by {outer}"
        );
    }
    // ...or as a pod of this node, or as an address the mesh does not know
    // (whatever identity its VNI claims).
    assert_eq!(
        p.run_from(
            PROG_FROM_TUNNEL,
            &tcp(POD_A, POD_B, 40041, 80, SYN),
            0,
            REMOTE_NODE
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(
        p.run_from(
            PROG_FROM_TUNNEL,
            &tcp(OUTSIDE, POD_B, 40042, 80, SYN),
            0,
            REMOTE_NODE
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::ForgedTunnelSource), 5);
    // A pod of the other node's CIDR, not yet known by itself, counts as
    // coming from that node.
    assert_eq!(
        p.run_from(
            PROG_FROM_TUNNEL,
            &tcp(Ipv4Addr::new(10, 2, 2, 7), POD_B, 40043, 80, SYN),
            0,
            other_node
        )
        .0,
        TC_ACT_REDIRECT
    );
}

#[test]
fn with_encryption_from_tunnel_takes_only_what_wireguard_decrypted() {
    let mut p = two_pods("decrypted", false);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    let syn = tcp(REMOTE_POD, POD_B, 40050, 80, SYN);
    // from_wireguard marks what it sees, keeping the other bits of the mark.
    let (verdict, _, marked) = p.run_marked(PROG_FROM_WIREGUARD, &syn, 0, REMOTE_NODE, 0x4000 | 0x0300);
    assert_eq!((verdict, marked), (TC_ACT_OK, 0x4000 | MARK_DECRYPTED));
    // Without encryption, an unmarked packet from the right node passes.
    assert_eq!(
        p.run_marked(PROG_FROM_TUNNEL, &syn, 0, REMOTE_NODE, 0).0,
        TC_ACT_REDIRECT
    );
    p.require_decrypted(REQUIRE_DECRYPTED_ALWAYS);
    // With it, the same packet, as a host on the underlay forging the
    // node's address sends it, is dropped; marked by WireGuard, it passes.
    for mark in [0, 0x0100, MARK_DECRYPTED_MASK] {
        assert_eq!(
            p.run_marked(PROG_FROM_TUNNEL, &syn, 0, REMOTE_NODE, mark).0,
            TC_ACT_SHOT,
            "mark {mark:#x}"
        );
    }
    assert_eq!(p.drops(DropReason::ForgedTunnelSource), 3);
    assert_eq!(
        p.run_marked(PROG_FROM_TUNNEL, &syn, 0, REMOTE_NODE, marked).0,
        TC_ACT_REDIRECT
    );
    // Decrypted is not enough: the sender check still holds.
    let other_node = Ipv4Addr::new(192, 168, 50, 3);
    assert_eq!(
        p.run_marked(PROG_FROM_TUNNEL, &syn, 0, other_node, MARK_DECRYPTED)
            .0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::ForgedTunnelSource), 4);
    // Outside strict mode only a node with a key must send decrypted: one
    // without (mid-rollout) still sends plaintext.
    p.require_decrypted(REQUIRE_DECRYPTED_FROM_KEYED);
    assert_eq!(
        p.run_marked(PROG_FROM_TUNNEL, &syn, 0, REMOTE_NODE, 0).0,
        TC_ACT_REDIRECT,
        "a node without a key"
    );
    p.wireguard_node(REMOTE_NODE, true);
    assert_eq!(
        p.run_marked(PROG_FROM_TUNNEL, &syn, 0, REMOTE_NODE, 0).0,
        TC_ACT_SHOT,
        "a node with a key, forged"
    );
    assert_eq!(p.drops(DropReason::ForgedTunnelSource), 5);
    assert_eq!(
        p.run_marked(PROG_FROM_TUNNEL, &syn, 0, REMOTE_NODE, MARK_DECRYPTED)
            .0,
        TC_ACT_REDIRECT,
        "a node with a key, decrypted"
    );
    p.wireguard_node(REMOTE_NODE, false);
    assert_eq!(
        p.run_marked(PROG_FROM_TUNNEL, &syn, 0, REMOTE_NODE, 0).0,
        TC_ACT_REDIRECT,
        "its key withdrawn"
    );
    // Encryption turned off again takes unmarked packets.
    p.require_decrypted(REQUIRE_DECRYPTED_NEVER);
    p.wireguard_node(REMOTE_NODE, true);
    assert_eq!(
        p.run_marked(PROG_FROM_TUNNEL, &syn, 0, REMOTE_NODE, 0).0,
        TC_ACT_REDIRECT
    );
}

#[test]
fn from_tunnel_drops_what_no_local_pod_owns() {
    let p = two_pods("no-route", false);
    assert_eq!(
        p.run(
            PROG_FROM_TUNNEL,
            &tcp(REMOTE_POD, Ipv4Addr::new(10, 1, 1, 99), 1, 80, SYN),
            0
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::NoRoute), 1);
    assert_eq!(
        p.run(
            PROG_FROM_TUNNEL,
            &tcp(REMOTE_POD, POD_A, 1, 80, SYN)[..14 + 20],
            0
        )
        .0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::Malformed), 1);
}

#[test]
fn to_pod_lets_the_host_in_and_holds_forwarded_traffic_to_the_policy() {
    let mut p = two_pods("to-pod", true);
    p.route(OUTSIDE, 2, None);
    let forwarded = tcp(OUTSIDE, POD_B, 40008, 80, SYN);
    // Sent by the host itself (kubelet probes): always in.
    assert_eq!(p.run(PROG_TO_POD, &forwarded, 0).0, TC_ACT_OK);
    // Forwarded from another interface: b's policy decides.
    assert_eq!(p.run(PROG_TO_POD, &forwarded, 3).0, TC_ACT_SHOT);
    assert_eq!(p.drops(DropReason::Policy), 1);
    p.allow(POD_B, 2, 80, TCP);
    assert_eq!(p.run(PROG_TO_POD, &forwarded, 3).0, TC_ACT_OK);
    // A pod without policy takes everything.
    assert_eq!(
        p.run(PROG_TO_POD, &tcp(OUTSIDE, POD_A, 40009, 22, SYN), 3).0,
        TC_ACT_OK
    );
}

#[test]
fn egress_policy_holds_what_a_selected_pod_sends() {
    let mut p = pods_with_flags("egress", ENDPOINT_F_EGRESS, 0);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    p.tunnel_device(7);
    // Selected for egress with no entry: nothing leaves, wherever it goes.
    for dst in [POD_B, REMOTE_POD, OUTSIDE] {
        assert_eq!(
            p.run(PROG_FROM_POD, &tcp(POD_A, dst, 41000, 80, SYN), 0).0,
            TC_ACT_SHOT,
            "{dst}"
        );
    }
    assert_eq!(p.drops(DropReason::EgressPolicy), 3);
    assert_eq!(
        p.drops(DropReason::Policy),
        0,
        "egress drops have their own counter"
    );
    // By destination identity and port: b on 80 only; the remote pod on any port.
    p.allow_in(POLICY_EGRESS, POD_A, IDENTITY_B, 80, TCP_PROTO);
    p.allow_in(POLICY_EGRESS, POD_A, (2 << 16) | 5, 0, 0);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 41001, 80, SYN), 0).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 41001, 81, SYN), 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, REMOTE_POD, 41002, 9999, SYN), 0)
            .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        p.ct_flags(POD_A, POD_B, 41001, 80, TCP_PROTO),
        Some(CT_F_EGRESS | CT_F_EGRESS_ALLOWED | CT_F_INGRESS)
    );
    // An ingress entry for the same peer does not open egress.
    p.allow(POD_A, IDENTITY_B, 0, 0);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 41003, 22, SYN), 0).0,
        TC_ACT_SHOT
    );
}

#[test]
fn replies_of_connections_a_peer_opened_leave_an_egress_selected_pod() {
    let p = pods_with_flags("egress-reply", 0, ENDPOINT_F_EGRESS);
    // a opens a connection to b (b's ingress is open) ...
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 42000, 80, SYN), 0).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        p.ct_flags(POD_A, POD_B, 42000, 80, TCP_PROTO)
            .map(|f| f & CT_F_INGRESS),
        Some(CT_F_INGRESS)
    );
    // ... b's answer passes its egress policy, an unsolicited packet does not.
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 80, 42000, SYN | ACK), 0)
            .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 80, 42001, SYN), 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::EgressPolicy), 1);
}

#[test]
fn ip_blocks_admit_by_address_prefix_in_both_directions() {
    let mut p = pods_with_flags("cidr", ENDPOINT_F_EGRESS, ENDPOINT_F_POLICY);
    p.route(OUTSIDE, 0, None);
    // a may send to 192.0.2.0/26 on 443 (an ipBlock with its except cut out).
    p.allow_cidr(
        POLICY_EGRESS,
        POD_A,
        (Ipv4Addr::new(192, 0, 2, 0), 26),
        443,
        TCP_PROTO,
    );
    assert_eq!(
        p.run(
            PROG_FROM_POD,
            &tcp(POD_A, Ipv4Addr::new(192, 0, 2, 1), 43000, 443, SYN),
            0
        )
        .0,
        TC_ACT_OK
    );
    assert_eq!(
        p.run(
            PROG_FROM_POD,
            &tcp(POD_A, Ipv4Addr::new(192, 0, 2, 65), 43000, 443, SYN),
            0
        )
        .0,
        TC_ACT_SHOT,
        "outside the prefix"
    );
    assert_eq!(
        p.run(
            PROG_FROM_POD,
            &tcp(POD_A, Ipv4Addr::new(192, 0, 2, 1), 43000, 80, SYN),
            0
        )
        .0,
        TC_ACT_SHOT
    );
    // b admits 10.1.1.0/28 (a pod address included) on any port of any protocol.
    p.allow_cidr(POLICY_INGRESS, POD_B, (Ipv4Addr::new(10, 1, 1, 0), 28), 0, 0);
    p.allow_in(POLICY_EGRESS, POD_A, IDENTITY_B, 0, 0);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 43001, 8080, SYN), 0).0,
        TC_ACT_REDIRECT
    );
    // From the outside through the host: an address outside b's block is refused.
    assert_eq!(
        p.run(PROG_TO_POD, &tcp(OUTSIDE, POD_B, 43002, 8080, SYN), 3).0,
        TC_ACT_SHOT
    );
}
