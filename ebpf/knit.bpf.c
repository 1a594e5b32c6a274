/* Knit datapath.
 *
 * tc programs (SEC "classifier"):
 *   from_pod    ingress of the host side of every pod veth: source check
 *               (the address is the pod's behind this veth),
 *               flow tracking, then local delivery or VXLAN encapsulation
 *               towards the tunnel endpoint the ipcache names; anything
 *               else goes to the host stack (outside, kube-proxy Services,
 *               the node itself), and so do the replies of those flows.
 *   to_pod      egress of the same interface: ingress policy for what the
 *               host stack forwards into the pod.
 *   from_tunnel ingress of the node's collect-metadata VXLAN device:
 *               with encryption, only what WireGuard decrypted; sender
 *               check (the outer source is the node the ipcache places the
 *               inner source on), delivery to the local pod.
 *   from_wireguard ingress of the WireGuard interface: marks what it
 *               decrypted (MARK_DECRYPTED).
 *   from_netdev ingress of the node's underlay interface, in native and
 *               hybrid routing: a packet from a pod of another node to a
 *               local pod is delivered like one from the tunnel, its
 *               identity the ipcache's for its source address.
 *   Pods of nodes in knit_native_nodes are reached without the tunnel:
 *   from_pod forwards to them through the kernel's FIB (bpf_fib_lookup,
 *   then bpf_redirect, or bpf_redirect_neigh while the next hop's MAC is
 *   unknown), past the host's netfilter, so nothing masquerades them.
 *   Local delivery applies the pod's ingress policy (ipcache identity of
 *   the source, allow entries, replies of flows the pod opened pass) and
 *   hands the packet straight into the pod with bpf_redirect_peer.
 *   Flow tracking (knit_ct): a TCP SYN starts a new flow on its tuple,
 *   FIN/RST close it, every entry expires after its state's lifetime.
 *
 * cgroup socket programs (socket-level load balancing, attached to the
 * node's pod cgroup subtree): connect4/sendmsg4 turn a Service VIP into a
 * randomly chosen backend once per socket (per socket and VIP for
 * unconnected UDP), recvmsg4/getpeername4 show the VIP again.
 *
 * Layouts: knit.h. Maps are pinned by name in the agent's pin directory so
 * they survive agent restarts. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "knit.h"

#define SOCK_STREAM 1
#define SOCK_DGRAM 2
/* The tunnel key up to tunnel_label: the size every kernel since 4.7
 * accepts. Linux 6.0 added local_ipv4/6 after it, and a kernel older than
 * the headers refuses the new sizeof (5.10: -EINVAL, every packet of the
 * tunnel dropped; found by make test-kernels). */
