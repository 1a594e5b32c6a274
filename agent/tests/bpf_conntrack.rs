//! Connection tracking in `ebpf/knit.bpf.c`, run by the kernel on crafted
//! packets with `BPF_PROG_TEST_RUN` (see `bpf_programs.rs`): a TCP SYN
//! starts a new flow on its tuple, so a reused tuple meets today's policy
//! and a translated flow is not taken for an old direct one; FIN and RST
//! close a flow; every entry expires after its state's lifetime; a policy
//! change checks established flows again. Needs root.

mod bpf_harness;

use bpf_harness::*;

/// The kernel's monotonic second as the programs see it, read from the
/// entry a UDP packet leaves (which expires `CT_LIFETIME_OTHER` later).
fn datapath_now(p: &Programs, from: Ipv4Addr, to: Ipv4Addr) -> u32 {
    assert_eq!(
        p.run(PROG_FROM_POD, &packet(from, to, UDP, 7, 7, 0), 0).0,
        TC_ACT_REDIRECT
    );
    p.ct_entry(from, to, 7, 7, UDP)
        .expect("entry of the clock packet")
        .expires
        - CT_LIFETIME_OTHER
}

fn assert_expires_in(value: CtValue, now: u32, lifetime: u32, what: &str) {
    assert!(
        (now + lifetime..=now + lifetime + 2).contains(&value.expires),
        "{what}: expires {} for now {now} + {lifetime}",
        value.expires
    );
}

#[test]
fn a_new_syn_on_a_reused_tuple_meets_todays_policy() {
    let mut p = two_pods("ct-reuse", true);
    p.allow(POD_B, IDENTITY_A, 80, TCP);
    for port in [40100, 40101] {
        assert_eq!(
            p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, port, 80, SYN), 0).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, port, 80, ACK), 0).0,
            TC_ACT_REDIRECT
        );
    }
    // Revoked, and the flow closes before the agent bumps the policy
    // generation: the next flow on the same tuple is judged anew.
    p.revoke(POD_B, IDENTITY_A, 80, TCP);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40100, 80, FIN | ACK), 0)
            .0,
        TC_ACT_REDIRECT
    );
    assert_ne!(p.ct_flags(POD_A, POD_B, 40100, 80, TCP).unwrap() & CT_F_FIN, 0);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40100, 80, SYN), 0).0,
        TC_ACT_SHOT
    );
    // A SYN on a tuple whose flow was never seen to close starts a new
    // flow too (the old one was abandoned, or the pod's IP was reused).
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40101, 80, SYN), 0).0,
        TC_ACT_SHOT
    );
    assert_eq!(p.drops(DropReason::Policy), 2);
}

#[test]
fn the_reply_of_a_translated_flow_on_a_port_a_closed_direct_flow_used_goes_to_the_stack() {
    let p = two_pods("ct-translated", false);
    // a talks to b directly from port 40200, and the flow closes.
    for (from, to, sport, dport, flags) in [
        (POD_A, POD_B, 40200, 8080, SYN),
        (POD_B, POD_A, 8080, 40200, SYN | ACK),
        (POD_A, POD_B, 40200, 8080, ACK),
        (POD_A, POD_B, 40200, 8080, FIN | ACK),
        (POD_B, POD_A, 8080, 40200, FIN | ACK),
    ] {
        assert_eq!(
            p.run(PROG_FROM_POD, &tcp(from, to, sport, dport, flags), 0).0,
            TC_ACT_REDIRECT
        );
    }
    // The kernel gives port 40200 to a's connection to a ClusterIP the
    // host translates to b: the SYN leaves through the stack...
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, OUTSIDE, 40200, 8080, SYN), 0).0,
        TC_ACT_OK
    );
    // ...and b's answers go back through it, which undoes the translation
    // (the closed direct flow's entries sent them straight to a, whose
    // socket never connected to b: the connect timed out).
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 8080, 40200, SYN | ACK), 0)
            .0,
        TC_ACT_OK
    );
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 8080, 40200, ACK), 0).0,
        TC_ACT_OK
    );
    // Where the translated SYN reaches b through the stack, it ends the
    // old flow's entries in both directions already (ingress_ifindex 0:
    // 5.10's test runner refuses any other).
    let p = two_pods("ct-translated-to-pod", false);
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40201, 8080, SYN), 0).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 8080, 40201, SYN | ACK), 0)
            .0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        p.run(PROG_TO_POD, &tcp(POD_A, POD_B, 40201, 8080, SYN), 0).0,
        TC_ACT_OK
    );
    assert_eq!(
        p.ct_flags(POD_A, POD_B, 40201, 8080, TCP),
        Some(CT_F_INGRESS),
        "only the new flow's opening is left"
    );
    assert_eq!(p.ct_flags(POD_B, POD_A, 8080, 40201, TCP), None);
}

