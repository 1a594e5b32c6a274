/* Knit datapath: map layouts shared by the eBPF programs (knit.bpf.c) and
 * the agent (agent/src/datapath/layout.rs). A test compiles this header with
 * the host compiler and checks every size and offset against the Rust
 * #[repr(C)] types; change both together.
 *
 * Byte order: addresses and ports are in network order exactly as they sit
 * in packets and socket addresses; identities, ids, counts and flags are in
 * host order. */
#ifndef KNIT_H
#define KNIT_H

#include <linux/types.h>

/* ipcache (LPM trie): IPv4 prefix -> identity and tunnel endpoint. */
struct ipcache_key {
	__u32 prefixlen;
	__u32 addr;
};

struct ipcache_value {
	__u32 identity;
	/* Underlay address of the node hosting the prefix; 0 on this node. */
	__u32 tunnel_endpoint;
};

/* Local endpoints (hash): pod IPv4 -> where and who it is. */
#define ENDPOINT_F_POLICY 1 /* a NetworkPolicy selects the pod for ingress */
#define ENDPOINT_F_EGRESS 2 /* a NetworkPolicy selects the pod for egress */

struct endpoint_value {
	__u32 ifindex; /* host side of the pod's veth */
	__u32 identity;
	__u32 flags;
	__u8 mac[6];      /* the pod's interface, as its CNI result says */
	__u8 node_mac[6]; /* the host side of its veth */
};

/* The pod's end of flows through the host stack (LRU), valued
 * STACK_FLOW_*: flows it opened (to a ClusterIP kube-proxy translates, or
 * out of the mesh), whose replies go back through the stack so the kernel
 * can undo its NAT; and UDP ports the stack brought requests to, whose
 * answers are not flows of the pod's own. */
struct stack_flow_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* Capacities of the policy maps: the agent never writes a pod's entries
 * in part (a missing deny entry would admit what it denies). */
#define POLICY_ENTRIES (1 << 18)
#define POLICY_CIDR_ENTRIES (1 << 16)

/* Policy entries (hash), per selected pod and direction: the peer's
 * identity (the source for ingress, the destination for egress). Zero in
 * identity, dport or proto is a wildcard: the program tries the exact key
 * and every wildcard. The value is the verdict; a deny entry anywhere among
 * the candidates wins (Cilium's ingressDeny/egressDeny). */
#define POLICY_INGRESS 0
#define POLICY_EGRESS 1
#define POLICY_ALLOW 1
#define POLICY_DENY 2

struct policy_key {
	__u32 endpoint;
	__u32 identity;
	__u16 dport; /* host order */
	__u8 proto;
	__u8 direction; /* POLICY_INGRESS or POLICY_EGRESS */
};

/* CIDR allow entries (LPM trie, for ipBlock peers): selected pod,
 * direction, protocol and port (0 = any) matched exactly, the peer's
 * address by prefix. prefixlen is 64 + the prefix length of addr. The
 * agent writes each ipBlock with its `except` ranges already cut out. */
struct policy_cidr_key {
	__u32 prefixlen;
	__u32 endpoint;
	__u8 direction;
	__u8 proto;
	__u16 dport; /* host order */
	__u32 addr;
};