#define TUNNEL_KEY_SIZE (__builtin_offsetof(struct bpf_tunnel_key, tunnel_label) + sizeof(__u32))

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, __u32);
	__type(value, struct endpoint_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLICY_ENTRIES);
	__type(key, struct policy_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, POLICY_CIDR_ENTRIES);
	__type(key, struct policy_cidr_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_policy_cidr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct service_key);
	__type(value, struct service_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 17);
	__type(key, struct sock_nat_key);
	__type(value, struct sock_nat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_sock_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct sock_nat_key);
	__type(value, struct backend_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_sock_aff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct stack_flow_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_stack_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct encryption_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_encryption SEC(".maps");

/* Tunnel endpoints (network order) of the nodes with a WireGuard key. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WIREGUARD_NODES_ENTRIES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_wireguard_nodes SEC(".maps");

/* Tunnel endpoints (network order) of the nodes reached natively. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NATIVE_NODES_ENTRIES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_native_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DROP_REASONS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct observe_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_observe SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} knit_events_lost SEC(".maps");

struct flow {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
};

/* Who a flow event is about: the identities of its two ends (0 unknown)
 * and the direction of a policy verdict. */
struct parties {
	__u32 src;
	__u32 dst;
	__u8 direction;
};

#define NO_PARTIES ((struct parties){.direction = EVENT_DIRECTION_NONE})

/* Emits an event of `kind` about `f` if the agent asked for that kind. */
static __always_inline void emit(__u8 kind, __u8 reason, const struct flow *f, struct parties who)
{
	__u32 zero = 0;
	struct observe_config *cfg = bpf_map_lookup_elem(&knit_observe, &zero);

	if (!cfg || !(cfg->events & (1U << kind)))
		return;
	struct flow_event e = {
		.timestamp = bpf_ktime_get_ns(),
		.saddr = f->saddr,
		.daddr = f->daddr,
		.src_identity = who.src,
		.dst_identity = who.dst,
		.sport = f->sport,
		.dport = f->dport,
		.kind = kind,
		.reason = reason,
		.direction = who.direction,
		.proto = f->proto,
	};
	if (bpf_ringbuf_output(&knit_events, &e, sizeof(e), BPF_RB_NO_WAKEUP) < 0) {
		__u64 *lost = bpf_map_lookup_elem(&knit_events_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
	}
}

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&knit_drops, &reason);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* Drops the packet of `f`: counted, and emitted as an EVENT_DROP. */
static __always_inline int drop(__u32 reason, const struct flow *f, struct parties who)
{
	count_drop(reason);
	emit(EVENT_DROP, reason, f, who);
	return TC_ACT_SHOT;
}

/* 0: IPv4 parsed; 1: not IPv4; -1: malformed. */
static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	struct iphdr ip;
	__u16 ports[2] = {0, 0};

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
		return -1;
	f->saddr = ip.saddr;
	f->daddr = ip.daddr;
	f->proto = ip.protocol;
	f->sport = 0;
	f->dport = 0;
	f->tcp_flags = 0;
	if (ip.frag_off & bpf_htons(0x1fff))
		return 0;
	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4, ports, sizeof(ports)) < 0)
			return -1;
		f->sport = ports[0];
		f->dport = ports[1];
	}
	if (ip.protocol == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4 + 13, &f->tcp_flags, 1) < 0)
		return -1;
	return 0;
}

static __always_inline void ct_key_of(struct ct_key *k, const struct flow *f, int reverse)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr = reverse ? f->daddr : f->saddr;
	k->daddr = reverse ? f->saddr : f->daddr;
	k->sport = reverse ? f->dport : f->sport;
	k->dport = reverse ? f->sport : f->dport;
	k->proto = f->proto;
}

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

static __always_inline __u32 ct_now(void)
{
	return (__u32)(bpf_ktime_get_ns() / 1000000000ULL);
}

/* Whether an entry still counts at `now`. */
static __always_inline int ct_live(const struct ct_value *v, __u32 now)
{
	return !v->expires || now < v->expires;
}

/* A packet of the entry's own tuple: the closing flags it carries, and the
 * lifetime its state gives from now. Written only when something changed,
 * at most once a second for a steady flow. */
static __always_inline void ct_touch(struct ct_value *v, const struct flow *f, __u32 now)
{
	__u32 flags = v->flags;
	__u32 lifetime = CT_LIFETIME_OTHER;

	if (f->proto == IPPROTO_TCP) {
		if (f->tcp_flags & TCP_RST)
			flags |= CT_F_RST;
		if (f->tcp_flags & TCP_FIN)
			flags |= CT_F_FIN;
		if (flags & (CT_F_FIN | CT_F_RST))
			lifetime = CT_LIFETIME_CLOSING;
		else if ((f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
			lifetime = CT_LIFETIME_SYN;
		else
			lifetime = CT_LIFETIME_TCP;
	}
	if (v->flags != flags)
		v->flags = flags;
	if (v->expires != now + lifetime)
		v->expires = now + lifetime;
}

/* A TCP SYN starts a flow on its tuple: what an earlier flow of the same
 * tuple left in either direction (a verdict, who opened it) no longer
 * counts, so a reused tuple meets today's policy and a translated flow is
 * not taken for an old direct one. A SYN-ACK ends only entries of a flow
 * that closed or expired: where the flow began, its SYN ended the rest. */
static __always_inline void ct_new_flow(const struct flow *f)
{
	struct ct_key k;
	__u32 now;

	if (f->proto != IPPROTO_TCP || !(f->tcp_flags & TCP_SYN))
		return;
	now = ct_now();
#pragma unroll
	for (int reverse = 0; reverse < 2; reverse++) {
		ct_key_of(&k, f, reverse);
		struct ct_value *v = bpf_map_lookup_elem(&knit_ct, &k);
		if (v && (!(f->tcp_flags & TCP_ACK) || !ct_live(v, now) || (v->flags & (CT_F_FIN | CT_F_RST))))
			bpf_map_delete_elem(&knit_ct, &k);
	}
}

#define CT_F_VERDICTS (CT_F_ALLOWED | CT_F_EGRESS_ALLOWED)
#define CT_FLAGS_MASK ((1U << CT_GENERATION_SHIFT) - 1)

/* The generation of the policy maps the agent last finished writing. */
static __always_inline __u32 policy_generation(void)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&knit_config, &zero);
	return cfg ? cfg->policy_generation & ((1U << CT_GENERATION_BITS) - 1) : 0;
}

