//! Prometheus metrics of the agent (registered once, shared by the loop).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label naming a map, a drop reason or a rejection reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Name {
    /// The name.
    pub name: String,
}

/// How a pass reached the datapath: `patch` (endpoint and service records
/// alone) or `full` (the whole node rendered again).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenderPath {
    /// `patch` or `full`.
    pub path: &'static str,
}

/// A flow event's labels: its verdict, its reason (a drop reason,
/// `allowed`, `translated`) and the cluster of its remote end (the source,
/// else the destination; empty if unknown).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// `allowed`, `denied`, `dropped` or `translated`.
    pub verdict: &'static str,
    /// The drop reason, or the verdict again.
    pub reason: String,
    /// The peer cluster.
    pub cluster: String,
}

/// Every metric of the agent.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Entries per datapath map.
    pub map_entries: Family<Name, Gauge>,
    /// Packets or connections dropped by the datapath, per reason.
    pub drops: Family<Name, Gauge>,
    /// Milliseconds from the first unapplied kvstore change to the maps
    /// being written, for the last apply.
    pub sync_lag_ms: Gauge,
    /// 1 while the kvstore watch is connected and listed.
    pub kvstore_connected: Gauge,
    /// Map writes that failed (retried).
    pub write_failures: Counter,
    /// Kvstore values skipped, per reason.
    pub rejected: Family<Name, Gauge>,
    /// Local endpoints whose interface does not exist yet.
    pub pending_endpoints: Gauge,
    /// NetworkPolicy ports that allow nothing because the datapath cannot
    /// express them (a protocol other than TCP/UDP, a range too long).
    pub unsupported_policy_ports: Gauge,
    /// Pods isolated because their policy entries did not fit the maps.
    pub policy_overflow: Gauge,
    /// Attached pods isolated until their endpoint and identity arrive.
    pub awaiting_identity: Gauge,
    /// Tuples in the connection tracking map.
    pub conntrack_entries: Gauge,
    /// What the connection tracking map holds at most.
    pub conntrack_capacity: Gauge,
    /// Cilium policies rejected as a whole (a field outside the subset).
    pub rejected_cilium_policies: Gauge,
    /// CNI attachment files that could not be read.
    pub unreadable_attachments: Gauge,
    /// Times Knit was chained again into a CNI config that lost it.
    pub cni_config_rechained: Counter,
    /// Attached pods whose MTU exceeds what the tunnel carries whole.
    pub pods_over_tunnel_mtu: Gauge,
    /// Direct routes to other nodes' pod CIDRs the agent keeps.
    pub node_routes: Gauge,
    /// WireGuard peers (other nodes with a key) the node has.
    pub wireguard_peers: Gauge,
    /// WireGuard peers whose tunnel has had no handshake within the
    /// session lifetime (180 s).
    pub wireguard_peers_without_handshake: Gauge,
    /// Tunnelled packets that left the node outside WireGuard (to a node
    /// without a key, encryption not strict).
    pub plaintext_packets: Counter,
    /// Tunnelled packets dropped because no WireGuard route took them
    /// (strict mode: the destination node has no key).
    pub unencrypted_drops: Counter,
    /// Nodes the routing mode would reach natively whose pod CIDRs no
    /// route covers (native: dropped; hybrid: tunnelled).
    pub native_unroutable_nodes: Gauge,
    /// Nodes reached without the tunnel.
    pub native_nodes: Gauge,
    /// Direct routes the kernel refused (e.g. a gateway not on-link).
    pub node_route_failures: Counter,
    /// Remote nodes whose data path does not answer probes.
    pub failing_nodes: Gauge,
    /// Passes that changed the datapath, by render path.
    pub applies: Family<RenderPath, Counter>,
    /// Flow events read from the datapath.
    pub flow_events: Family<FlowLabels, Counter>,
    /// Flow events the datapath's ring buffer had no room for.
    pub flow_events_lost: Gauge,
}

