/* xskproxy_steer.bpf.c — the XDP steering classifier (seam 1 of DESIGN.md); never rewrites a
 * packet, and drops one only while an agent hands over to its successor.
 *
 * It redirects to the interface's AF_XDP socket for the receiving queue only IPv4 packets that
 * xskproxy owns, judged on the interface's roles (steer_ifaces):
 *   1. destination (addr, port, proto) is a Service frontend          -> STEER_REDIRECT_FRONTEND
 *   2. destination is a node address and the port in its SNAT range   -> STEER_REDIRECT_SNAT_REPLY
 *      (any other port of a node address: the kernel's                -> STEER_PASS_NODE_ADDRESS)
 *   3. source (addr, port, proto) is a Service backend (its replies)  -> STEER_REDIRECT_BACKEND_REPLY
 *   4. destination in a steered prefix (Pod CIDRs, noEncap bypass)    -> STEER_REDIRECT_PREFIX
 * and passes everything else to the kernel: other interfaces, ARP/IPv6/other ethertypes, truncated
 * headers, IPv4 fragments (their ports are unknown; the kernel reassembles), unmatched packets.
 * Every redirect falls back to XDP_PASS, so a dead or absent socket returns traffic to the kernel
 * (fail-open). The one exception is a handover: an agent stopping for a restart leaves the
 * program attached with the interface's hold_until_ns set, and until then traffic xskproxy
 * translates (decisions 1-3) that finds no socket is dropped, not passed: the kernel would
 * re-balance or reset those flows mid-stream, while a dropped segment is retransmitted to the
 * next agent. Prefix traffic (plain routing) still falls back to the kernel. Each decision is
 * counted in a per-CPU array indexed by enum steer_counter.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xskproxy_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct steer_iface);
} xskp_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_FRONTENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct steer_v4_l4_key);
	__type(value, __u32);
} xskp_v4_fronts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct steer_v4_l4_key);
	__type(value, __u32);
} xskp_v4_backs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, STEER_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct steer_v4_lpm_key);
	__type(value, __u32);
} xskp_v4_pfxs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_NODE_ADDRS);
	__type(key, __u32);
	__type(value, struct steer_v4_snat_range);
} xskp_v4_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_XSKMAP_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} xskp_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} xskp_counters SEC(".maps");

#define IP_FRAGMENT_BITS 0x3fff /* MF flag and fragment offset, host order */

static __always_inline void count(__u32 decision)
{
	__u64 *packets = bpf_map_lookup_elem(&xskp_counters, &decision);

	if (packets)
		*packets += 1;
}

static __always_inline int pass(__u32 decision)
{
	count(decision);
	return XDP_PASS;
}

static __always_inline int redirect(struct xdp_md *ctx, const struct steer_iface *iface,
				    __u32 decision)
{
	__u32 queue = ctx->rx_queue_index;
	long action;

	count(decision);
	if (queue >= STEER_MAX_QUEUES)
		return pass(STEER_REDIRECT_FAILED);
	action = bpf_redirect_map(&xskp_xsks, iface->xsk_base + queue, XDP_PASS);
	if (action == XDP_REDIRECT)
		return action;
	if (decision != STEER_REDIRECT_PREFIX && iface->hold_until_ns > bpf_ktime_get_ns()) {
		count(STEER_DROP_HELD);
		return XDP_DROP;
	}
	count(STEER_REDIRECT_FAILED);
	return action;
}

static __always_inline int steered_on(const __u32 *roles, const struct steer_iface *iface)
{
	return roles && (*roles & iface->roles);
}

SEC("xdp")
int xskp_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	const struct steer_iface *iface;
	const struct steer_v4_snat_range *node;
	struct steer_v4_lpm_key prefix_key;
	struct steer_v4_l4_key l4_key;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u16 sport = 0, dport = 0;
	__u32 *roles;

	iface = bpf_map_lookup_elem(&xskp_ifaces, &ifindex);
	if (!iface || !iface->roles)
		return pass(STEER_PASS_NO_IFACE);
	if ((void *)(eth + 1) > data_end)
		return pass(STEER_PASS_MALFORMED);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return pass(STEER_PASS_NOT_IPV4);
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5)
		return pass(STEER_PASS_MALFORMED);
	if (ip->frag_off & bpf_htons(IP_FRAGMENT_BITS))
		return pass(STEER_PASS_FRAGMENT);

	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP ||
	    ip->protocol == IPPROTO_SCTP) {
		/* the first four bytes of TCP, UDP and SCTP headers are the two ports */
		__u16 *ports = (void *)ip + ip->ihl * 4;

		if ((void *)(ports + 2) > data_end)
			return pass(STEER_PASS_MALFORMED);
		sport = ports[0];
		dport = ports[1];
	}

	l4_key.addr = ip->daddr;
	l4_key.port = dport;
	l4_key.proto = ip->protocol;
	l4_key.pad = 0;
	roles = bpf_map_lookup_elem(&xskp_v4_fronts, &l4_key);
	if (steered_on(roles, iface))
		return redirect(ctx, iface, STEER_REDIRECT_FRONTEND);

	node = bpf_map_lookup_elem(&xskp_v4_nodes, &ip->daddr);
	if (node && (node->roles & iface->roles)) {
		if (dport && bpf_ntohs(dport) >= node->snat_port_min &&
		    bpf_ntohs(dport) <= node->snat_port_max)
			return redirect(ctx, iface, STEER_REDIRECT_SNAT_REPLY);
		return pass(STEER_PASS_NODE_ADDRESS);
	}

	l4_key.addr = ip->saddr;
	l4_key.port = sport;
	roles = bpf_map_lookup_elem(&xskp_v4_backs, &l4_key);
	if (steered_on(roles, iface))
		return redirect(ctx, iface, STEER_REDIRECT_BACKEND_REPLY);

	prefix_key.prefixlen = 32;
	prefix_key.addr = ip->daddr;
	roles = bpf_map_lookup_elem(&xskp_v4_pfxs, &prefix_key);
	if (steered_on(roles, iface))
		return redirect(ctx, iface, STEER_REDIRECT_PREFIX);

	return pass(STEER_PASS_NO_MATCH);
}

char _license[] SEC("license") = "GPL";
