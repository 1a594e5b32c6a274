//! The harness of the BPF program tests (`bpf_programs.rs`,
//! `bpf_conntrack.rs`): the datapath object loaded without attaching
//! anything, maps pinned in a bpffs of the test's own, helpers that fill
//! the maps, craft packets and run one through a program with
//! `BPF_PROG_TEST_RUN`. Each test file uses a part of it.
#![allow(dead_code)]

pub use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use knit_agent::datapath::loader::OBJECT;
pub use knit_datapath_common::*;
use knit_testkit::bpffs::BpffsRoot;

pub const IDENTITY_A: u32 = (1 << 16) | 10;
pub const IDENTITY_B: u32 = (1 << 16) | 11;
pub const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 10);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 11);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 2, 1, 20);
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const NODE_MAC_B: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0b];
/// The interface `BPF_PROG_TEST_RUN` runs every packet on (the test
/// namespace's `lo`): every pod of these tests sits behind it, unless a
/// test moves one ([`Programs::endpoint_on`]).
pub const LOOPBACK: u32 = 1;
pub const TCP: u8 = 6;
pub const TCP_PROTO: u8 = TCP;
pub const UDP: u8 = 17;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// The datapath loaded without attaching anything; its maps are pinned in
/// a bpffs of this test's own, unmounted on drop (after the programs and
/// maps are closed).
pub struct Programs {
    ebpf: Ebpf,
    _pins: BpffsRoot,
}