/* Remembers `flag` for the packet's tuple. A verdict flag is stamped with
 * the policy generation it was given under; a verdict of an older
 * generation is forgotten then, so a changed policy checks every flow
 * again on its next packet. */
static __always_inline void ct_mark(const struct flow *f, __u32 flag)
{
	struct ct_key k;
	__u32 now = ct_now();
	__u32 gen = (flag & CT_F_VERDICTS) ? policy_generation() : 0;

	ct_key_of(&k, f, 0);
	struct ct_value *v = bpf_map_lookup_elem(&knit_ct, &k);
	if (v && ct_live(v, now)) {
		__u32 flags = v->flags;
		if ((flag & CT_F_VERDICTS) && (flags >> CT_GENERATION_SHIFT) != gen)
			flags = (flags & CT_FLAGS_MASK & ~CT_F_VERDICTS) | (gen << CT_GENERATION_SHIFT);
		flags |= flag;
		if (v->flags != flags)
			v->flags = flags;
		ct_touch(v, f, now);
		return;
	}
	struct ct_value nv = {.flags = flag | (gen << CT_GENERATION_SHIFT)};
	ct_touch(&nv, f, now);
	bpf_map_update_elem(&knit_ct, &k, &nv, BPF_ANY);
}

/* The strongest verdict among entries found: deny over allow over none. */
static __always_inline __u8 stronger(__u8 verdict, const __u8 *found)
{
	if (found && *found > verdict)
		return *found;
	return verdict;
}

/* The verdict of the entries of `endpoint` in `direction` for the peer
 * identity on dport/proto: exact, any port of the protocol, anything; for
 * the identity and for any peer. Every candidate is looked at, so a deny
 * entry wins however specific the allow entry is. */
static __always_inline __u8 identity_verdict(__u32 endpoint, __u8 direction, __u32 identity, __u16 dport,
					     __u8 proto)
{
	struct policy_key k = {.endpoint = endpoint, .direction = direction};
	__u32 ids[2] = {identity, 0};
	__u8 verdict = 0;

#pragma unroll
	for (int i = 0; i < 2; i++) {
		k.identity = ids[i];
		k.dport = dport;
		k.proto = proto;
		verdict = stronger(verdict, bpf_map_lookup_elem(&knit_policy, &k));
		k.dport = 0;
		verdict = stronger(verdict, bpf_map_lookup_elem(&knit_policy, &k));
		k.proto = 0;
		verdict = stronger(verdict, bpf_map_lookup_elem(&knit_policy, &k));
	}
	return verdict;
}

/* The verdict of the address entries of `endpoint` in `direction` for
 * `peer` (the agent cuts deny prefixes out of the allow prefixes of the
 * same port, so the longest match of each port variant is the verdict). */
static __always_inline __u8 cidr_verdict(__u32 endpoint, __u8 direction, __u32 peer, __u16 dport, __u8 proto)
{
	struct policy_cidr_key k = {
		.prefixlen = 96, .endpoint = endpoint, .direction = direction, .proto = proto, .dport = dport, .addr = peer};
	__u8 verdict = stronger(0, bpf_map_lookup_elem(&knit_policy_cidr, &k));
	k.dport = 0;
	verdict = stronger(verdict, bpf_map_lookup_elem(&knit_policy_cidr, &k));
	k.proto = 0;
	return stronger(verdict, bpf_map_lookup_elem(&knit_policy_cidr, &k));
}

/* Whether some entry allows and none denies. */
static __always_inline int policy_allows(__u32 endpoint, __u8 direction, __u32 identity, __u32 peer,
					 __u16 dport, __u8 proto)
{
	__u8 by_identity = identity_verdict(endpoint, direction, identity, dport, proto);
	__u8 by_address = cidr_verdict(endpoint, direction, peer, dport, proto);
	if (by_identity == POLICY_DENY || by_address == POLICY_DENY)
		return 0;
	return by_identity == POLICY_ALLOW || by_address == POLICY_ALLOW;
}

