//! The Rust side of `ebpf/knit.h`'s structs: one `#[repr(C)]` type per map
//! key and value, byte for byte. `tests::layouts_match_c` compares every
//! size and offset with what the C compiler says, so the two cannot drift
//! apart.
//!
//! Addresses and ports are kept in network byte order (as `[u8; N]`-like
//! `u32`/`u16` holding the wire bytes), everything else in host order.
// aya's `Pod` marker is an `unsafe impl`; see the SAFETY note below.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;

/// Wire-order `u32` of an address.
pub fn addr_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The address a wire-order `u32` holds.
pub fn addr_from_be(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// Wire-order `u16` of a port.
pub fn port_be(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The port a wire-order `u16` holds.
pub fn port_from_be(raw: u16) -> u16 {
    u16::from_be_bytes(raw.to_ne_bytes())
}

/// `struct ipcache_key` (the LPM key's data part; aya adds `prefixlen`).
pub type IpcacheAddr = u32;

/// `struct ipcache_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    /// Security identity of the prefix.
    pub identity: u32,
    /// Wire-order underlay address of the hosting node; 0 on this node.
    pub tunnel_endpoint: u32,
}

/// `struct endpoint_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    /// Host side of the pod's veth.
    pub ifindex: u32,
    /// The pod's identity.
    pub identity: u32,
    /// `ENDPOINT_F_*`.
    pub flags: u32,
    /// MAC of the pod's interface.
    pub mac: [u8; 6],
    /// MAC of the host side of the pod's veth.
    pub node_mac: [u8; 6],
}

/// `struct stack_flow_key`: a local pod's end of a flow it sent into the
/// host stack (written by the programs only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackFlowKey {
    /// Wire-order pod address.
    pub addr: u32,
    /// Wire-order pod port.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: u8,
}

/// `struct policy_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// Wire-order address of the selected pod.
    pub endpoint: u32,
    /// Allowed peer identity (the source for ingress, the destination for
    /// egress); 0 = any.
    pub identity: u32,
    /// Host-order destination port; 0 = any.
    pub dport: u16,
    /// IP protocol; 0 = any.
    pub proto: u8,
    /// [`crate::POLICY_INGRESS`] or [`crate::POLICY_EGRESS`].
    pub direction: u8,
}

/// `struct policy_cidr_key` without `prefixlen` (aya's LPM `Key` adds it;
/// it is 64 + the prefix length of `addr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyCidrKey {
    /// Wire-order address of the selected pod.
    pub endpoint: u32,
    /// [`crate::POLICY_INGRESS`] or [`crate::POLICY_EGRESS`].
    pub direction: u8,
    /// IP protocol; 0 = any.
    pub proto: u8,
    /// Host-order destination port; 0 = any.
    pub dport: u16,
    /// Wire-order peer address (its prefix is what the entry matches).
    pub addr: u32,
}

/// `struct service_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Wire-order VIP.
    pub vip: u32,
    /// Wire-order port.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: u8,
}

/// `struct service_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Key of the service's backend slots.
    pub service_id: u32,
    /// Valid slots.
    pub count: u32,
}

/// `struct backend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Service.
    pub service_id: u32,
    /// Slot, `0..count`.
    pub slot: u32,
}

/// `struct backend_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendValue {
    /// Wire-order backend address.
    pub addr: u32,
    /// Wire-order backend port.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// `struct sock_nat_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockNatKey {
    /// Socket cookie.
    pub cookie: u64,
    /// Wire-order address.
    pub addr: u32,
    /// Wire-order port.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// `struct sock_nat_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockNatValue {
    /// Wire-order address.
    pub addr: u32,
    /// Wire-order port.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// `struct ct_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Wire-order source.
    pub saddr: u32,
    /// Wire-order destination.
    pub daddr: u32,
    /// Wire-order source port.
    pub sport: u16,
    /// Wire-order destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// `struct ct_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// `CT_F_*`.
    pub flags: u32,
    /// `CLOCK_MONOTONIC` second from which the entry no longer counts (0:
    /// until the tuple's next packet sets it).
    pub expires: u32,
}

/// `struct node_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// Index of the node's VXLAN device.
    pub tunnel_ifindex: u32,
    /// Bumped after every change of the policy maps (verdicts remembered
    /// under another generation are checked again).
    pub policy_generation: u32,
}

