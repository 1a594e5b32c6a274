//! Names, drop reasons, flags and verdicts of the datapath: the `#define`s
//! and `enum drop_reason` of `ebpf/knit.h`, the map and program names of
//! `ebpf/knit.bpf.c`, and the tc verdicts the programs return.

/// LPM trie: prefix → identity and tunnel endpoint.
pub const MAP_IPCACHE: &str = "knit_ipcache";
/// Hash: local pod IPv4 → [`crate::EndpointValue`].
pub const MAP_ENDPOINTS: &str = "knit_endpoints";
/// Hash: [`crate::PolicyKey`] → 1 (allow entries by identity).
pub const MAP_POLICY: &str = "knit_policy";
/// LPM trie: [`crate::PolicyCidrKey`] → 1 (allow entries by address, ipBlock).
pub const MAP_POLICY_CIDR: &str = "knit_policy_cidr";
/// Hash: [`crate::ServiceKey`] → [`crate::ServiceValue`].
pub const MAP_SERVICES: &str = "knit_services";
/// Hash: [`crate::BackendKey`] → [`crate::BackendValue`].
pub const MAP_BACKENDS: &str = "knit_backends";
/// LRU: socket-level reverse translation.
pub const MAP_SOCK_NAT: &str = "knit_sock_nat";
/// LRU: policy connection tracking ([`crate::CtKey`] → [`crate::CtValue`]).
pub const MAP_CT: &str = "knit_ct";
/// LRU: pods' ends of flows sent into the host stack.
pub const MAP_STACK_FLOWS: &str = "knit_stack_flows";
/// Array of one [`crate::NodeConfig`].
pub const MAP_CONFIG: &str = "knit_config";
/// Array of one [`crate::EncryptionConfig`].
pub const MAP_ENCRYPTION: &str = "knit_encryption";
/// Hash of the tunnel endpoints (wire order) of the nodes with a WireGuard
/// key: outside strict mode, only their packets must come decrypted.
pub const MAP_WIREGUARD_NODES: &str = "knit_wireguard_nodes";
/// `WIREGUARD_NODES_ENTRIES`: what [`MAP_WIREGUARD_NODES`] holds at most.
pub const WIREGUARD_NODES_ENTRIES: u32 = 65536;
/// `REQUIRE_DECRYPTED_NEVER`: `from_tunnel` takes plaintext (no encryption).
pub const REQUIRE_DECRYPTED_NEVER: u32 = 0;
/// `REQUIRE_DECRYPTED_ALWAYS`: only what WireGuard decrypted (strict).
pub const REQUIRE_DECRYPTED_ALWAYS: u32 = 1;
/// `REQUIRE_DECRYPTED_FROM_KEYED`: decrypted from every node in
/// [`MAP_WIREGUARD_NODES`], plaintext from the others.
pub const REQUIRE_DECRYPTED_FROM_KEYED: u32 = 2;
/// Hash of the tunnel endpoints (wire order) of the nodes reached without
/// the tunnel → `NATIVE_PATH_*`.
pub const MAP_NATIVE_NODES: &str = "knit_native_nodes";
/// `NATIVE_NODES_ENTRIES`: what [`MAP_NATIVE_NODES`] holds at most.
pub const NATIVE_NODES_ENTRIES: u32 = 65536;
/// `NATIVE_PATH_ROUTED`: the node's pods are reached through the FIB.
pub const NATIVE_PATH_ROUTED: u32 = 1;
/// `NATIVE_PATH_UNROUTABLE`: native routing, and nothing routes the node's
/// pod CIDRs: packets to them are dropped as `no_route`.
pub const NATIVE_PATH_UNROUTABLE: u32 = 2;
/// Array of `u64` drop counters indexed by [`DropReason`].
pub const MAP_DROPS: &str = "knit_drops";
/// Ring buffer of [`crate::FlowEvent`]s.
pub const MAP_EVENTS: &str = "knit_events";
/// Array of one [`crate::ObserveConfig`]: the event kinds to emit.
pub const MAP_OBSERVE: &str = "knit_observe";
/// Array of one `u64`: events the ring buffer had no room for.
pub const MAP_EVENTS_LOST: &str = "knit_events_lost";
/// `EVENTS_BYTES`: the size of [`MAP_EVENTS`].
pub const EVENTS_BYTES: u32 = 1 << 20;
/// `EVENT_DROP`: a packet was dropped (`reason` a [`DropReason`]).
pub const EVENT_DROP: u8 = 1;
/// `EVENT_POLICY`: policy admitted a flow (`reason` [`VERDICT_ALLOWED`]).
pub const EVENT_POLICY: u8 = 2;
/// `EVENT_TRANSLATION`: a socket's connection to a service VIP got a backend.
pub const EVENT_TRANSLATION: u8 = 3;
/// `VERDICT_ALLOWED`: the reason of an [`EVENT_POLICY`].
pub const VERDICT_ALLOWED: u8 = 1;
/// `EVENT_DIRECTION_NONE`: the direction of an event that is no policy verdict.
pub const EVENT_DIRECTION_NONE: u8 = 2;