/* Whether a live entry of the packet's tuple (or, `reverse`, of the tuple
 * it answers) carries `flag`, a verdict only if given under the current
 * policy generation. A hit on the packet's own tuple is a packet of that
 * flow and keeps the entry alive. */
static __always_inline int ct_has(const struct flow *f, int reverse, __u32 flag)
{
	struct ct_key k;
	__u32 now = ct_now();

	ct_key_of(&k, f, reverse);
	struct ct_value *v = bpf_map_lookup_elem(&knit_ct, &k);
	if (!v || !(v->flags & flag) || !ct_live(v, now))
		return 0;
	if ((flag & CT_F_VERDICTS) && (v->flags >> CT_GENERATION_SHIFT) != policy_generation())
		return 0;
	if (!reverse)
		ct_touch(v, f, now);
	return 1;
}

/* Whether a live entry exists for the tuple `f` answers. */
static __always_inline int ct_answers(const struct flow *f)
{
	struct ct_key k;

	ct_key_of(&k, f, 1);
	struct ct_value *v = bpf_map_lookup_elem(&knit_ct, &k);
	return v && ct_live(v, ct_now());
}

/* Whether the packet opens a flow: a TCP SYN, or anything else that
 * answers nothing this node tracks. Only opening packets mark who opened
 * a flow (CT_F_EGRESS, CT_F_INGRESS), so a reply never passes for the
 * opening of the tuple it answers, and the verdicts of established flows
 * stay subject to the policy generation. */