/* Service frontends (hash): VIP, port, protocol -> backend slots. */
struct service_key {
	__u32 vip;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct service_value {
	__u32 service_id;
	__u32 count; /* slots 0..count-1 are valid */
};

struct backend_key {
	__u32 service_id;
	__u32 slot;
};

struct backend_value {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

/* Socket-level reverse translation (LRU): socket, backend -> frontend. */
struct sock_nat_key {
	__u64 cookie;
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct sock_nat_value {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

/* Connection tracking for policy (LRU): who opened a flow, whether policy
 * admitted it, how far a TCP flow has got and until when the entry counts.
 * A TCP SYN starts a new flow: what an earlier flow of the same tuple left
 * (a verdict, a direction) does not carry over. */
#define CT_F_EGRESS 1         /* a local pod opened this tuple (its first packet, a SYN) */
#define CT_F_ALLOWED 2        /* ingress policy admitted this tuple */
#define CT_F_INGRESS 4        /* a peer opened this tuple into a local pod: the pod's replies pass */
#define CT_F_EGRESS_ALLOWED 8 /* egress policy admitted this tuple */
#define CT_F_FIN 16           /* a TCP FIN was seen in this direction: the flow is closing */
#define CT_F_RST 32           /* a TCP RST was seen in this direction: the flow is over */
/* The policy generation (node_config) a verdict flag (CT_F_ALLOWED,
 * CT_F_EGRESS_ALLOWED) was given under sits in the flags' high bits. */
#define CT_GENERATION_SHIFT 8
#define CT_GENERATION_BITS 24

/* Tuples knit_ct holds; the least recently used goes when it is full (the
 * agent reports how many are in use, and an alert fires near the top). */
#define CT_ENTRIES (1 << 17)

/* How long an entry counts after the last packet of its tuple, in seconds
 * (Cilium's defaults): a TCP flow once past its SYN, a TCP flow still
 * opening, a TCP flow closing (FIN or RST seen), anything else. */
#define CT_LIFETIME_TCP 21600
#define CT_LIFETIME_SYN 60
#define CT_LIFETIME_CLOSING 10
#define CT_LIFETIME_OTHER 60

/* What a pod's end of a flow through the host stack is (knit_stack_flows). */
#define STACK_FLOW_OPENED 1 /* the pod opened it: replies from the tunnel go to the stack */
#define STACK_FLOW_SERVED 2 /* the stack brought a UDP request to it: the pod serves there */

struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ct_value {
	__u32 flags;
	/* CLOCK_MONOTONIC second (bpf_ktime_get_ns) from which the entry no
	 * longer counts; 0 (an entry of an agent before expiry existed) counts
	 * until the next packet of the tuple sets it. */
	__u32 expires;
};

/* Node-wide settings (array, one entry). */
struct node_config {
	__u32 tunnel_ifindex;
	/* Bumped by the agent after every change of the policy maps: a
	 * verdict remembered in knit_ct under another generation is checked
	 * again (low CT_GENERATION_BITS bits). */
	__u32 policy_generation;
};

/* Encryption between nodes (knit_encryption, one entry). from_tunnel takes
 * only packets that came through the WireGuard interface, where
 * from_wireguard marked them: from every sender (strict), or from the
 * senders in knit_wireguard_nodes (nodes with a key: a node without one,
 * mid-rollout, still sends plaintext). */
#define REQUIRE_DECRYPTED_NEVER 0
#define REQUIRE_DECRYPTED_ALWAYS 1
#define REQUIRE_DECRYPTED_FROM_KEYED 2
#define WIREGUARD_NODES_ENTRIES 65536

struct encryption_config {
	__u32 require_decrypted;
};

/* The skb mark from_wireguard sets on what WireGuard decrypted (in the
 * MARK_DECRYPTED_MASK bits, left alone by kube-proxy's 0x4000/0x8000 and
 * Calico's upper 16). The mark survives VXLAN decapsulation within the
 * node's namespace. */
#define MARK_DECRYPTED_MASK 0x0f00
#define MARK_DECRYPTED 0x0b00

/* Routing modes (knit_native_nodes: tunnel endpoint, network order ->
 * NATIVE_PATH_*). A node in the map is reached without encapsulation
 * (ROUTED: the kernel's FIB routes its pod CIDRs) or not at all
 * (UNROUTABLE: native mode, and nothing routes them: dropped as no_route,
 * never into a default route's black hole). Every other node is reached
 * through the tunnel. */
#define NATIVE_PATH_ROUTED 1
#define NATIVE_PATH_UNROUTABLE 2
#define NATIVE_NODES_ENTRIES 65536

/* Flow events (ring buffer knit_events, EVENTS_BYTES): what the programs
 * did with a flow, for `knitctl observe`. knit_observe (array, one
 * observe_config) holds the kinds the agent wants, as bits
 * (1 << EVENT_*); with 0 nothing is emitted. An event the ring has no room
 * for is counted in knit_events_lost. Nothing wakes the reader: the agent
 * drains the ring on a timer (100 ms), so a busy datapath costs
 * one wakeup per period, not one per event.
 * - EVENT_DROP: a packet dropped, reason = enum drop_reason. A policy drop
 *   (DROP_POLICY, DROP_EGRESS_POLICY) is the verdict "denied" and carries
 *   its direction.
 * - EVENT_POLICY: policy admitted a flow (reason = VERDICT_ALLOWED), once
 *   per flow and policy generation: later packets pass on the remembered
 *   verdict without an event.
 * - EVENT_TRANSLATION: a socket's connect (or first datagram) to a
 *   service VIP got a backend: daddr/dport the backend, orig_* the VIP.
 *   The socket has no source address yet: saddr, sport are 0. */
#define EVENT_DROP 1
#define EVENT_POLICY 2
#define EVENT_TRANSLATION 3
#define VERDICT_ALLOWED 1
#define EVENT_DIRECTION_NONE 2 /* direction of events other than policy */
#define EVENTS_BYTES (1 << 20)

struct flow_event {
	__u64 timestamp; /* CLOCK_MONOTONIC nanoseconds */
	__u32 saddr;
	__u32 daddr;
	__u32 src_identity; /* 0: unknown */
	__u32 dst_identity;
	__u32 orig_daddr; /* EVENT_TRANSLATION: the VIP (DROP_NO_BACKEND has it in daddr) */
	__u16 sport;
	__u16 dport;
	__u16 orig_dport;
	__u8 kind;      /* EVENT_* */
	__u8 reason;    /* enum drop_reason, or VERDICT_ALLOWED */
	__u8 direction; /* POLICY_INGRESS, POLICY_EGRESS or EVENT_DIRECTION_NONE */
	__u8 proto;
	__u16 pad;
};

struct observe_config {
	__u32 events; /* 1 << EVENT_* of each kind to emit */
};

/* Drop counters (array indexed by reason). */
enum drop_reason {
	DROP_POLICY = 0,
	DROP_UNKNOWN_SOURCE = 1,
	DROP_NO_BACKEND = 2,
	DROP_NO_ROUTE = 3,
	DROP_MALFORMED = 4,
	DROP_REDIRECT_FAILED = 5,
	DROP_EGRESS_POLICY = 6,
	DROP_FORGED_TUNNEL_SOURCE = 7,
	DROP_REASONS = 8,
};

#endif