#[test]
fn entries_live_as_long_as_their_state_allows() {
    let p = two_pods("ct-lifetimes", false);
    let now = datapath_now(&p, POD_A, POD_B);
    let entry = |flags: u8| {
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40300, 80, flags), 0);
        p.ct_entry(POD_A, POD_B, 40300, 80, TCP).unwrap()
    };
    assert_expires_in(entry(SYN), now, CT_LIFETIME_SYN, "opening");
    assert_expires_in(entry(ACK), now, CT_LIFETIME_TCP, "established");
    let closing = entry(FIN | ACK);
    assert_expires_in(closing, now, CT_LIFETIME_CLOSING, "closing");
    // a opened it (its SYN), and b received its opening.
    assert_eq!(closing.flags, CT_F_EGRESS | CT_F_INGRESS | CT_F_FIN);
    assert_expires_in(
        entry(ACK),
        now,
        CT_LIFETIME_CLOSING,
        "the last ACK keeps it closing",
    );
    p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40301, 80, RST), 0);
    let reset = p.ct_entry(POD_A, POD_B, 40301, 80, TCP).unwrap();
    // A lone RST opens nothing.
    assert_eq!(reset.flags, CT_F_RST);
    assert_expires_in(reset, now, CT_LIFETIME_CLOSING, "reset");
}

#[test]
fn an_expired_entry_admits_nothing() {
    let mut p = two_pods("ct-expiry", true);
    p.allow(POD_B, IDENTITY_A, 53, UDP);
    let query = packet(POD_A, POD_B, UDP, 5353, 53, 0);
    assert_eq!(p.run(PROG_FROM_POD, &query, 0).0, TC_ACT_REDIRECT);
    let admitted = p.ct_entry(POD_A, POD_B, 5353, 53, UDP).unwrap();
    assert_eq!(admitted.flags, CT_F_EGRESS | CT_F_ALLOWED | CT_F_INGRESS);
    let now = admitted.expires - CT_LIFETIME_OTHER;
    p.revoke(POD_B, IDENTITY_A, 53, UDP);
    // While the entry lives, the flow keeps its verdict...
    assert_eq!(p.run(PROG_FROM_POD, &query, 0).0, TC_ACT_REDIRECT);
    // ...and once it expired (a minute without packets), today's policy
    // judges the tuple again.
    p.set_ct_entry(
        (POD_A, POD_B, 5353, 53, UDP),
        CtValue {
            flags: admitted.flags,
            expires: now - 1,
        },
    );
    assert_eq!(p.run(PROG_FROM_POD, &query, 0).0, TC_ACT_SHOT);
    // An entry written before expiry existed (0) counts until its next
    // packet, which gives it a lifetime: an agent upgrade keeps flows.
    p.set_ct_entry(
        (POD_A, POD_B, 5353, 53, UDP),
        CtValue {
            flags: admitted.flags,
            expires: 0,
        },
    );
    assert_eq!(p.run(PROG_FROM_POD, &query, 0).0, TC_ACT_REDIRECT);
    assert_expires_in(
        p.ct_entry(POD_A, POD_B, 5353, 53, UDP).unwrap(),
        now,
        CT_LIFETIME_OTHER,
        "an entry from before expiry",
    );
}

#[test]
fn a_policy_change_checks_established_flows_again() {
    let mut p = two_pods("ct-generation", true);
    p.allow(POD_B, IDENTITY_A, 80, TCP);
    for port in [40400, 40401] {
        assert_eq!(
            p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, port, 80, SYN), 0).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(
            p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 80, port, SYN | ACK), 0).0,
            TC_ACT_REDIRECT
        );
    }
    // A change that still admits the flow: checked again, and it goes on
    // under the new generation.
    p.allow(POD_B, IDENTITY_B, 443, TCP);
    p.bump_policy_generation();
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, 40400, 80, ACK), 0).0,
        TC_ACT_REDIRECT
    );
    let flags = p.ct_flags(POD_A, POD_B, 40400, 80, TCP).unwrap();
    assert_eq!(flags >> CT_GENERATION_SHIFT, 1, "restamped: {flags:#x}");
    // The allow entry revoked: the established flows end at their next
    // packet (Cilium lets them run on; the issue asks for the check).
    p.revoke(POD_B, IDENTITY_A, 80, TCP);
    p.bump_policy_generation();
    for port in [40400, 40401] {
        assert_eq!(
            p.run(PROG_FROM_POD, &tcp(POD_A, POD_B, port, 80, ACK), 0).0,
            TC_ACT_SHOT,
            "flow from port {port}"
        );
    }
    assert_eq!(p.drops(DropReason::Policy), 2);
    // b's answers are no verdict of policy (b is answering a's flow) and
    // still pass; nothing else does.
    assert_eq!(
        p.run(PROG_FROM_POD, &tcp(POD_B, POD_A, 80, 40400, ACK), 0).0,
        TC_ACT_REDIRECT
    );
}