impl Programs {
    pub fn load(tag: &str) -> Self {
        let pins =
            BpffsRoot::mount(std::env::temp_dir().join(format!("knit-bpftest-{}-{tag}", std::process::id())));
        // The test runner has no tunnel metadata: from_tunnel reads the
        // outer source from cb[0] instead (`Programs::run_from`).
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.path())
            .override_global("knit_test_outer_source_in_cb", &1u32, true)
            .load(OBJECT)
            .expect("load knit.bpf.o");
        for name in TC_PROGRAMS {
            let program: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            knit_agent::datapath::loader::verify(|| program.load())
                .unwrap_or_else(|e| panic!("verifier refused {name}: {e}"));
        }
        Self { ebpf, _pins: pins }
    }

    pub fn endpoint(&mut self, ip: Ipv4Addr, identity: u32, policy: bool, mac: [u8; 6], node_mac: [u8; 6]) {
        let flags = if policy { ENDPOINT_F_POLICY } else { 0 };
        self.endpoint_flags(ip, identity, flags, mac, node_mac);
    }

    pub fn endpoint_flags(
        &mut self,
        ip: Ipv4Addr,
        identity: u32,
        flags: u32,
        mac: [u8; 6],
        node_mac: [u8; 6],
    ) {
        let mut map: HashMap<&mut MapData, u32, EndpointValue> =
            HashMap::try_from(self.ebpf.map_mut(MAP_ENDPOINTS).unwrap()).unwrap();
        let value = EndpointValue {
            ifindex: LOOPBACK,
            identity,
            flags,
            mac,
            node_mac,
        };
        map.insert(addr_be(ip), value, 0).unwrap();
    }

    /// Moves the endpoint `ip` behind interface `ifindex` (another veth
    /// than the one the test's packets arrive on).
    pub fn endpoint_on(&mut self, ip: Ipv4Addr, ifindex: u32) {
        let mut map: HashMap<&mut MapData, u32, EndpointValue> =
            HashMap::try_from(self.ebpf.map_mut(MAP_ENDPOINTS).unwrap()).unwrap();
        let mut value = map.get(&addr_be(ip), 0).unwrap();
        value.ifindex = ifindex;
        map.insert(addr_be(ip), value, 0).unwrap();
    }

    pub fn route(&mut self, ip: Ipv4Addr, identity: u32, tunnel: Option<Ipv4Addr>) {
        self.route_prefix((ip, 32), identity, tunnel);
    }

    /// An ipcache entry for a prefix (a node's pod CIDR).
    pub fn route_prefix(&mut self, (net, len): (Ipv4Addr, u32), identity: u32, tunnel: Option<Ipv4Addr>) {
        let mut map: LpmTrie<&mut MapData, u32, IpcacheValue> =
            LpmTrie::try_from(self.ebpf.map_mut(MAP_IPCACHE).unwrap()).unwrap();
        let value = IpcacheValue {
            identity,
            tunnel_endpoint: tunnel.map(addr_be).unwrap_or(0),
        };
        map.insert(&Key::new(len, addr_be(net)), value, 0).unwrap();
    }

    pub fn allow(&mut self, endpoint: Ipv4Addr, identity: u32, dport: u16, proto: u8) {
        self.allow_in(POLICY_INGRESS, endpoint, identity, dport, proto);
    }

    pub fn allow_in(&mut self, direction: u8, endpoint: Ipv4Addr, identity: u32, dport: u16, proto: u8) {
        self.entry(POLICY_ALLOW, direction, endpoint, identity, dport, proto);
    }

    pub fn entry(
        &mut self,
        verdict: u8,
        direction: u8,
        endpoint: Ipv4Addr,
        identity: u32,
        dport: u16,
        proto: u8,
    ) {
        let mut map: HashMap<&mut MapData, PolicyKey, u8> =
            HashMap::try_from(self.ebpf.map_mut(MAP_POLICY).unwrap()).unwrap();
        let key = PolicyKey {
            endpoint: addr_be(endpoint),
            identity,
            dport,
            proto,
            direction,
        };
        map.insert(key, verdict, 0).unwrap();
    }

    pub fn allow_cidr(
        &mut self,
        direction: u8,
        endpoint: Ipv4Addr,
        net: (Ipv4Addr, u32),
        dport: u16,
        proto: u8,
    ) {
        self.cidr_entry(POLICY_ALLOW, direction, endpoint, net, dport, proto);
    }

    pub fn cidr_entry(
        &mut self,
        verdict: u8,
        direction: u8,
        endpoint: Ipv4Addr,
        net: (Ipv4Addr, u32),
        dport: u16,
        proto: u8,
    ) {
        let mut map: LpmTrie<&mut MapData, PolicyCidrKey, u8> =
            LpmTrie::try_from(self.ebpf.map_mut(MAP_POLICY_CIDR).unwrap()).unwrap();
        let key = PolicyCidrKey {
            endpoint: addr_be(endpoint),
            direction,
            proto,
            dport,
            addr: addr_be(net.0),
        };
        map.insert(&Key::new(64 + net.1, key), verdict, 0).unwrap();
    }

    pub fn tunnel_device(&mut self, ifindex: u32) {
        self.update_config(|c| c.tunnel_ifindex = ifindex);
    }

    /// Marks the node at `tunnel_endpoint` as reached natively with
    /// `path` (`NATIVE_PATH_*`).
    pub fn native_node(&mut self, tunnel_endpoint: Ipv4Addr, path: u32) {
        let mut map: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(MAP_NATIVE_NODES).unwrap()).unwrap();
        map.insert(addr_be(tunnel_endpoint), path, 0).unwrap();
    }

    /// What the agent does after it changed the policy maps.
    pub fn bump_policy_generation(&mut self) {
        self.update_config(|c| c.policy_generation += 1);
    }

    /// What the agent does with encryption on (or off): what `from_tunnel`
    /// takes only decrypted (`REQUIRE_DECRYPTED_*`).
    pub fn require_decrypted(&mut self, require_decrypted: u32) {
        let mut map: Array<&mut MapData, EncryptionConfig> =
            Array::try_from(self.ebpf.map_mut(MAP_ENCRYPTION).unwrap()).unwrap();
        map.set(0, EncryptionConfig { require_decrypted }, 0).unwrap();
    }

    /// Node `tunnel_endpoint` has a WireGuard key (or not).
    pub fn wireguard_node(&mut self, tunnel_endpoint: Ipv4Addr, keyed: bool) {
        let mut map: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(MAP_WIREGUARD_NODES).unwrap()).unwrap();
        let key = addr_be(tunnel_endpoint);
        if keyed {
            map.insert(key, 1, 0).unwrap();
        } else {
            map.remove(&key).unwrap();
        }
    }

    fn update_config(&mut self, change: impl FnOnce(&mut NodeConfig)) {
        let mut map: Array<&mut MapData, NodeConfig> =
            Array::try_from(self.ebpf.map_mut(MAP_CONFIG).unwrap()).unwrap();
        let mut config = map.get(&0, 0).unwrap();
        change(&mut config);
        map.set(0, config, 0).unwrap();
    }

    /// What the agent does with observation on: the event kinds
    /// (`EVENT_*`) the programs emit.
    pub fn observe(&mut self, kinds: &[u8]) {
        let mut map: Array<&mut MapData, ObserveConfig> =
            Array::try_from(self.ebpf.map_mut(MAP_OBSERVE).unwrap()).unwrap();
        let events = kinds.iter().fold(0, |m, k| m | (1u32 << k));
        map.set(0, ObserveConfig { events }, 0).unwrap();
    }

    /// The flow events emitted since the last call, oldest first.
    pub fn events(&mut self) -> Vec<FlowEvent> {
        let mut ring = aya::maps::RingBuf::try_from(self.ebpf.map_mut(MAP_EVENTS).unwrap()).unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.push(FlowEvent::from_bytes(&item).expect("a whole flow_event"));
        }
        out
    }

    /// Events the ring buffer had no room for.
    pub fn events_lost(&self) -> u64 {
        let map: Array<&MapData, u64> = Array::try_from(self.ebpf.map(MAP_EVENTS_LOST).unwrap()).unwrap();
        map.get(&0, 0).unwrap()
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        let map: Array<&MapData, u64> = Array::try_from(self.ebpf.map(MAP_DROPS).unwrap()).unwrap();
        map.get(&(reason as u32), 0).unwrap()
    }

    pub fn ct_flags(
        &self,
        saddr: Ipv4Addr,
        daddr: Ipv4Addr,
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> Option<u32> {
        self.ct_entry(saddr, daddr, sport, dport, proto).map(|v| v.flags)
    }

    fn ct_key(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> CtKey {
        CtKey {
            saddr: addr_be(saddr),
            daddr: addr_be(daddr),
            sport: port_be(sport),
            dport: port_be(dport),
            proto,
            pad: [0; 3],
        }
    }

    /// The whole connection tracking entry of a tuple.
    pub fn ct_entry(
        &self,
        saddr: Ipv4Addr,
        daddr: Ipv4Addr,
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> Option<CtValue> {
        let map: HashMap<&MapData, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map(MAP_CT).unwrap()).unwrap();
        map.get(&Self::ct_key(saddr, daddr, sport, dport, proto), 0).ok()
    }

    /// Overwrites the connection tracking entry of a tuple.
    pub fn set_ct_entry(
        &mut self,
        (saddr, daddr, sport, dport, proto): (Ipv4Addr, Ipv4Addr, u16, u16, u8),
        value: CtValue,
    ) {
        let mut map: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map_mut(MAP_CT).unwrap()).unwrap();
        map.insert(Self::ct_key(saddr, daddr, sport, dport, proto), value, 0)
            .unwrap();
    }

    /// Removes an ingress allow entry (a policy revoked).
    pub fn revoke(&mut self, endpoint: Ipv4Addr, identity: u32, dport: u16, proto: u8) {
        let mut map: HashMap<&mut MapData, PolicyKey, u8> =
            HashMap::try_from(self.ebpf.map_mut(MAP_POLICY).unwrap()).unwrap();
        let key = PolicyKey {
            endpoint: addr_be(endpoint),
            identity,
            dport,
            proto,
            direction: POLICY_INGRESS,
        };
        map.remove(&key).unwrap();
    }

    pub fn stack_flow(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<u8> {
        let map: HashMap<&MapData, StackFlowKey, u8> =
            HashMap::try_from(self.ebpf.map(MAP_STACK_FLOWS).unwrap()).unwrap();
        let key = StackFlowKey {
            addr: addr_be(addr),
            port: port_be(port),
            proto,
            pad: 0,
        };
        map.get(&key, 0).ok()
    }

    /// Runs `program` on `packet`; returns the verdict and the packet as
    /// the program left it. `ingress_ifindex` fills the `__sk_buff` context
    /// (0: sent by the host itself). A packet for `from_tunnel` comes from
    /// [`REMOTE_NODE`].
    pub fn run(&self, program: &str, packet: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
        self.run_from(program, packet, ingress_ifindex, REMOTE_NODE)
    }

    /// [`Programs::run`] with the tunnel's outer source `outer`.
    pub fn run_from(
        &self,
        program: &str,
        packet: &[u8],
        ingress_ifindex: u32,
        outer: Ipv4Addr,
    ) -> (u32, Vec<u8>) {
        let (verdict, out, _) = self.run_marked(program, packet, ingress_ifindex, outer, 0);
        (verdict, out)
    }

    /// [`Programs::run_from`] on a packet that carries the skb mark
    /// `mark`; also returns the mark the program left.
    pub fn run_marked(
        &self,
        program: &str,
        packet: &[u8],
        ingress_ifindex: u32,
        outer: Ipv4Addr,
        mark: u32,
    ) -> (u32, Vec<u8>, u32) {
        let program: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; packet.len() + 256];
        // struct __sk_buff is 192 bytes; mark sits at offset 8,
        // ingress_ifindex at 36, cb[0] at 48.
        let mut ctx = [0u8; 192];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        ctx[48..52].copy_from_slice(&outer.octets());
        let mut ctx_out = [0u8; 192];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.ctx_out = Some(&mut ctx_out);
        let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        let mark_out = u32::from_ne_bytes(ctx_out[8..12].try_into().unwrap());
        (result.return_value, out, mark_out)
    }
}