static __always_inline int ct_opens(const struct flow *f)
{
	if (f->proto == IPPROTO_TCP)
		return (f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	return !ct_answers(f);
}

/* Ingress policy of the pod f->daddr, for a peer of `identity`: replies
 * of flows the pod opened pass. */
static __always_inline int admitted(const struct flow *f, __u32 identity, __u32 dst_identity)
{
	if (ct_has(f, 1, CT_F_EGRESS) || ct_has(f, 0, CT_F_ALLOWED))
		return 1;
	if (!policy_allows(f->daddr, POLICY_INGRESS, identity, f->saddr, bpf_ntohs(f->dport), f->proto))
		return 0;
	ct_mark(f, CT_F_ALLOWED);
	emit(EVENT_POLICY, VERDICT_ALLOWED, f,
	     (struct parties){.src = identity, .dst = dst_identity, .direction = POLICY_INGRESS});
	return 1;
}

/* Egress policy of the pod f->saddr, towards a peer of `identity`:
 * replies of flows the peer opened pass. */
static __always_inline int egress_admitted(const struct flow *f, __u32 identity, __u32 src_identity)
{
	if (ct_has(f, 1, CT_F_INGRESS) || ct_has(f, 0, CT_F_EGRESS_ALLOWED))
		return 1;
	if (!policy_allows(f->saddr, POLICY_EGRESS, identity, f->daddr, bpf_ntohs(f->dport), f->proto))
		return 0;
	ct_mark(f, CT_F_EGRESS_ALLOWED);
	emit(EVENT_POLICY, VERDICT_ALLOWED, f,
	     (struct parties){.src = src_identity, .dst = identity, .direction = POLICY_EGRESS});
	return 1;
}

/* Hands the packet straight into the pod, addressed from the host side of
 * its veth to the pod's MAC (both from the pod's CNI result), as a packet
 * for the pod's host: a frame from the tunnel arrives addressed to the
 * sender's gateway MAC, so the VXLAN device marked it PACKET_OTHERHOST,
 * and older kernels keep that mark across bpf_redirect_peer (5.10 does,
 * 6.1 does not), where the pod's IP layer drops it (on 5.10 every
 * cross-node flow was lost; found by make test-kernels). */
static __always_inline int deliver(struct __sk_buff *skb, const struct flow *f,
				   const struct endpoint_value *ep, __u32 identity)
{
	__u8 macs[12];

	int opening = ct_opens(f);
	struct parties who = {.src = identity, .dst = ep->identity, .direction = POLICY_INGRESS};

	if ((ep->flags & ENDPOINT_F_POLICY) && !admitted(f, identity, ep->identity))
		return drop(DROP_POLICY, f, who);
	ct_mark(f, opening ? CT_F_INGRESS : 0);
	who.direction = EVENT_DIRECTION_NONE;
	__builtin_memcpy(&macs[0], ep->mac, 6);
	__builtin_memcpy(&macs[6], ep->node_mac, 6);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return drop(DROP_MALFORMED, f, who);
	if (skb->pkt_type != PACKET_HOST && bpf_skb_change_type(skb, PACKET_HOST) < 0)
		return drop(DROP_MALFORMED, f, who);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* A packet from a local pod leaves through the host stack: remember the
 * pod's end of the flows it opens (TCP SYN, UDP from a port the stack has
 * not brought requests to) so their replies take the same way back. A
 * port already known (opened, or served) keeps what it is. */
static __always_inline int to_stack(const struct flow *f)
{
	struct stack_flow_key k = {.addr = f->saddr, .port = f->sport, .proto = f->proto};
	__u8 opened = STACK_FLOW_OPENED;

	if (f->proto == IPPROTO_TCP && (f->tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN)
		return TC_ACT_OK;
	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return TC_ACT_OK;
	if (!bpf_map_lookup_elem(&knit_stack_flows, &k))
		bpf_map_update_elem(&knit_stack_flows, &k, &opened, BPF_NOEXIST);
	return TC_ACT_OK;
}

/* The host stack brings a UDP datagram to a local pod's port that no flow
 * of the pod opened: the pod serves there (a masqueraded client, the node),
 * so its answers from that port are not flows of its own, and requests
 * from the tunnel to it stay on the mesh path. */
static __always_inline void served_from_stack(const struct flow *f)
{
	struct stack_flow_key k = {.addr = f->daddr, .port = f->dport, .proto = f->proto};
	__u8 served = STACK_FLOW_SERVED;

	if (f->proto == IPPROTO_UDP && !bpf_map_lookup_elem(&knit_stack_flows, &k))
		bpf_map_update_elem(&knit_stack_flows, &k, &served, BPF_NOEXIST);
}

/* Whether a packet towards a local pod answers a flow the pod opened into
 * the host stack (which may have translated it). A port stays remembered
 * as long as the LRU keeps it, and the pod opens later flows from the same
 * port (a connect to a Service before the socket LB knew it leaves the
 * port marked). A reply whose exact tuple the pod itself sent is no
 * translated reply: it is delivered directly, whatever the port's mark. */
static __always_inline int answers_stack_flow(const struct flow *f)
{
	struct stack_flow_key k = {.addr = f->daddr, .port = f->dport, .proto = f->proto};
	__u8 *v = bpf_map_lookup_elem(&knit_stack_flows, &k);
	return v && *v == STACK_FLOW_OPENED && !ct_has(f, 1, CT_F_EGRESS);
}

static __always_inline __u32 identity_of(__u32 addr, __u32 fallback)
{
	struct ipcache_key k = {.prefixlen = 32, .addr = addr};
	struct ipcache_value *v = bpf_map_lookup_elem(&knit_ipcache, &k);
	return v ? v->identity : fallback;
}

#define AF_INET 2
#define IP_TTL_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, ttl))
#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))

/* Forwards a packet to a pod of a node reached natively, as the host's
 * router would (TTL less one) but past its netfilter: the FIB picks the
 * underlay interface and next hop; a next hop whose MAC the node does not
 * know yet is resolved by bpf_redirect_neigh. What the FIB cannot route
 * is dropped as no_route. A packet at its last hop goes to the stack,
 * which answers with ICMP time exceeded. */
static __always_inline int forward_natively(struct __sk_buff *skb, const struct flow *f, struct parties who)
{
	struct bpf_fib_lookup fib = {};
	__u8 ttl;

	if (bpf_skb_load_bytes(skb, IP_TTL_OFF, &ttl, 1) < 0)
		return drop(DROP_MALFORMED, f, who);
	if (ttl <= 1)
		return TC_ACT_OK;
	fib.family = AF_INET;
	fib.l4_protocol = f->proto;
	fib.ipv4_src = f->saddr;
	fib.ipv4_dst = f->daddr;
	fib.ifindex = skb->ifindex;
	int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return drop(DROP_NO_ROUTE, f, who);
	__u8 next = ttl - 1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, bpf_htons((__u16)ttl << 8), bpf_htons((__u16)next << 8), 2) < 0 ||
	    bpf_skb_store_bytes(skb, IP_TTL_OFF, &next, 1, 0) < 0)
		return drop(DROP_MALFORMED, f, who);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst};
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	__u8 macs[12];
	__builtin_memcpy(&macs[0], fib.dmac, 6);
	__builtin_memcpy(&macs[6], fib.smac, 6);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return drop(DROP_MALFORMED, f, who);
	return bpf_redirect(fib.ifindex, 0);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct flow f = {};
	int parsed = parse(skb, &f);

	if (parsed > 0)
		return TC_ACT_OK;
	if (parsed < 0)
		return drop(DROP_MALFORMED, &f, NO_PARTIES);
	/* The source must be a pod of this node, and the one behind this
	 * veth: a pod that borrows another local pod's address would take
	 * its identity and its policy's allowances. */
	struct endpoint_value *src = bpf_map_lookup_elem(&knit_endpoints, &f.saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop(DROP_UNKNOWN_SOURCE, &f, NO_PARTIES);
	__u32 identity = src->identity;
	ct_new_flow(&f);
	struct endpoint_value *dst = bpf_map_lookup_elem(&knit_endpoints, &f.daddr);
	int opening = ct_opens(&f);
	if (src->flags & ENDPOINT_F_EGRESS) {
		__u32 peer = dst ? dst->identity : identity_of(f.daddr, 0);
		if (!egress_admitted(&f, peer, identity))
			return drop(DROP_EGRESS_POLICY, &f,
				    (struct parties){.src = identity, .dst = peer, .direction = POLICY_EGRESS});
	}
	ct_mark(&f, opening ? CT_F_EGRESS : 0);

	if (dst) {
		if (answers_stack_flow(&f))
			return TC_ACT_OK;
		return deliver(skb, &f, dst, identity);
	}

	/* Outside the mesh, a Service the host translates, this node's own
	 * addresses (the pod's gateway), or a local pod not attached yet: the
	 * host stack routes it (and masquerades what leaves the node). */
	struct ipcache_key k = {.prefixlen = 32, .addr = f.daddr};
	struct ipcache_value *route = bpf_map_lookup_elem(&knit_ipcache, &k);
	if (!route)
		return to_stack(&f);
	/* A pod of this node not attached yet: nothing on the way translates
	 * the flow, so its replies need not come back through the stack, and
	 * marking the port would send the replies of the pod's later direct
	 * flows from that port through the host's conntrack, half seen. */
	if (!route->tunnel_endpoint)
		return TC_ACT_OK;
	struct parties who = {.src = identity, .dst = route->identity, .direction = EVENT_DIRECTION_NONE};
	__u32 *native = bpf_map_lookup_elem(&knit_native_nodes, &route->tunnel_endpoint);
	if (native)
		return *native == NATIVE_PATH_ROUTED ? forward_natively(skb, &f, who) : drop(DROP_NO_ROUTE, &f, who);

	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&knit_config, &zero);
	if (!cfg || !cfg->tunnel_ifindex)
		return drop(DROP_NO_ROUTE, &f, who);
	struct bpf_tunnel_key key = {};
	key.remote_ipv4 = bpf_ntohl(route->tunnel_endpoint);
	key.tunnel_id = identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, TUNNEL_KEY_SIZE, BPF_F_ZERO_CSUM_TX) < 0)
		return drop(DROP_REDIRECT_FAILED, &f, who);
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

