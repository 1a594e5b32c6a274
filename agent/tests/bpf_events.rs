//! The flow events of the tc programs (`knit_events`), read back from the
//! ring buffer after `BPF_PROG_TEST_RUN`: every event a tc program emits,
//! with every field checked, for each drop reason a tc program can give and
//! for the policy verdicts of both directions. (`redirect_failed` cannot be
//! provoked here, see `bpf_programs.rs`; the socket programs' events,
//! translations and `no_backend`, are checked on real connects in
//! `e2e/tests/observe.rs`.) Needs root.

mod bpf_harness;

use bpf_harness::*;

const REMOTE_IDENTITY: u32 = (2 << 16) | 5;
const ALL: [u8; 3] = [EVENT_DROP, EVENT_POLICY, EVENT_TRANSLATION];

/// The event a test expects: the fields the program fills from the packet
/// and what it knows of the two ends.
fn event(
    kind: u8,
    reason: u8,
    direction: u8,
    f: (Ipv4Addr, Ipv4Addr, u16, u16),
    ids: (u32, u32),
) -> FlowEvent {
    FlowEvent {
        timestamp: 0,
        saddr: addr_be(f.0),
        daddr: addr_be(f.1),
        src_identity: ids.0,
        dst_identity: ids.1,
        orig_daddr: 0,
        sport: port_be(f.2),
        dport: port_be(f.3),
        orig_dport: 0,
        kind,
        reason,
        direction,
        proto: TCP,
        pad: 0,
    }
}

fn drop_event(
    reason: DropReason,
    direction: u8,
    f: (Ipv4Addr, Ipv4Addr, u16, u16),
    ids: (u32, u32),
) -> FlowEvent {
    event(EVENT_DROP, reason as u8, direction, f, ids)
}

/// The events since the last call, timestamps checked (set, in order) and
/// cleared for comparison.
fn events(p: &mut Programs) -> Vec<FlowEvent> {
    let mut out = p.events();
    assert!(out.iter().all(|e| e.timestamp > 0), "every event has a time");
    assert!(
        out.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
        "in order"
    );
    for e in &mut out {
        e.timestamp = 0;
    }
    out
}

#[test]
fn nothing_is_emitted_until_the_agent_asks() {
    let mut p = two_pods("events-off", true);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 1, 80, SYN), 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::Policy), 1, "counted all the same");
    assert_eq!(events(&mut p), vec![]);
    // Only the kinds asked for.
    p.observe(&[EVENT_POLICY]);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 2, 80, SYN), 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(events(&mut p), vec![]);
    p.observe(&[EVENT_DROP]);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 3, 80, SYN), 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(events(&mut p).len(), 1);
    assert_eq!(p.events_lost(), 0);
}

#[test]
fn ingress_verdicts_allowed_once_per_flow_and_denied_per_packet() {
    let mut p = two_pods("events-ingress", true);
    p.observe(&ALL);
    p.route(REMOTE_POD, REMOTE_IDENTITY, Some(REMOTE_NODE));
    let flow = (REMOTE_POD, POD_B, 40001, 80);
    // Denied: an event per packet, with the ipcache's identity of the
    // source and the pod's own.
    let syn = tcp(flow.0, flow.1, flow.2, flow.3, SYN);
    assert_eq!(p.run(PROG_FROM_TUNNEL, &syn, 0).0, TC_ACT_SHOT);
    assert_eq!(p.run(PROG_FROM_TUNNEL, &syn, 0).0, TC_ACT_SHOT);
    let denied = drop_event(
        DropReason::Policy,
        POLICY_INGRESS,
        flow,
        (REMOTE_IDENTITY, IDENTITY_B),
    );
    assert_eq!(events(&mut p), vec![denied, denied]);
    // Allowed: one event when the verdict is given, none for the packets
    // that pass on it.
    p.allow(POD_B, REMOTE_IDENTITY, 80, TCP);
    assert_eq!(p.run(PROG_FROM_TUNNEL, &syn, 0).0, TC_ACT_REDIRECT);
    let ack = tcp(flow.0, flow.1, flow.2, flow.3, ACK);
    assert_eq!(p.run(PROG_FROM_TUNNEL, &ack, 0).0, TC_ACT_REDIRECT);
    assert_eq!(
        events(&mut p),
        vec![event(
            EVENT_POLICY,
            VERDICT_ALLOWED,
            POLICY_INGRESS,
            flow,
            (REMOTE_IDENTITY, IDENTITY_B)
        )]
    );
    // A pod without policy: no verdict, no event.
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 40002, 80, SYN), 0).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(events(&mut p), vec![]);
}

/// Sets `ingress_ifindex` through `BPF_PROG_TEST_RUN`, which Linux 5.10
/// refuses (`make test-kernels` skips it there).
#[test]
fn to_pod_denials_carry_the_sources_ipcache_identity() {
    let mut p = two_pods("events-to-pod", true);
    p.observe(&ALL);
    // What the host forwards meets the same policy.
    p.route(OUTSIDE, 2, None);
    assert_eq!(
        p.run(PROG_TO_POD, &tcp(OUTSIDE, POD_B, 40003, 22, SYN), 3).0,
        TC_ACT_SHOT
    );
    assert_eq!(
        events(&mut p),
        vec![drop_event(
            DropReason::Policy,
            POLICY_INGRESS,
            (OUTSIDE, POD_B, 40003, 22),
            (2, IDENTITY_B)
        )]
    );
}

