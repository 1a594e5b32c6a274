//! Native routing in the tc programs, run by the kernel on crafted packets
//! with `BPF_PROG_TEST_RUN`: `from_pod` towards a node in
//! `knit_native_nodes` (through the FIB, or dropped as `no_route` when the
//! node is unroutable), and `from_netdev` taking a remote pod's packet off
//! the underlay. The FIB cases run on a thread in a network namespace of
//! the test's own, with a dummy underlay interface, a route to the remote
//! pod CIDR and the next hop's MAC: the kernel's answer is then known
//! exactly (and no host route is consulted). Needs root.

mod bpf_harness;

use std::net::Ipv4Addr;
use std::process::Command;

use bpf_harness::*;

const UNDERLAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x77, 0x01];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x77, 0x02];

/// The IPv4 header checksum of `header` (20 bytes), as it should be.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .enumerate()
        .filter(|(i, _)| *i != 5)
        .map(|(_, w)| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn with_checksum(mut p: Vec<u8>) -> Vec<u8> {
    let c = checksum(&p[14..34]);
    p[24..26].copy_from_slice(&c.to_be_bytes());
    p
}

fn ip(args: &str) {
    let out = Command::new("ip").args(args.split(' ')).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside a new network namespace holding
/// `knitul0` (one end of a veth pair, 192.168.77.1/24, MAC UNDERLAY_MAC), a
/// route to 10.2.0.0/16 via 192.168.77.2 and, when `neighbour`, that next
/// hop's MAC, forwarding on. The namespace goes with the thread.
fn in_underlay_netns<T: Send + 'static>(neighbour: bool, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        ip("link set lo up");
        // A node forwards (the FIB refuses a lookup from a device that does
        // not: BPF_FIB_LKUP_RET_FWD_DISABLED).
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("forwarding");
        ip("link add knitul0 address 02:00:00:00:77:01 type veth peer name knitul1");
        ip("addr add 192.168.77.1/24 dev knitul0");
        ip("link set knitul1 up");
        ip("link set knitul0 up");
        ip("route add 10.2.0.0/16 via 192.168.77.2");
        if neighbour {
            ip("neigh add 192.168.77.2 lladdr 02:00:00:00:77:02 dev knitul0 nud permanent");
        }
        f()
    })
    .join()
    .expect("netns thread")
}

fn native_pods(tag: &str, path: u32) -> Programs {
    let mut p = two_pods(tag, false);
    p.tunnel_device(7);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    p.native_node(REMOTE_NODE, path);
    p
}

#[test]
fn from_pod_forwards_to_a_routed_node_through_the_fib_ttl_less_one() {
    let (verdict, out, drops) = in_underlay_netns(true, || {
        let p = native_pods("native-fib", NATIVE_PATH_ROUTED);
        let syn = with_checksum(tcp(POD_A, REMOTE_POD, 40100, 80, SYN));
        let (verdict, out) = p.run(PROG_FROM_POD, &syn, 0);
        (verdict, out, p.drops(DropReason::NoRoute))
    });
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected to the underlay interface");
    assert_eq!(drops, 0);
    assert_eq!(&out[0..6], &NEXT_HOP_MAC[..], "to the next hop's MAC");
    assert_eq!(&out[6..12], &UNDERLAY_MAC[..], "from the underlay interface's");
    assert_eq!(out[22], 63, "TTL less one");
    assert_eq!(
        u16::from_be_bytes([out[24], out[25]]),
        checksum(&out[14..34]),
        "the header checksum follows the TTL"
    );
    assert_eq!(
        &out[30..34],
        &REMOTE_POD.octets()[..],
        "not encapsulated, not translated"
    );
    assert_eq!(&out[26..30], &POD_A.octets()[..], "not masqueraded");
}

#[test]
fn from_pod_resolves_an_unknown_next_hop_with_redirect_neigh() {
    let (verdict, out) = in_underlay_netns(false, || {
        let p = native_pods("native-neigh", NATIVE_PATH_ROUTED);
        p.run(
            PROG_FROM_POD,
            &with_checksum(tcp(POD_A, REMOTE_POD, 40101, 80, SYN)),
            0,
        )
    });
    assert_eq!(verdict, TC_ACT_REDIRECT, "bpf_redirect_neigh resolves the MAC");
    assert_eq!(out[22], 63);
}