/// An Ethernet + IPv4 + TCP/UDP packet (checksums are not checked by the
/// programs and left zero).
pub fn packet(saddr: Ipv4Addr, daddr: Ipv4Addr, proto: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xee]); // dst MAC: the gateway
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xaa]); // src MAC: the pod
    p.extend_from_slice(&0x0800u16.to_be_bytes());
    let l4_len: u16 = if proto == TCP { 20 } else { 8 };
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(20 + l4_len).to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&saddr.octets());
    p.extend_from_slice(&daddr.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    if proto == TCP {
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        p.extend_from_slice(&[0, 8, 0, 0]);
    }
    p
}

pub fn tcp(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    packet(saddr, daddr, TCP, sport, dport, flags)
}

/// Two pods on this node: a (identity A, `a_flags`) and b (identity B,
/// MACs known, `b_flags`).
pub fn pods_with_flags(tag: &str, a_flags: u32, b_flags: u32) -> Programs {
    let mut p = Programs::load(tag);
    p.endpoint_flags(
        POD_A,
        IDENTITY_A,
        a_flags,
        [0x02, 0, 0, 0, 0, 0x0a],
        [0x02, 0, 0, 0, 1, 0x0a],
    );
    p.endpoint_flags(POD_B, IDENTITY_B, b_flags, MAC_B, NODE_MAC_B);
    p
}

/// Two pods on this node: a (identity A) and b (identity B, MACs known).
pub fn two_pods(tag: &str, b_policy: bool) -> Programs {
    let mut p = Programs::load(tag);
    p.endpoint(
        POD_A,
        IDENTITY_A,
        false,
        [0x02, 0, 0, 0, 0, 0x0a],
        [0x02, 0, 0, 0, 1, 0x0a],
    );
    p.endpoint(POD_B, IDENTITY_B, b_policy, MAC_B, NODE_MAC_B);
    p
}