/// tc program on the host side of each pod veth (ingress: what pods send).
pub const PROG_FROM_POD: &str = "from_pod";
/// tc program on the host side of each pod veth (egress: what the host forwards in).
pub const PROG_TO_POD: &str = "to_pod";
/// tc program on the VXLAN device (ingress: what other nodes send).
pub const PROG_FROM_TUNNEL: &str = "from_tunnel";
/// tc program on the WireGuard interface (ingress: what WireGuard
/// decrypted), which marks it [`MARK_DECRYPTED`].
pub const PROG_FROM_WIREGUARD: &str = "from_wireguard";

/// tc program on the node's underlay interface (ingress: pods of other
/// nodes, routed natively).
pub const PROG_FROM_NETDEV: &str = "from_netdev";

/// Every tc program, in the order they are loaded.
pub const TC_PROGRAMS: [&str; 5] = [
    PROG_FROM_POD,
    PROG_TO_POD,
    PROG_FROM_TUNNEL,
    PROG_FROM_WIREGUARD,
    PROG_FROM_NETDEV,
];

/// `MARK_DECRYPTED_MASK`: the skb mark bits Knit uses.
pub const MARK_DECRYPTED_MASK: u32 = 0x0f00;
/// `MARK_DECRYPTED`: the mark of a packet WireGuard decrypted.
pub const MARK_DECRYPTED: u32 = 0x0b00;