#[test]
fn from_pod_drops_what_the_fib_cannot_route_and_what_an_unroutable_node_hosts() {
    let (no_fib_route, unroutable) = in_underlay_netns(true, || {
        let mut p = native_pods("native-unroutable", NATIVE_PATH_ROUTED);
        let elsewhere = Ipv4Addr::new(10, 3, 1, 20);
        p.route(elsewhere, (3 << 16) | 5, Some(REMOTE_NODE));
        let no_fib_route = p.run(PROG_FROM_POD, &tcp(POD_A, elsewhere, 40102, 80, SYN), 0).0;
        let before = p.drops(DropReason::NoRoute);
        p.native_node(REMOTE_NODE, NATIVE_PATH_UNROUTABLE);
        let unroutable = p.run(PROG_FROM_POD, &tcp(POD_A, REMOTE_POD, 40103, 80, SYN), 0).0;
        assert_eq!((before, p.drops(DropReason::NoRoute)), (1, 2));
        (no_fib_route, unroutable)
    });
    assert_eq!(no_fib_route, TC_ACT_SHOT, "no route in the FIB: no_route");
    assert_eq!(unroutable, TC_ACT_SHOT, "native mode, node unroutable: no_route");
}

#[test]
fn from_pod_leaves_a_packet_at_its_last_hop_to_the_stack() {
    let p = native_pods("native-ttl", NATIVE_PATH_ROUTED);
    let mut syn = tcp(POD_A, REMOTE_POD, 40104, 80, SYN);
    syn[22] = 1;
    assert_eq!(
        p.run(PROG_FROM_POD, &syn, 0).0,
        TC_ACT_OK,
        "the stack sends time exceeded"
    );
}

#[test]
fn from_pod_tunnels_to_a_node_not_in_the_native_map() {
    let mut p = two_pods("native-other", false);
    p.tunnel_device(7);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    p.native_node(Ipv4Addr::new(192, 168, 50, 3), NATIVE_PATH_ROUTED);
    let (verdict, out) = p.run(PROG_FROM_POD, &tcp(POD_A, REMOTE_POD, 40105, 80, SYN), 0);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out[22], 64,
        "encapsulated as it is: the TTL is the inner packet's"
    );
}

#[test]
fn from_netdev_delivers_a_remote_pods_packet_with_its_ipcache_identity() {
    let mut p = two_pods("netdev", true);
    let remote_identity = (2 << 16) | 5;
    p.route(REMOTE_POD, remote_identity, Some(REMOTE_NODE));
    let syn = tcp(REMOTE_POD, POD_B, 40106, 80, SYN);
    assert_eq!(
        p.run(PROG_FROM_NETDEV, &syn, 0).0,
        TC_ACT_SHOT,
        "b's policy admits nobody yet"
    );
    assert_eq!(p.drops(DropReason::Policy), 1);
    p.allow(POD_B, remote_identity, 80, TCP);
    let (verdict, out) = p.run(PROG_FROM_NETDEV, &syn, 0);
    assert_eq!(verdict, TC_ACT_REDIRECT, "into b's namespace");
    assert_eq!((&out[0..6], &out[6..12]), (&MAC_B[..], &NODE_MAC_B[..]));
    // b's reply flow is known: its answer from b's node would pass.
    assert!(p.ct_flags(REMOTE_POD, POD_B, 40106, 80, TCP).is_some());
}

#[test]
fn from_netdev_leaves_everything_else_to_the_host() {
    let mut p = two_pods("netdev-host", true);
    p.route(REMOTE_POD, (2 << 16) | 5, Some(REMOTE_NODE));
    // The node's own traffic, a packet from outside the mesh or from a
    // local address, a packet to an address that is no local pod, ARP.
    for (src, dst) in [
        (REMOTE_NODE, Ipv4Addr::new(192, 168, 50, 1)),
        (OUTSIDE, POD_B),
        (POD_A, POD_B),
        (REMOTE_POD, OUTSIDE),
    ] {
        assert_eq!(
            p.run(PROG_FROM_NETDEV, &tcp(src, dst, 40107, 80, SYN), 0).0,
            TC_ACT_OK,
            "{src} -> {dst}"
        );
    }
    let mut arp = tcp(REMOTE_POD, POD_B, 1, 2, SYN);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(p.run(PROG_FROM_NETDEV, &arp, 0).0, TC_ACT_OK);
    assert_eq!(
        p.drops(DropReason::Policy),
        0,
        "the host's own traffic meets no pod policy here"
    );
}
