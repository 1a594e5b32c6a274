/* Prints the size and field offsets of every struct in knit.h, one per
 * line ("struct size" / "struct.field offset"), then every enum value and
 * flag ("NAME value"); datapath-common/build.rs runs it and its tests
 * compare the output with the Rust definitions. */
#include <stddef.h>
#include <stdio.h>

#include "knit.h"

#define S(t) printf(#t " %zu\n", sizeof(struct t))
#define F(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f))
#define V(n) printf(#n " %d\n", (int)(n))

int main(void)
{
	S(ipcache_key); F(ipcache_key, prefixlen); F(ipcache_key, addr);
	S(ipcache_value); F(ipcache_value, identity); F(ipcache_value, tunnel_endpoint);
	S(endpoint_value); F(endpoint_value, ifindex); F(endpoint_value, identity); F(endpoint_value, flags); F(endpoint_value, mac); F(endpoint_value, node_mac);
	S(stack_flow_key); F(stack_flow_key, addr); F(stack_flow_key, port); F(stack_flow_key, proto);
	S(policy_key); F(policy_key, endpoint); F(policy_key, identity); F(policy_key, dport); F(policy_key, proto); F(policy_key, direction);
	S(policy_cidr_key); F(policy_cidr_key, prefixlen); F(policy_cidr_key, endpoint); F(policy_cidr_key, direction); F(policy_cidr_key, proto); F(policy_cidr_key, dport); F(policy_cidr_key, addr);
	S(service_key); F(service_key, vip); F(service_key, port); F(service_key, proto);
	S(service_value); F(service_value, service_id); F(service_value, count);
	S(backend_key); F(backend_key, service_id); F(backend_key, slot);
	S(backend_value); F(backend_value, addr); F(backend_value, port);
	S(sock_nat_key); F(sock_nat_key, cookie); F(sock_nat_key, addr); F(sock_nat_key, port);
	S(sock_nat_value); F(sock_nat_value, addr); F(sock_nat_value, port);
	S(ct_key); F(ct_key, saddr); F(ct_key, daddr); F(ct_key, sport); F(ct_key, dport); F(ct_key, proto);
	S(ct_value); F(ct_value, flags); F(ct_value, expires);
	S(node_config); F(node_config, tunnel_ifindex); F(node_config, policy_generation);
	S(encryption_config); F(encryption_config, require_decrypted);
	S(flow_event); F(flow_event, timestamp); F(flow_event, saddr); F(flow_event, daddr); F(flow_event, src_identity); F(flow_event, dst_identity); F(flow_event, orig_daddr); F(flow_event, sport); F(flow_event, dport); F(flow_event, orig_dport); F(flow_event, kind); F(flow_event, reason); F(flow_event, direction); F(flow_event, proto);
	S(observe_config); F(observe_config, events);
	V(EVENT_DROP); V(EVENT_POLICY); V(EVENT_TRANSLATION); V(VERDICT_ALLOWED); V(EVENT_DIRECTION_NONE); V(EVENTS_BYTES);
	V(MARK_DECRYPTED_MASK); V(MARK_DECRYPTED);
	V(REQUIRE_DECRYPTED_NEVER); V(REQUIRE_DECRYPTED_ALWAYS); V(REQUIRE_DECRYPTED_FROM_KEYED);
	V(WIREGUARD_NODES_ENTRIES);
	V(NATIVE_PATH_ROUTED); V(NATIVE_PATH_UNROUTABLE); V(NATIVE_NODES_ENTRIES);
	V(ENDPOINT_F_POLICY); V(ENDPOINT_F_EGRESS); V(CT_F_EGRESS); V(CT_F_ALLOWED); V(CT_F_INGRESS); V(CT_F_EGRESS_ALLOWED);
	V(CT_F_FIN); V(CT_F_RST); V(CT_GENERATION_SHIFT); V(CT_GENERATION_BITS); V(CT_LIFETIME_TCP); V(CT_LIFETIME_SYN); V(CT_LIFETIME_CLOSING); V(CT_LIFETIME_OTHER);
	V(STACK_FLOW_OPENED); V(STACK_FLOW_SERVED); V(POLICY_ALLOW); V(POLICY_DENY);
	V(POLICY_INGRESS); V(POLICY_EGRESS); V(POLICY_ENTRIES); V(POLICY_CIDR_ENTRIES); V(CT_ENTRIES);
	V(DROP_POLICY); V(DROP_UNKNOWN_SOURCE); V(DROP_NO_BACKEND); V(DROP_NO_ROUTE);
	V(DROP_MALFORMED); V(DROP_REDIRECT_FAILED); V(DROP_EGRESS_POLICY);
	V(DROP_FORGED_TUNNEL_SOURCE); V(DROP_REASONS);
	return 0;
}