/// `ENDPOINT_F_POLICY`: a NetworkPolicy selects the pod for ingress.
pub const ENDPOINT_F_POLICY: u32 = 1;
/// `ENDPOINT_F_EGRESS`: a NetworkPolicy selects the pod for egress.
pub const ENDPOINT_F_EGRESS: u32 = 2;
/// `CT_F_EGRESS`: a local pod opened this tuple (its first packet, a SYN).
pub const CT_F_EGRESS: u32 = 1;
/// `CT_F_ALLOWED`: ingress policy admitted this tuple.
pub const CT_F_ALLOWED: u32 = 2;
/// `CT_F_INGRESS`: a peer opened this tuple into a local pod (its replies pass).
pub const CT_F_INGRESS: u32 = 4;
/// `CT_F_EGRESS_ALLOWED`: egress policy admitted this tuple.
pub const CT_F_EGRESS_ALLOWED: u32 = 8;
/// `CT_F_FIN`: a TCP FIN was seen in this direction (the flow is closing).
pub const CT_F_FIN: u32 = 16;
/// `CT_F_RST`: a TCP RST was seen in this direction (the flow is over).
pub const CT_F_RST: u32 = 32;
/// Where the policy generation of a verdict starts in `CtValue::flags`.
pub const CT_GENERATION_SHIFT: u32 = 8;
/// How many bits of the policy generation a `CtValue` keeps.
pub const CT_GENERATION_BITS: u32 = 24;
/// Seconds a TCP flow past its SYN stays tracked after its last packet.
pub const CT_LIFETIME_TCP: u32 = 21600;
/// Seconds a TCP flow still opening stays tracked after its last packet.
pub const CT_LIFETIME_SYN: u32 = 60;
/// Seconds a closing TCP flow (FIN or RST seen) stays tracked.
pub const CT_LIFETIME_CLOSING: u32 = 10;
/// Seconds any other flow (UDP, ICMP) stays tracked after its last packet.
pub const CT_LIFETIME_OTHER: u32 = 60;
/// `STACK_FLOW_OPENED`: a pod opened this flow into the host stack; its
/// replies arriving from the tunnel are handed to the stack.
pub const STACK_FLOW_OPENED: u8 = 1;
/// `STACK_FLOW_SERVED`: the host stack brought a UDP request to this pod
/// port; what the pod sends from it are answers, not flows it opens.
pub const STACK_FLOW_SERVED: u8 = 2;
/// `POLICY_ALLOW`: the value of an entry that admits.
pub const POLICY_ALLOW: u8 = 1;
/// `POLICY_DENY`: the value of an entry that drops, whatever else admits.
pub const POLICY_DENY: u8 = 2;
/// `POLICY_INGRESS`: an entry for what reaches the selected pod.
pub const POLICY_INGRESS: u8 = 0;
/// `POLICY_EGRESS`: an entry for what the selected pod sends.
pub const POLICY_EGRESS: u8 = 1;

/// `TC_ACT_OK`: the packet goes on its way (the host stack).
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`: dropped (and counted under a [`DropReason`]).
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`: handed to another device (a pod, the tunnel).
pub const TC_ACT_REDIRECT: u32 = 7;

/// `enum drop_reason`: why a program dropped a packet, the index of its
/// counter in [`MAP_DROPS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum DropReason {
    /// Ingress policy does not admit the packet.
    Policy = 0,
    /// A pod sent from an address that is not one of its endpoints.
    UnknownSource = 1,
    /// A connect to a service VIP with no backend (socket programs).
    NoBackend = 2,
    /// Nowhere to send it: no local endpoint, or no tunnel device.
    NoRoute = 3,
    /// Too short or inconsistent to parse, or rewriting it failed.
    Malformed = 4,
    /// Setting the tunnel metadata failed.
    RedirectFailed = 5,
    /// Egress policy of the sending pod does not admit the packet.
    EgressPolicy = 6,
    /// From the tunnel, with an inner source the ipcache does not place on
    /// the node that sent it (a forged identity), or, with encryption on,
    /// not through WireGuard (an unauthenticated sender).
    ForgedTunnelSource = 7,
}