#[test]
fn egress_verdicts_carry_the_senders_identity_and_the_peers() {
    let mut p = pods_with_flags("events-egress", ENDPOINT_F_EGRESS, 0);
    p.observe(&ALL);
    let flow = (POD_A, POD_B, 41000, 80);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(flow.0, flow.1, flow.2, flow.3, SYN), 0)
            .0,
        TC_ACT_SHOT
    );
    p.allow_in(POLICY_EGRESS, POD_A, IDENTITY_B, 80, TCP);
    let allowed = (POD_A, POD_B, 41001, 80);
    assert_eq!(
        p.run(
            PROG_FROM_POD,
            &tcp(allowed.0, allowed.1, allowed.2, allowed.3, SYN),
            0
        )
        .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        events(&mut p),
        vec![
            drop_event(
                DropReason::EgressPolicy,
                POLICY_EGRESS,
                flow,
                (IDENTITY_A, IDENTITY_B)
            ),
            event(
                EVENT_POLICY,
                VERDICT_ALLOWED,
                POLICY_EGRESS,
                allowed,
                (IDENTITY_A, IDENTITY_B)
            ),
        ]
    );
}

#[test]
fn every_tc_drop_reason_is_emitted_with_its_flow() {
    let mut p = two_pods("events-drops", false);
    p.observe(&ALL);
    let none = EVENT_DIRECTION_NONE;
    // unknown_source: nothing is known of either end.
    let stranger = Ipv4Addr::new(10, 1, 1, 99);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(stranger, POD_B, 1, 80, SYN), 0).0,
        TC_ACT_SHOT
    );
    // malformed: the addresses were read before the ports were missing.
    let truncated = &tcp(POD_A, POD_B, 2, 80, SYN)[..14 + 20];
    assert_eq!(p.run(PROG_FROM_POD, truncated, 0).0, TC_ACT_SHOT);
    // no_route: from the tunnel to no local pod.
    assert_eq!(
        p.run(PROG_FROM_TUNNEL, &tcp(REMOTE_POD, stranger, 3, 80, SYN), 0)
            .0,
        TC_ACT_SHOT
    );
    // forged_tunnel_source: a remote pod sent by another node.
    p.route(REMOTE_POD, REMOTE_IDENTITY, Some(REMOTE_NODE));
    let other_node = Ipv4Addr::new(192, 168, 50, 3);
    let forged = tcp(REMOTE_POD, POD_B, 4, 80, SYN);
    assert_eq!(
        p.run_from(PROG_FROM_TUNNEL, &forged, 0, other_node).0,
        TC_ACT_SHOT
    );
    // no_route in native routing: the node of the destination is unroutable.
    p.native_node(REMOTE_NODE, NATIVE_PATH_UNROUTABLE);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, REMOTE_POD, 5, 80, SYN), 0).0,
        TC_ACT_SHOT
    );
    let truncated_event = drop_event(DropReason::Malformed, none, (POD_A, POD_B, 0, 0), (0, 0));
    assert_eq!(
        events(&mut p),
        vec![
            drop_event(DropReason::UnknownSource, none, (stranger, POD_B, 1, 80), (0, 0)),
            truncated_event,
            drop_event(DropReason::NoRoute, none, (REMOTE_POD, stranger, 3, 80), (0, 0)),
            drop_event(
                DropReason::ForgedTunnelSource,
                none,
                (REMOTE_POD, POD_B, 4, 80),
                (REMOTE_IDENTITY, IDENTITY_B)
            ),
            drop_event(
                DropReason::NoRoute,
                none,
                (POD_A, REMOTE_POD, 5, 80),
                (IDENTITY_A, REMOTE_IDENTITY)
            ),
        ]
    );
    // Encryption on: plaintext from a keyed node, before anything else is read.
    p.require_decrypted(REQUIRE_DECRYPTED_ALWAYS);
    assert_eq!(p.run(PROG_FROM_TUNNEL, &forged, 0).0, TC_ACT_SHOT);
    assert_eq!(
        events(&mut p),
        vec![drop_event(
            DropReason::ForgedTunnelSource,
            none,
            (REMOTE_POD, POD_B, 4, 80),
            (0, 0)
        )]
    );
    assert_eq!(p.events_lost(), 0);
}

#[test]
fn a_full_ring_counts_what_it_lost_and_keeps_what_it_holds() {
    let mut p = two_pods("events-full", true);
    p.observe(&ALL);
    // 1 MiB of 40-byte records and 8-byte headers: fewer than 22,000 fit.
    let syn = tcp(POD_A, POD_B, 1, 80, SYN);
    for _ in 0..23_000 {
        p.run(PROG_FROM_POD, &syn, 0);
    }
    let held = events(&mut p).len() as u64;
    assert!(held > 20_000, "{held} held");
    assert_eq!(held + p.events_lost(), 23_000);
    // Read out, the ring takes events again.
    p.run(PROG_FROM_POD, &syn, 0);
    assert_eq!(events(&mut p).len(), 1);
}