/// `struct encryption_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EncryptionConfig {
    /// What `from_tunnel` takes only decrypted: nothing
    /// ([`crate::REQUIRE_DECRYPTED_NEVER`]), everything (`_ALWAYS`), or the
    /// packets of nodes with a key (`_FROM_KEYED`).
    pub require_decrypted: u32,
}

/// `struct flow_event`: one record of the `knit_events` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    /// `CLOCK_MONOTONIC` nanoseconds when the program emitted it.
    pub timestamp: u64,
    /// Wire-order source address (0 for a socket's translation).
    pub saddr: u32,
    /// Wire-order destination (the backend of a translation, the VIP of a
    /// `no_backend` drop).
    pub daddr: u32,
    /// Identity of the source, 0 if unknown.
    pub src_identity: u32,
    /// Identity of the destination, 0 if unknown.
    pub dst_identity: u32,
    /// Wire-order service VIP of a translation.
    pub orig_daddr: u32,
    /// Wire-order source port.
    pub sport: u16,
    /// Wire-order destination port.
    pub dport: u16,
    /// Wire-order service port of a translation.
    pub orig_dport: u16,
    /// `EVENT_*`.
    pub kind: u8,
    /// A [`crate::DropReason`] of a drop, `VERDICT_ALLOWED` of a policy event.
    pub reason: u8,
    /// `POLICY_INGRESS`, `POLICY_EGRESS` or `EVENT_DIRECTION_NONE`.
    pub direction: u8,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: u16,
}