/// `DROP_REASONS`: slots in [`MAP_DROPS`] (room for new reasons).
pub const DROP_REASON_SLOTS: u32 = 8;

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [Self; 8] = [
        Self::Policy,
        Self::UnknownSource,
        Self::NoBackend,
        Self::NoRoute,
        Self::Malformed,
        Self::RedirectFailed,
        Self::EgressPolicy,
        Self::ForgedTunnelSource,
    ];

    /// The metric label (`knit_agent_drops{name=…}`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Policy => "policy_denied",
            Self::UnknownSource => "unknown_source",
            Self::NoBackend => "no_backend",
            Self::NoRoute => "no_route",
            Self::Malformed => "malformed",
            Self::RedirectFailed => "redirect_failed",
            Self::EgressPolicy => "egress_policy_denied",
            Self::ForgedTunnelSource => "forged_tunnel_source",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn enum_values_and_flags_match_c() {
        let c: BTreeMap<&str, u32> = crate::C_LAYOUT
            .lines()
            .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
            .map(|l| {
                let (name, n) = l.split_once(' ').expect("name value");
                (name, n.parse().expect("number"))
            })
            .collect();
        let mut rust = BTreeMap::from([
            ("ENDPOINT_F_POLICY", ENDPOINT_F_POLICY),
            ("ENDPOINT_F_EGRESS", ENDPOINT_F_EGRESS),
            ("CT_F_EGRESS", CT_F_EGRESS),
            ("CT_F_ALLOWED", CT_F_ALLOWED),
            ("CT_F_INGRESS", CT_F_INGRESS),
            ("CT_F_EGRESS_ALLOWED", CT_F_EGRESS_ALLOWED),
            ("CT_F_FIN", CT_F_FIN),
            ("CT_F_RST", CT_F_RST),
            ("CT_GENERATION_SHIFT", CT_GENERATION_SHIFT),
            ("CT_GENERATION_BITS", CT_GENERATION_BITS),
            ("CT_LIFETIME_TCP", CT_LIFETIME_TCP),
            ("CT_LIFETIME_SYN", CT_LIFETIME_SYN),
            ("CT_LIFETIME_CLOSING", CT_LIFETIME_CLOSING),
            ("CT_LIFETIME_OTHER", CT_LIFETIME_OTHER),
            ("STACK_FLOW_OPENED", u32::from(STACK_FLOW_OPENED)),
            ("STACK_FLOW_SERVED", u32::from(STACK_FLOW_SERVED)),
            ("POLICY_ALLOW", u32::from(POLICY_ALLOW)),
            ("POLICY_DENY", u32::from(POLICY_DENY)),
            ("POLICY_INGRESS", u32::from(POLICY_INGRESS)),
            ("POLICY_EGRESS", u32::from(POLICY_EGRESS)),
            ("POLICY_ENTRIES", crate::POLICY_CAPACITY as u32),
            ("POLICY_CIDR_ENTRIES", crate::POLICY_CIDR_CAPACITY as u32),
            ("CT_ENTRIES", crate::CT_CAPACITY as u32),
            ("DROP_REASONS", DROP_REASON_SLOTS),
            ("MARK_DECRYPTED_MASK", MARK_DECRYPTED_MASK),
            ("MARK_DECRYPTED", MARK_DECRYPTED),
            ("REQUIRE_DECRYPTED_NEVER", REQUIRE_DECRYPTED_NEVER),
            ("REQUIRE_DECRYPTED_ALWAYS", REQUIRE_DECRYPTED_ALWAYS),
            ("REQUIRE_DECRYPTED_FROM_KEYED", REQUIRE_DECRYPTED_FROM_KEYED),
            ("WIREGUARD_NODES_ENTRIES", WIREGUARD_NODES_ENTRIES),
            ("NATIVE_PATH_ROUTED", NATIVE_PATH_ROUTED),
            ("NATIVE_PATH_UNROUTABLE", NATIVE_PATH_UNROUTABLE),
            ("NATIVE_NODES_ENTRIES", NATIVE_NODES_ENTRIES),
            ("EVENT_DROP", u32::from(EVENT_DROP)),
            ("EVENT_POLICY", u32::from(EVENT_POLICY)),
            ("EVENT_TRANSLATION", u32::from(EVENT_TRANSLATION)),
            ("VERDICT_ALLOWED", u32::from(VERDICT_ALLOWED)),
            ("EVENT_DIRECTION_NONE", u32::from(EVENT_DIRECTION_NONE)),
            ("EVENTS_BYTES", EVENTS_BYTES),
        ]);
        for (reason, c_name) in DropReason::ALL.into_iter().zip([
            "DROP_POLICY",
            "DROP_UNKNOWN_SOURCE",
            "DROP_NO_BACKEND",
            "DROP_NO_ROUTE",
            "DROP_MALFORMED",
            "DROP_REDIRECT_FAILED",
            "DROP_EGRESS_POLICY",
            "DROP_FORGED_TUNNEL_SOURCE",
        ]) {
            rust.insert(c_name, reason as u32);
        }
        assert_eq!(rust, c);
        assert!(DropReason::ALL.len() as u32 <= DROP_REASON_SLOTS);
    }
}