/* Set only by the program tests: BPF_PROG_TEST_RUN has no tunnel metadata
 * to give, so they pass the outer source in cb[0]. The agent never sets
 * it, and the verifier prunes that path from the loaded program. */
volatile const __u32 knit_test_outer_source_in_cb = 0;

/* The underlay address that sent a packet from the tunnel (network
 * order), 0 if unknown. */
static __always_inline __u32 outer_source(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};

	if (knit_test_outer_source_in_cb)
		return skb->cb[0];
	if (bpf_skb_get_tunnel_key(skb, &key, TUNNEL_KEY_SIZE, 0) < 0)
		return 0;
	return bpf_htonl(key.remote_ipv4);
}

/* With encryption on, whether the packet came through WireGuard: only
 * then is its outer source authenticated (WireGuard admits from a peer
 * only its allowed IP, the peer node's tunnel endpoint). Outside strict
 * mode a sender without a key may send plaintext; one with a key may not. */
static __always_inline int decrypted_or_not_required(const struct __sk_buff *skb, __u32 sender)
{
	__u32 zero = 0;
	struct encryption_config *cfg = bpf_map_lookup_elem(&knit_encryption, &zero);

	if (!cfg || cfg->require_decrypted == REQUIRE_DECRYPTED_NEVER)
		return 1;
	if ((skb->mark & MARK_DECRYPTED_MASK) == MARK_DECRYPTED)
		return 1;
	return cfg->require_decrypted == REQUIRE_DECRYPTED_FROM_KEYED &&
	       !bpf_map_lookup_elem(&knit_wireguard_nodes, &sender);
}