impl Metrics {
    /// Registers every metric under `knit_agent_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("knit_agent");
        self.register_node_network(r);
        r.register(
            "flow_events",
            "Flow events from the datapath (knitctl observe), by verdict, reason and peer cluster",
            self.flow_events.clone(),
        );
        r.register(
            "flow_events_lost",
            "Flow events the datapath's ring buffer had no room for (the agent read too slowly)",
            self.flow_events_lost.clone(),
        );
        r.register(
            "map_entries",
            "Entries per datapath map",
            self.map_entries.clone(),
        );
        r.register("drops", "Datapath drops by reason", self.drops.clone());
        r.register(
            "sync_lag_ms",
            "Milliseconds from a kvstore change to the maps being written (last apply)",
            self.sync_lag_ms.clone(),
        );
        r.register(
            "kvstore_connected",
            "Kvstore watch connected and listed",
            self.kvstore_connected.clone(),
        );
        r.register(
            "map_write_failures",
            "Failed map writes",
            self.write_failures.clone(),
        );
        r.register(
            "rejected_values",
            "Kvstore values skipped by reason",
            self.rejected.clone(),
        );
        r.register(
            "rejected_cilium_policies",
            "CiliumNetworkPolicies not applied because a field is outside the L3/L4 subset (knitctl status names them)",
            self.rejected_cilium_policies.clone(),
        );
        r.register(
            "unsupported_policy_ports",
            "NetworkPolicy ports that allow nothing: a protocol other than TCP/UDP, or a range too long",
            self.unsupported_policy_ports.clone(),
        );
        r.register(
            "conntrack_entries",
            "Tuples in the connection tracking map (counted every 10 s); near the capacity, the flows idle longest are evicted",
            self.conntrack_entries.clone(),
        );
        r.register(
            "conntrack_capacity",
            "Tuples the connection tracking map holds at most",
            self.conntrack_capacity.clone(),
        );
        r.register(
            "policy_overflow_pods",
            "Pods isolated because their policy entries did not fit the policy maps (the agent log names them)",
            self.policy_overflow.clone(),
        );
        r.register(
            "endpoints_awaiting_identity",
            "Pods attached on this node and isolated both ways until the kvstore brings their endpoint and identity",
            self.awaiting_identity.clone(),
        );
        r.register(
            "pending_endpoints",
            "Local endpoints whose interface does not exist yet",
            self.pending_endpoints.clone(),
        );
        r.register(
            "unreadable_cni_attachments",
            "CNI attachment files in the state directory that could not be read (skipped)",
            self.unreadable_attachments.clone(),
        );
        r.register(
            "cni_config_rechained",
            "Times the node's CNI config was rewritten without Knit (by the cluster's CNI) and Knit was chained again",
            self.cni_config_rechained.clone(),
        );
        r.register(
            "pods_over_tunnel_mtu",
            "Attached pods whose interface MTU exceeds the underlay's less the tunnel's 50 bytes (their full-size packets fragment); set the CNI's MTU lower",
            self.pods_over_tunnel_mtu.clone(),
        );
        r.register(
            "failing_nodes",
            "Remote nodes whose data path does not answer health probes (their backends are avoided)",
            self.failing_nodes.clone(),
        );
        r.register(
            "applies",
            "Datapath passes by render path (patch: endpoint and service records alone; full: the whole node)",
            self.applies.clone(),
        );
    }
    /// The node's routes, routing mode and encryption.
    fn register_node_network(&self, r: &mut Registry) {
        r.register(
            "node_routes",
            "Direct routes to other nodes' pod CIDRs kept by the agent",
            self.node_routes.clone(),
        );
        r.register(
            "wireguard_peers",
            "Other nodes of the mesh this node encrypts to (their records carry a WireGuard key)",
            self.wireguard_peers.clone(),
        );
        r.register(
            "wireguard_peers_without_handshake",
            "WireGuard peers (other nodes) without a handshake in the last 180 s: their tunnel carries nothing",
            self.wireguard_peers_without_handshake.clone(),
        );
        r.register(
            "encryption_plaintext_packets",
            "Tunnelled packets sent outside WireGuard with encryption on (a node without a key, strict mode off)",
            self.plaintext_packets.clone(),
        );
        r.register(
            "encryption_strict_drops",
            "Tunnelled packets dropped by strict encryption: the destination node has no WireGuard key (the tunnel device's carrier errors)",
            self.unencrypted_drops.clone(),
        );
        r.register(
            "native_unroutable_nodes",
            "Nodes the routing mode reaches natively whose pod CIDRs no route but the default covers: dropped as no_route in native mode, tunnelled in hybrid; route them (one L2 segment, BGP, cloud routes) or use hybrid",
            self.native_unroutable_nodes.clone(),
        );
        r.register(
            "native_nodes",
            "Nodes whose pods this node reaches without the tunnel (routing mode native or hybrid)",
            self.native_nodes.clone(),
        );
        r.register(
            "node_route_failures",
            "Direct routes to other nodes' pod CIDRs the kernel refused (gateway not on-link?)",
            self.node_route_failures.clone(),
        );
    }
}