impl FlowEvent {
    /// Reads a record as the ring buffer hands it over; `None` if it is
    /// shorter than a `FlowEvent`.
    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        let u16_at = |o: usize| u16::from_ne_bytes([raw[o], raw[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        if raw.len() < std::mem::size_of::<Self>() {
            return None;
        }
        Some(Self {
            timestamp: u64::from_ne_bytes(raw[..8].try_into().ok()?),
            saddr: u32_at(8),
            daddr: u32_at(12),
            src_identity: u32_at(16),
            dst_identity: u32_at(20),
            orig_daddr: u32_at(24),
            sport: u16_at(28),
            dport: u16_at(30),
            orig_dport: u16_at(32),
            kind: raw[34],
            reason: raw[35],
            direction: raw[36],
            proto: raw[37],
            pad: u16_at(38),
        })
    }
}

/// `struct observe_config`: which event kinds the programs emit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ObserveConfig {
    /// `1 << EVENT_*` of every kind to emit.
    pub events: u32,
}

/// Entries of `knit_ipcache` (`max_entries` in `ebpf/knit.bpf.c`).
pub const IPCACHE_CAPACITY: usize = 1 << 20;

/// Tuples `knit_ct` holds (`CT_ENTRIES`).
pub const CT_CAPACITY: usize = 1 << 17;

/// Entries `knit_policy` holds (`POLICY_ENTRIES`).
pub const POLICY_CAPACITY: usize = 1 << 18;

/// Entries `knit_policy_cidr` holds (`POLICY_CIDR_ENTRIES`).
pub const POLICY_CIDR_CAPACITY: usize = 1 << 16;

// SAFETY: every type is `#[repr(C)]`, `Copy`, made of integers only, with
// explicit padding fields, so any bit pattern is valid and no byte is
// uninitialised.
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for EndpointValue {}
unsafe impl aya::Pod for StackFlowKey {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyCidrKey {}
unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for ServiceValue {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for BackendValue {}
unsafe impl aya::Pod for SockNatKey {}
unsafe impl aya::Pod for SockNatValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for NodeConfig {}
unsafe impl aya::Pod for EncryptionConfig {}
unsafe impl aya::Pod for ObserveConfig {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::mem::{offset_of, size_of};

    use super::*;

    use crate::C_LAYOUT;

    macro_rules! layout {
        ($out:ident, $c:literal, $t:ty, [$($cf:literal => $f:ident),*]) => {
            $out.insert($c.to_string(), size_of::<$t>());
            $( $out.insert(format!("{}.{}", $c, $cf), offset_of!($t, $f)); )*
        };
    }

    #[test]
    fn layouts_match_c() {
        let c: BTreeMap<String, usize> = C_LAYOUT
            .lines()
            .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
            .map(|l| {
                let (name, n) = l.split_once(' ').expect("name value");
                (name.to_string(), n.parse().expect("number"))
            })
            .collect();
        let mut rust = BTreeMap::new();
        rust.insert("ipcache_key".to_string(), 8);
        rust.insert("ipcache_key.prefixlen".to_string(), 0);
        rust.insert("ipcache_key.addr".to_string(), 4);
        layout!(rust, "ipcache_value", IpcacheValue, ["identity" => identity, "tunnel_endpoint" => tunnel_endpoint]);
        layout!(rust, "endpoint_value", EndpointValue, ["ifindex" => ifindex, "identity" => identity, "flags" => flags, "mac" => mac, "node_mac" => node_mac]);
        layout!(rust, "stack_flow_key", StackFlowKey, ["addr" => addr, "port" => port, "proto" => proto]);
        layout!(rust, "policy_key", PolicyKey, ["endpoint" => endpoint, "identity" => identity, "dport" => dport, "proto" => proto, "direction" => direction]);
        // `prefixlen` leads the C key; aya's LPM `Key` puts it before the data.
        rust.insert("policy_cidr_key".to_string(), 4 + size_of::<PolicyCidrKey>());
        rust.insert("policy_cidr_key.prefixlen".to_string(), 0);
        for (field, offset) in [
            ("endpoint", offset_of!(PolicyCidrKey, endpoint)),
            ("direction", offset_of!(PolicyCidrKey, direction)),
            ("proto", offset_of!(PolicyCidrKey, proto)),
            ("dport", offset_of!(PolicyCidrKey, dport)),
            ("addr", offset_of!(PolicyCidrKey, addr)),
        ] {
            rust.insert(format!("policy_cidr_key.{field}"), 4 + offset);
        }
        layout!(rust, "service_key", ServiceKey, ["vip" => vip, "port" => port, "proto" => proto]);
        layout!(rust, "service_value", ServiceValue, ["service_id" => service_id, "count" => count]);
        layout!(rust, "backend_key", BackendKey, ["service_id" => service_id, "slot" => slot]);
        layout!(rust, "backend_value", BackendValue, ["addr" => addr, "port" => port]);
        layout!(rust, "sock_nat_key", SockNatKey, ["cookie" => cookie, "addr" => addr, "port" => port]);
        layout!(rust, "sock_nat_value", SockNatValue, ["addr" => addr, "port" => port]);
        layout!(rust, "ct_key", CtKey, ["saddr" => saddr, "daddr" => daddr, "sport" => sport, "dport" => dport, "proto" => proto]);
        layout!(rust, "ct_value", CtValue, ["flags" => flags, "expires" => expires]);
        layout!(rust, "node_config", NodeConfig, ["tunnel_ifindex" => tunnel_ifindex, "policy_generation" => policy_generation]);
        layout!(rust, "encryption_config", EncryptionConfig, ["require_decrypted" => require_decrypted]);
        layout!(rust, "flow_event", FlowEvent, ["timestamp" => timestamp, "saddr" => saddr, "daddr" => daddr, "src_identity" => src_identity, "dst_identity" => dst_identity, "orig_daddr" => orig_daddr, "sport" => sport, "dport" => dport, "orig_dport" => orig_dport, "kind" => kind, "reason" => reason, "direction" => direction, "proto" => proto]);
        layout!(rust, "observe_config", ObserveConfig, ["events" => events]);
        assert_eq!(rust, c);
    }

    #[test]
    fn a_flow_event_reads_back_from_its_bytes() {
        let e = FlowEvent {
            timestamp: 0x0102_0304_0506_0708,
            saddr: 1,
            daddr: 2,
            src_identity: 3,
            dst_identity: 4,
            orig_daddr: 5,
            sport: 6,
            dport: 7,
            orig_dport: 8,
            kind: 9,
            reason: 10,
            direction: 11,
            proto: 12,
            pad: 0,
        };
        let mut raw = Vec::new();
        raw.extend_from_slice(&e.timestamp.to_ne_bytes());
        for v in [e.saddr, e.daddr, e.src_identity, e.dst_identity, e.orig_daddr] {
            raw.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [e.sport, e.dport, e.orig_dport] {
            raw.extend_from_slice(&v.to_ne_bytes());
        }
        raw.extend_from_slice(&[9, 10, 11, 12, 0, 0]);
        assert_eq!(raw.len(), size_of::<FlowEvent>());
        assert_eq!(FlowEvent::from_bytes(&raw), Some(e));
        assert_eq!(FlowEvent::from_bytes(&raw[..39]), None);
    }

    #[test]
    fn byte_order_helpers_round_trip() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(addr_be(ip).to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(addr_from_be(addr_be(ip)), ip);
        assert_eq!(port_be(8080).to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(port_from_be(port_be(8080)), 8080);
    }
}