/* A packet from the tunnel counts only as coming from where the ipcache
 * places its inner source: a pod (or pod CIDR) of the node that sent it.
 * Its identity is that entry's; the VNI is not trusted. A packet claiming
 * a local pod's address, an address the mesh does not know, or a pod of
 * another node (a pod or host that reaches the tunnel port, a node posing
 * as another) is dropped. With encryption on, so is every packet that did
 * not come through WireGuard (a host on the underlay forging a node's
 * address), whatever it carries. */
SEC("classifier")
int from_tunnel(struct __sk_buff *skb)
{
	struct flow f = {};
	__u32 sender = outer_source(skb);
	int parsed = parse(skb, &f);

	if (!decrypted_or_not_required(skb, sender))
		return drop(DROP_FORGED_TUNNEL_SOURCE, &f, NO_PARTIES);
	if (parsed > 0)
		return TC_ACT_OK;
	if (parsed < 0)
		return drop(DROP_MALFORMED, &f, NO_PARTIES);
	struct endpoint_value *dst = bpf_map_lookup_elem(&knit_endpoints, &f.daddr);
	if (!dst)
		return drop(DROP_NO_ROUTE, &f, NO_PARTIES);
	struct ipcache_key k = {.prefixlen = 32, .addr = f.saddr};
	struct ipcache_value *src = bpf_map_lookup_elem(&knit_ipcache, &k);
	if (!src || !src->tunnel_endpoint || src->tunnel_endpoint != sender)
		return drop(DROP_FORGED_TUNNEL_SOURCE, &f,
			    (struct parties){.src = src ? src->identity : 0, .dst = dst->identity,
					     .direction = EVENT_DIRECTION_NONE});
	__u32 identity = src->identity;
	ct_new_flow(&f);
	if (answers_stack_flow(&f))
		return TC_ACT_OK;
	return deliver(skb, &f, dst, identity);
}

/* Ingress of the WireGuard interface: every packet here was decrypted
 * and came from the peer whose allowed IP is its source. */
SEC("classifier")
int from_wireguard(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~MARK_DECRYPTED_MASK) | MARK_DECRYPTED;
	return TC_ACT_OK;
}

/* Ingress of the node's underlay interface (native and hybrid routing):
 * a packet from a pod of another node (the ipcache places its source on a
 * tunnel endpoint) to a local pod is delivered as from the tunnel, its
 * identity the ipcache's, past the host's netfilter, which saw neither
 * direction of the flow. Everything else is the host's. */
SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	struct flow f;

	if (parse(skb, &f) != 0)
		return TC_ACT_OK;
	struct endpoint_value *dst = bpf_map_lookup_elem(&knit_endpoints, &f.daddr);
	if (!dst)
		return TC_ACT_OK;
	struct ipcache_key k = {.prefixlen = 32, .addr = f.saddr};
	struct ipcache_value *src = bpf_map_lookup_elem(&knit_ipcache, &k);
	if (!src || !src->tunnel_endpoint)
		return TC_ACT_OK;
	__u32 identity = src->identity;
	ct_new_flow(&f);
	if (answers_stack_flow(&f))
		return TC_ACT_OK;
	return deliver(skb, &f, dst, identity);
}

/* Egress of the host side of a pod veth: what the host stack forwards
 * into the pod (after kube-proxy's DNAT, replies of masqueraded flows,
 * traffic from outside). Packets the host itself sends (kubelet probes,
 * hostNetwork pods) always pass, as Cilium's reserved:host does; the rest
 * meets the pod's ingress policy with the source's ipcache identity. */
SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct flow f;
	int parsed = parse(skb, &f);

	if (parsed != 0)
		return TC_ACT_OK;
	struct endpoint_value *dst = bpf_map_lookup_elem(&knit_endpoints, &f.daddr);
	if (!dst)
		return TC_ACT_OK;
	ct_new_flow(&f);
	served_from_stack(&f);
	int opening = ct_opens(&f);
	if (skb->ingress_ifindex != 0 && (dst->flags & ENDPOINT_F_POLICY)) {
		__u32 peer = identity_of(f.saddr, 0);
		if (!admitted(&f, peer, dst->identity))
			return drop(DROP_POLICY, &f,
				    (struct parties){.src = peer, .dst = dst->identity, .direction = POLICY_INGRESS});
	}
	ct_mark(&f, opening ? CT_F_INGRESS : 0);
	return TC_ACT_OK;
}

/* A socket's first connection to a service frontend got backend `be`. */
static __always_inline void emit_translation(const struct service_key *sk, const struct backend_value *be)
{
	__u32 zero = 0;
	struct observe_config *cfg = bpf_map_lookup_elem(&knit_observe, &zero);

	if (!cfg || !(cfg->events & (1U << EVENT_TRANSLATION)))
		return;
	struct flow_event e = {
		.timestamp = bpf_ktime_get_ns(),
		.daddr = be->addr,
		.dport = be->port,
		.orig_daddr = sk->vip,
		.orig_dport = sk->port,
		.kind = EVENT_TRANSLATION,
		.direction = EVENT_DIRECTION_NONE,
		.proto = sk->proto,
	};
	if (bpf_ringbuf_output(&knit_events, &e, sizeof(e), BPF_RB_NO_WAKEUP) < 0) {
		__u64 *lost = bpf_map_lookup_elem(&knit_events_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
	}
}

static __always_inline int translate(struct bpf_sock_addr *ctx, int sticky)
{
	struct service_key sk = {};
	struct backend_value *be = 0;
	struct sock_nat_key ak = {};

	if (ctx->type == SOCK_STREAM)
		sk.proto = IPPROTO_TCP;
	else if (ctx->type == SOCK_DGRAM)
		sk.proto = IPPROTO_UDP;
	else
		return 1;
	sk.vip = ctx->user_ip4;
	sk.port = (__u16)ctx->user_port;
	struct service_value *svc = bpf_map_lookup_elem(&knit_services, &sk);
	if (!svc)
		return 1;

	__u64 cookie = bpf_get_socket_cookie(ctx);
	ak.cookie = cookie;
	ak.addr = sk.vip;
	ak.port = sk.port;
	if (sticky)
		be = bpf_map_lookup_elem(&knit_sock_aff, &ak);
	if (!be) {
		struct flow f = {.daddr = sk.vip, .dport = sk.port, .proto = sk.proto};
		__u32 count = svc->count;
		struct backend_key bk = {.service_id = svc->service_id, .slot = count ? bpf_get_prandom_u32() % count : 0};
		be = count ? bpf_map_lookup_elem(&knit_backends, &bk) : 0;
		if (!be) {
			drop(DROP_NO_BACKEND, &f, NO_PARTIES);
			return 0;
		}
		if (sticky)
			bpf_map_update_elem(&knit_sock_aff, &ak, be, BPF_ANY);
		emit_translation(&sk, be);
	}

	struct sock_nat_key rk = {.cookie = cookie, .addr = be->addr, .port = be->port};
	struct sock_nat_value rv = {.addr = sk.vip, .port = sk.port};
	bpf_map_update_elem(&knit_sock_nat, &rk, &rv, BPF_ANY);
	ctx->user_ip4 = be->addr;
	ctx->user_port = be->port;
	return 1;
}

static __always_inline int untranslate(struct bpf_sock_addr *ctx)
{
	struct sock_nat_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr = ctx->user_ip4;
	rk.port = (__u16)ctx->user_port;
	struct sock_nat_value *v = bpf_map_lookup_elem(&knit_sock_nat, &rk);
	if (v) {
		ctx->user_ip4 = v->addr;
		ctx->user_port = v->port;
	}
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return translate(ctx, 0);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return translate(ctx, 1);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return untranslate(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return untranslate(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
