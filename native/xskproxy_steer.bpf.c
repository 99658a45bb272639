/* xskproxy_steer.bpf.c — the XDP steering classifier (seam 1 of DESIGN.md) and the tc fast path
 * that executes the userspace engine's decisions for established flows (xskp_fast, below).
 * The classifier never rewrites a packet; it drops one only while an agent hands over, or when a
 * frame too big for a socket belongs to a flow the running agent translates (below).
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
 *
 * VLANs: xskproxy serves untagged frames. A frame whose tag is in its data (802.1Q/802.1ad) is
 * the kernel's (STEER_PASS_VLAN): it delivers it to its VLAN device, or drops a tag none claims.
 * A tag carried outside the data is invisible here: a NIC's rx VLAN offload (rxvlan on) or a
 * veth peer's tx VLAN offload puts it in skb->vlan_tci / the rx descriptor, xdp_md has no VLAN
 * field, generic (skb) XDP shows the untagged data (it runs before the kernel looks at the
 * tag), and so does native XDP on veth (measured: a tag pushed by the peer's tc is redirected
 * as untagged in both modes). Seeing it needs bpf_xdp_metadata_rx_vlan_tag (6.8+, native mode,
 * a device-bound program per interface), or the NIC's rxvlan off. xskp_fast (tc) checks
 * skb->vlan_present itself.
 *
 * Kernel-NATed flows: the kernel's own masquerade (kube-proxy --random-fully over 1024-65535,
 * a CNI's egress SNAT) may pick a port inside the SNAT range. Before decision 2 redirects, a
 * TCP/UDP packet is looked up in the kernel's conntrack (bpf_xdp_ct_lookup); a flow the
 * kernel tracks is the kernel's (STEER_PASS_KERNEL_NAT). Frames xskproxy translates never
 * enter the kernel's conntrack, so its own replies are never found there.
 *
 * TTL: a frame with TTL <= 1 is never passed to the fast path (which would leave it to the
 * kernel, and the kernel would deliver a NodePort's or SNAT reply's frame to a local socket):
 * it follows the decisions below, and the pipeline answers ICMP time exceeded.
 *
 * Two-tier dataplane: before those decisions, a packet of a flow the userspace engine has
 * offloaded (found in xskp_flows_v4) is passed to the kernel, where xskp_fast at tc ingress
 * rewrites and redirects it; so is Pod-CIDR traffic when the fast path routes the bypass. A pure
 * TCP SYN always goes to userspace (a new connection on an old tuple is userspace's to decide).
 * SCTP is steered by decisions 1-4 like TCP and UDP (its ports are where theirs are) but never
 * looked up among the offloaded flows, here or in xskp_fast: the userspace tier carries every
 * SCTP packet (its CRC32c covers the ports; the kernel has no helper to redo it).
 * Translated flows only while the fast path is live (the agent's heartbeat, or a handover
 * hold); the bypass and cached routes only on the heartbeat (Pod-CIDR traffic is the kernel's
 * during a handover). A packet larger than a socket's chunk is never redirected to a socket (it
 * could only be dropped there): Pod-CIDR traffic, and anything while no agent serves the queue,
 * goes to the kernel (STEER_PASS_TOO_BIG); a translated flow's frame is dropped
 * (STEER_DROP_TOO_BIG), as the kernel would deliver it untranslated, and TCP sends it again
 * smaller, or by then through the fast path.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
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

/* The fast path's flows: max_entries is set by the loader (config flowTableEntries). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xskp_flow_v4);
} xskp_flows_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct xskp_fast_config);
} xskp_fast_cfg SEC(".maps");

/* The kernel's conntrack lookup (net/netfilter/nf_conntrack_bpf.c); weak: a kernel without it
 * leaves the SNAT range decision to the range alone. opts in its 12-byte form, accepted by every
 * kernel that has the kfunc. */
struct nf_conn {                /* opaque here: a struct, as the kernel's BTF has it, not a
				 * forward declaration (libbpf 1.1 holds the kinds incompatible) */
	__u64 opaque;
};
struct xskp_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};
#define XSKP_CT_OPTS_SIZE 12
#define CT_CURRENT_NETNS (-1)
extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple,
					 __u32 tuple_size, struct xskp_ct_opts *opts,
					 __u32 opts_size) __ksym __weak;
extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *ctx, struct bpf_sock_tuple *tuple,
					 __u32 tuple_size, struct xskp_ct_opts *opts,
					 __u32 opts_size) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

#define ETH_P_8021Q_ 0x8100     /* 802.1Q tag */
#define ETH_P_8021AD_ 0x88a8    /* 802.1ad (QinQ) outer tag */
#define IP_FRAGMENT_BITS 0x3fff /* MF flag and fragment offset, host order */
#define AF_INET 2
#define TCP_FLAGS_OFFSET 13     /* byte of the TCP header holding FIN/SYN/RST/PSH/ACK/URG */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
/* the largest frame an AF_XDP socket takes into a chunk (xsk_pool_get_rx_frame_size) */
/* BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (kernel 6.3+; Debian 12's UAPI headers predate it) */
#define ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define SOCKET_FRAME_MAX (XSKP_FRAME_SIZE - XSKP_FRAME_HEADROOM - XDP_PACKET_HEADROOM)
/* the largest frame xskp_fast upcalls: what the upcall pair's MTU lets through */
#define UPCALL_FRAME_MAX (XSKP_UPCALL_MTU + ETH_HLEN)
#define TCP_HEADER_MAX 60

/* dataplane/tables.py hash_flow, bit for bit: murmur3's finalizer over the host-order 5-tuple. */
static __always_inline __u64 mix64(__u64 x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static __always_inline __u64 hash_flow(__u32 src, __u32 dst, __u16 sport, __u16 dport, __u8 proto)
{
	__u64 a = ((__u64)src << 32) | dst;
	__u64 b = ((__u64)sport << 24) | ((__u64)dport << 8) | proto;

	return mix64(a ^ mix64(b + 0x9e3779b97f4a7c15ULL));
}

/* The offloaded flow keyed by this (network-order) 5-tuple, or NULL. */
static __always_inline struct xskp_flow_v4 *
flow_lookup_v4(const struct xskp_fast_config *cfg, __u32 saddr, __u32 daddr, __u16 sport,
	       __u16 dport, __u8 proto)
{
	__u32 src = bpf_ntohl(saddr), dst = bpf_ntohl(daddr);
	__u16 sp = bpf_ntohs(sport), dp = bpf_ntohs(dport);
	__u32 mask = cfg->flow_mask;
	__u32 slot = (__u32)hash_flow(src, dst, sp, dp, proto);
	struct xskp_flow_v4 *f;
	__u32 i, key;

	for (i = 0; i < XSKP_FLOW_MAX_PROBE; i++) {
		key = (slot + i) & mask;
		f = bpf_map_lookup_elem(&xskp_flows_v4, &key);
		if (!f || !f->flags)
			return NULL;
		if ((f->flags & XSKP_FLOW_IN_USE) && f->src_addr == src && f->dst_addr == dst &&
		    f->src_port == sp && f->dst_port == dp && f->proto == proto)
			return f;
	}
	return NULL;
}

/* Translated flows run in the fast path while the agent's heartbeat is fresh or the interface's
 * handover hold lasts; plain routing (the bypass, cached routes) only while the heartbeat is:
 * during a handover Pod-CIDR traffic is the kernel's, as it is for the steering program. */
static __always_inline int fast_live(const struct xskp_fast_config *cfg,
				     const struct steer_iface *iface, __u64 now)
{
	return cfg->flow_mask && (cfg->alive_until_ns > now || iface->hold_until_ns > now);
}

static __always_inline int fast_routing_live(const struct xskp_fast_config *cfg, __u64 now)
{
	return cfg->flow_mask && cfg->bypass && cfg->alive_until_ns > now;
}

static __always_inline const struct xskp_fast_config *fast_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&xskp_fast_cfg, &zero);
}

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
	__u32 queue = ctx->rx_queue_index, index = iface->xsk_base + queue;
	long action;

	if (queue >= STEER_MAX_QUEUES) {
		count(decision);
		return pass(STEER_REDIRECT_FAILED);
	}
	if (queue > 0 && queue >= iface->queues)
		return pass(STEER_PASS_UNSERVED_QUEUE);
	if (ctx->data_end - ctx->data > SOCKET_FRAME_MAX) {
		/* no socket can take it; the kernel would pass a translated flow's frame on
		 * untranslated, so while an agent serves (or holds) the queue it is dropped */
		if (decision != STEER_REDIRECT_PREFIX &&
		    (bpf_map_lookup_elem(&xskp_xsks, &index) ||
		     iface->hold_until_ns > bpf_ktime_get_ns())) {
			count(STEER_DROP_TOO_BIG);
			return XDP_DROP;
		}
		return pass(STEER_PASS_TOO_BIG);
	}
	count(decision);
	action = bpf_redirect_map(&xskp_xsks, index, XDP_PASS);
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

/* The kernel's conntrack tracks this TCP/UDP packet's flow (either direction). ctx is an xdp_md
 * (from_xdp 1) or an __sk_buff (0); the constant picks the kfunc when inlined. */
static __always_inline int kernel_tracks_v4(void *ctx, int from_xdp, const struct iphdr *ip,
					    __u16 sport, __u16 dport)
{
	struct bpf_sock_tuple tuple = {};
	struct xskp_ct_opts opts = {};
	struct nf_conn *ct;

	if (!bpf_ct_release || (from_xdp ? !bpf_xdp_ct_lookup : !bpf_skb_ct_lookup))
		return 0;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return 0;
	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = ip->daddr;
	tuple.ipv4.sport = sport;
	tuple.ipv4.dport = dport;
	opts.netns_id = CT_CURRENT_NETNS;
	opts.l4proto = ip->protocol;
	if (from_xdp)
		ct = bpf_xdp_ct_lookup(ctx, &tuple, sizeof(tuple.ipv4), &opts, XSKP_CT_OPTS_SIZE);
	else
		ct = bpf_skb_ct_lookup(ctx, &tuple, sizeof(tuple.ipv4), &opts, XSKP_CT_OPTS_SIZE);
	if (!ct)
		return 0;
	bpf_ct_release(ct);
	return 1;
}

/* Decisions 1-4 of the header comment for an IPv4 packet received on iface: a STEER_REDIRECT_*
 * counter when userspace takes it, else the STEER_PASS_* reason it is the kernel's. Shared by
 * the XDP program and, in upcall mode, by xskp_fast. */
static __always_inline __u32 steer_decide(void *ctx, int from_xdp, const struct iphdr *ip,
					  __u16 sport, __u16 dport, const struct steer_iface *iface)
{
	const struct steer_v4_snat_range *node;
	struct steer_v4_lpm_key prefix_key;
	struct steer_v4_l4_key l4_key;
	__u32 *roles;

	l4_key.addr = ip->daddr;
	l4_key.port = dport;
	l4_key.proto = ip->protocol;
	l4_key.pad = 0;
	roles = bpf_map_lookup_elem(&xskp_v4_fronts, &l4_key);
	if (steered_on(roles, iface))
		return STEER_REDIRECT_FRONTEND;

	node = bpf_map_lookup_elem(&xskp_v4_nodes, &ip->daddr);
	if (node && (node->roles & iface->roles)) {
		if (dport && bpf_ntohs(dport) >= node->snat_port_min &&
		    bpf_ntohs(dport) <= node->snat_port_max) {
			if (kernel_tracks_v4(ctx, from_xdp, ip, sport, dport))
				return STEER_PASS_KERNEL_NAT;
			return STEER_REDIRECT_SNAT_REPLY;
		}
		return STEER_PASS_NODE_ADDRESS;
	}

	l4_key.addr = ip->saddr;
	l4_key.port = sport;
	roles = bpf_map_lookup_elem(&xskp_v4_backs, &l4_key);
	if (steered_on(roles, iface))
		return STEER_REDIRECT_BACKEND_REPLY;

	prefix_key.prefixlen = 32;
	prefix_key.addr = ip->daddr;
	roles = bpf_map_lookup_elem(&xskp_v4_pfxs, &prefix_key);
	if (steered_on(roles, iface))
		return STEER_REDIRECT_PREFIX;
	return STEER_PASS_NO_MATCH;
}

static __always_inline int steer_redirects(__u32 decision)
{
	return decision >= STEER_REDIRECT_FRONTEND && decision <= STEER_REDIRECT_PREFIX;
}

SEC("xdp")
int xskp_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	const struct steer_iface *iface;
	const struct xskp_fast_config *cfg = fast_config();
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u16 sport = 0, dport = 0;
	__u8 tcp_flags = 0;
	int live = 0, routing_live = 0;
	__u64 now;
	__u32 decision;

	iface = bpf_map_lookup_elem(&xskp_ifaces, &ifindex);
	if (!iface || !iface->roles)
		return pass(STEER_PASS_NO_IFACE);
	if ((void *)(eth + 1) > data_end)
		return pass(STEER_PASS_MALFORMED);
	if (eth->h_proto == bpf_htons(ETH_P_8021Q_) || eth->h_proto == bpf_htons(ETH_P_8021AD_))
		return pass(STEER_PASS_VLAN);
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
		if (ip->protocol == IPPROTO_TCP) {
			__u8 *flags = (void *)ports + TCP_FLAGS_OFFSET;

			if ((void *)(flags + 1) > data_end)
				return pass(STEER_PASS_MALFORMED);
			tcp_flags = *flags;
		}
	}

	now = bpf_ktime_get_ns();
	live = cfg && fast_live(cfg, iface, now) && ip->ttl > 1;
	routing_live = cfg && fast_routing_live(cfg, now);
	if (live && (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) &&
	    (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN) {
		struct xskp_flow_v4 *f = flow_lookup_v4(cfg, ip->saddr, ip->daddr, sport, dport,
							ip->protocol);

		if (f && (routing_live || !(f->flags & XSKP_FLOW_ROUTE)))
			return pass(STEER_PASS_FAST_FLOW);
	}
	if (live && ip->protocol == IPPROTO_IPIP) {
		/* DSR to this node: the flow is keyed by the inner 5-tuple */
		struct iphdr *inner = (void *)ip + ip->ihl * 4;
		__u16 *inner_ports;
		__u8 *inner_flags;

		if ((void *)(inner + 1) > data_end || inner->ihl < 5)
			return pass(STEER_PASS_MALFORMED);
		inner_ports = (void *)inner + inner->ihl * 4;
		inner_flags = (void *)inner_ports + TCP_FLAGS_OFFSET;
		if ((inner->protocol == IPPROTO_TCP || inner->protocol == IPPROTO_UDP) &&
		    !(inner->frag_off & bpf_htons(IP_FRAGMENT_BITS)) &&
		    (void *)(inner_flags + 1) <= data_end &&
		    (inner->protocol == IPPROTO_UDP ||
		     (*inner_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)) {
			struct xskp_flow_v4 *f = flow_lookup_v4(cfg, inner->saddr, inner->daddr,
								inner_ports[0], inner_ports[1],
								inner->protocol);

			if (f && (f->flags & XSKP_FLOW_DECAP))
				return pass(STEER_PASS_FAST_FLOW);
		}
	}

	decision = steer_decide(ctx, 1, ip, sport, dport, iface);
	if (!steer_redirects(decision))
		return pass(decision);
	if (decision == STEER_REDIRECT_PREFIX && routing_live)
		return pass(STEER_PASS_FAST_BYPASS);
	return redirect(ctx, iface, decision);
}

/* Upcall mode, the socket end of an upcall veth pair: everything arriving here is what xskp_fast
 * chose for userspace on the served interface; into that interface's socket for the queue. */
SEC("xdp")
int xskp_upcall(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex, queue = ctx->rx_queue_index;
	const struct steer_iface *dev = bpf_map_lookup_elem(&xskp_ifaces, &ifindex);
	long action;

	if (!dev || queue >= STEER_MAX_QUEUES) {
		count(UPCALL_DROP_NO_SOCKET);
		return XDP_DROP;
	}
	action = bpf_redirect_map(&xskp_xsks, dev->xsk_base + queue, XDP_DROP);
	if (action != XDP_REDIRECT)
		count(UPCALL_DROP_NO_SOCKET);
	return action;
}

/* ---- the tc fast path ---------------------------------------------------------------------
 * xskp_fast runs at tc ingress (clsact, direct action) of the transport and gateway interfaces,
 * on skbs: GSO super-frames and jumbo frames pass intact and are segmented (or sent with TSO)
 * on egress. It executes, never decides: a packet whose 5-tuple is in xskp_flows_v4 gets the
 * entry's rewrite (addresses, ports; the L4 checksum through the kernel's helper, which handles
 * CHECKSUM_PARTIAL), TTL - 1, the entry's MACs, and is redirected to the entry's interface; a
 * packet to a steered Pod-CIDR prefix is routed untracked by the kernel FIB (the netfilter
 * bypass) when the neighbour is resolved. Everything else, and everything while no agent is
 * live, goes on to the kernel (TC_ACT_OK). Only last_seen_ns, tcp_flags_seen and the packet and
 * byte counts of an entry are written here; userspace reads them to age and close flows. */
#define HEADERS_MAX (ETH_HLEN + 60 + 20)  /* Ethernet, IPv4 with options, TCP without options */
#define HEADERS_PLAIN (ETH_HLEN + 20 + TCP_FLAGS_OFFSET + 1)  /* no IP options: up to TCP flags */

static __always_inline int fast_pass(__u32 reason)
{
	count(reason);
	return TC_ACT_OK;
}

/* Ones' complement arithmetic on raw (network-order) words, as the kernel's csum_add/csum_fold. */
static __always_inline __u32 csum_add32(__u32 sum, __u32 x)
{
	sum += x;
	return sum + (sum < x);
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Ethernet and the fixed part of IPv4: what a forwarded packet's rewrite replaces in one store. */
struct rewrite_block {
	struct ethhdr eth;
	struct iphdr ip;
} __attribute__((packed));

/* A forwarded packet's rewrite in at most four helper calls (each one checks the skb is
 * writable, and a write to a cloned skb copies its head only once): the L4 checksum by the
 * addresses' difference (pseudo-header) and by the ports', through the kernel (it knows
 * CHECKSUM_PARTIAL and COMPLETE skbs); then MACs, TTL - 1, addresses and the header checksum
 * (RFC 1624) in one store, the ports in another. new_*: network order, equal to the old value
 * when unchanged; ports and csum_off only for TCP/UDP. 0, -1 when the TTL would expire (nothing
 * written), -2 when a helper failed. */
static __always_inline int fast_rewrite(struct __sk_buff *skb, const struct iphdr *ip, __u32 l4_off,
					__u32 csum_off, __u64 mangled, __u32 new_src, __u32 new_dst,
					__u16 sport, __u16 dport, __u16 new_sport, __u16 new_dport,
					const __u8 *dst_mac, const __u8 *src_mac)
{
	struct rewrite_block blk;
	__u16 old_ttl_word, new_ttl_word, new_ports[2] = {new_sport, new_dport};
	__u32 addr_diff, port_diff, ip_diff;
	int addrs_change, ports_change;

	if (ip->ttl <= 1)
		return -1;
	/* every read of ip (it points into the packet) comes before the first helper call */
	blk.ip = *ip;
	addrs_change = new_src != blk.ip.saddr || new_dst != blk.ip.daddr;
	ports_change = csum_off && (new_sport != sport || new_dport != dport);
	__builtin_memcpy(blk.eth.h_dest, dst_mac, ETH_ALEN);
	__builtin_memcpy(blk.eth.h_source, src_mac, ETH_ALEN);
	blk.eth.h_proto = bpf_htons(ETH_P_IP);
	old_ttl_word = *(__u16 *)&blk.ip.ttl;            /* TTL and protocol: one 16-bit word */
	blk.ip.ttl -= 1;
	new_ttl_word = *(__u16 *)&blk.ip.ttl;
	addr_diff = csum_add32(csum_add32(csum_add32(~blk.ip.saddr, new_src), ~blk.ip.daddr), new_dst);
	ip_diff = csum_add32(csum_add32(addr_diff, (__u16)~old_ttl_word), new_ttl_word);
	blk.ip.check = csum_fold32(csum_add32((__u16)~blk.ip.check, ip_diff));
	blk.ip.saddr = new_src;
	blk.ip.daddr = new_dst;
	port_diff = csum_add32(~(((__u32)dport << 16) | sport), ((__u32)new_dport << 16) | new_sport);
	if (csum_off && addrs_change &&
	    bpf_l4_csum_replace(skb, csum_off, 0, addr_diff, BPF_F_PSEUDO_HDR | mangled))
		return -2;
	if (ports_change && bpf_l4_csum_replace(skb, csum_off, 0, port_diff, mangled))
		return -2;
	if (bpf_skb_store_bytes(skb, 0, &blk, sizeof(blk), 0))
		return -2;
	if (ports_change && bpf_skb_store_bytes(skb, l4_off, new_ports, sizeof(new_ports), 0))
		return -2;
	return 0;
}

/* DSR ingress: an outer IPv4 header (IPIP) from the node address to the backend's node. The
 * kernel lowers a GSO packet's segment size by the 20 bytes (no BPF_F_ADJ_ROOM_FIXED_GSO), so
 * its segments still fit the MTU; a full-sized packet without GSO does not (as with any IPIP
 * tunnel, the transport MTU must leave room for 20 bytes). */
static __always_inline int fast_encapsulate(struct __sk_buff *skb, const struct xskp_fast_config *cfg,
					    const struct xskp_flow_v4 *f, __u8 tos, __u16 frag_off)
{
	struct iphdr outer = {};
	__u32 inner_len = skb->len - ETH_HLEN, sum;

	outer.version = 4;
	outer.ihl = 5;
	outer.tos = tos;
	outer.tot_len = bpf_htons(inner_len + sizeof(outer) > 0xffff ? 0xffff : inner_len + sizeof(outer));
	outer.frag_off = frag_off & bpf_htons(0x4000);      /* DF, as the inner packet has it */
	outer.ttl = 64;
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = bpf_htonl(cfg->encap_src);
	outer.daddr = bpf_htonl(f->encap_dst);
	sum = bpf_csum_diff(0, 0, (__be32 *)&outer, sizeof(outer), 0);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	outer.check = (__u16)~sum;
	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0) ? -1 : 0;
}

static __always_inline int fast_execute_flow(struct __sk_buff *skb, const struct xskp_fast_config *cfg,
					     struct xskp_flow_v4 *f, struct iphdr *ip, __u32 l4_off,
					     __u16 sport, __u16 dport, __u8 tcp_flags, __u64 now)
{
	__u8 tos = ip->tos;
	__u16 frag_off = ip->frag_off;
	__u8 proto = ip->protocol;
	__u32 csum_off = l4_off + (proto == IPPROTO_TCP ? 16 : 6);
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	int err;

	err = fast_rewrite(skb, ip, l4_off, csum_off, mangled, bpf_htonl(f->new_src_addr),
			   bpf_htonl(f->new_dst_addr), sport, dport, bpf_htons(f->new_src_port),
			   bpf_htons(f->new_dst_port), f->dst_mac, f->src_mac);
	if (err == -1)
		return fast_pass(FAST_PASS_TTL);
	if (err)
		goto rewrite_failed;
	/* after the rewrite: the tunnel goes between the Ethernet header and the inner one */
	if ((f->flags & XSKP_FLOW_ENCAP) && fast_encapsulate(skb, cfg, f, tos, frag_off))
		goto rewrite_failed;
	f->last_seen_ns = now;
	if ((f->tcp_flags_seen | tcp_flags) != f->tcp_flags_seen)
		f->tcp_flags_seen |= tcp_flags;
	f->packets += 1;
	f->bytes += skb->len;
	count(FAST_FLOW);
	return bpf_redirect(f->out_ifindex, 0);

rewrite_failed:
	count(FAST_DROP_REWRITE);
	return TC_ACT_SHOT;
}

/* Pod-CIDR traffic: the kernel FIB's route and resolved neighbour, without netfilter. */
static __always_inline int fast_route_bypass(struct __sk_buff *skb, struct iphdr *ip)
{
	struct bpf_fib_lookup fib = {};
	const struct steer_iface *out;
	__u8 proto = ip->protocol;
	long rc;
	int err;

	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = proto;
	fib.tot_len = 0;            /* 0: the kernel checks the skb (GSO-aware) against the MTU */
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return fast_pass(FAST_PASS_NO_NEIGHBOUR);
	out = bpf_map_lookup_elem(&xskp_ifaces, &fib.ifindex);
	if (!out || !out->roles)
		return fast_pass(FAST_PASS_NO_MATCH);
	err = fast_rewrite(skb, ip, 0, 0, 0, ip->saddr, ip->daddr, 0, 0, 0, 0, fib.dmac, fib.smac);
	if (err == -1)
		return fast_pass(FAST_PASS_TTL);
	if (err) {
		count(FAST_DROP_REWRITE);
		return TC_ACT_SHOT;
	}
	count(FAST_BYPASS);
	return bpf_redirect(fib.ifindex, 0);
}

/* DSR on the backend's node: an IPIP packet whose inner 5-tuple is an offloaded flow marked
 * XSKP_FLOW_DECAP loses its outer header, then goes through the flow's rewrite. FAST_NO_MATCH:
 * not such a packet (the caller decides). */
#define FAST_NO_MATCH (-100)
static __always_inline int fast_decapsulate(struct __sk_buff *skb, const struct xskp_fast_config *cfg,
					    struct iphdr *outer, __u64 now)
{
	void *data, *data_end;
	struct xskp_flow_v4 *f;
	struct iphdr *inner;
	__u16 *ports, sport, dport;
	__u8 *flags, tcp_flags = 0;
	__u32 outer_len = outer->ihl * 4;

	data_end = (void *)(long)skb->data_end;
	inner = (void *)outer + outer_len;
	if (outer_len != sizeof(*outer) || (void *)(inner + 1) > data_end || inner->ihl != 5 ||
	    (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP) ||
	    (inner->frag_off & bpf_htons(IP_FRAGMENT_BITS)))
		return FAST_NO_MATCH;
	ports = (void *)(inner + 1);
	flags = (void *)ports + TCP_FLAGS_OFFSET;
	if ((void *)(flags + 1) > data_end)
		return FAST_NO_MATCH;
	if (inner->protocol == IPPROTO_TCP)
		tcp_flags = *flags;
	if ((tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return FAST_NO_MATCH;
	sport = ports[0];
	dport = ports[1];
	f = flow_lookup_v4(cfg, inner->saddr, inner->daddr, sport, dport, inner->protocol);
	if (!f || !(f->flags & XSKP_FLOW_DECAP))
		return FAST_NO_MATCH;
	if (bpf_skb_adjust_room(skb, -(__s32)sizeof(*outer), BPF_ADJ_ROOM_MAC,
				ADJ_ROOM_DECAP_L3_IPV4)) {
		count(FAST_DROP_REWRITE);
		return TC_ACT_SHOT;
	}
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	inner = data + ETH_HLEN;
	if ((void *)(inner + 1) > data_end) {
		count(FAST_DROP_REWRITE);
		return TC_ACT_SHOT;
	}
	return fast_execute_flow(skb, cfg, f, inner, ETH_HLEN + sizeof(*inner), sport, dport,
				 tcp_flags, now);
}

/* Upcall mode with several workers: the queue of the upcall pair (so the worker) that a packet
 * goes to, the same for both directions of a flow, so that each worker finds the flows it
 * made. A request to a frontend goes by its client (source address, the inner one of a DSR
 * tunnel: every flow of a client on one worker, so ClientIP affinity holds), a backend's reply by its destination (that client),
 * a reply to a SNAT port by the port (a worker allocates ports p with p % queues == its queue),
 * Pod-CIDR traffic by both addresses, symmetrically (xor). The veth queues the redirected skb
 * on the pair's kernel end tx queue queue_mapping - 1, which is the socket end's rx queue. */
static __always_inline __u32 xskp_upcall_queue(struct __sk_buff *skb, __u32 decision,
					       const struct iphdr *ip, __u16 dport, __u32 queues)
{
	const struct iphdr *inner = (void *)ip + ip->ihl * 4;
	__u32 key;

	if (decision == STEER_REDIRECT_SNAT_REPLY)
		return bpf_ntohs(dport) % queues;
	if (decision == STEER_REDIRECT_FRONTEND && ip->protocol == IPPROTO_IPIP) {
		/* a DSR tunnel: its flow is the inner one, whose backend's reply goes by the client */
		if ((void *)(inner + 1) > (void *)(long)skb->data_end)
			return 0;
		key = inner->saddr;
	} else if (decision == STEER_REDIRECT_FRONTEND)
		key = ip->saddr;
	else if (decision == STEER_REDIRECT_BACKEND_REPLY)
		key = ip->daddr;
	else
		key = ip->saddr ^ ip->daddr;
	key = bpf_ntohl(key) * 0x9e3779b1u;   /* Fibonacci hashing: the high bits mix every input bit */
	return (key >> 16) % queues;
}

/* Upcall mode: what userspace takes (steer_decide) goes through the interface's upcall pair to
 * its socket, while the agent is alive; the rest, the kernel's, as the XDP program decides. A
 * frame (or GSO segment) larger than the pair carries is never upcalled: Pod-CIDR traffic goes
 * to the kernel, a translated flow's frame is dropped (as STEER_DROP_TOO_BIG in XDP mode). */
static __always_inline int fast_upcall(struct __sk_buff *skb, const struct xskp_fast_config *cfg,
				       const struct steer_iface *iface, struct iphdr *ip,
				       __u32 l4_off, __u16 sport, __u16 dport, __u8 tcp_flags, __u64 now)
{
	__u32 decision = steer_decide(skb, 0, ip, sport, dport, iface);
	__u32 frame_len = skb->len, queue = 0, slot;

	if (!steer_redirects(decision))
		return fast_pass(decision);
	if (decision == STEER_REDIRECT_PREFIX) {
		if (fast_routing_live(cfg, now))
			return fast_route_bypass(skb, ip);
		if (cfg->alive_until_ns <= now)
			return fast_pass(STEER_REDIRECT_FAILED);   /* during a hold: the kernel routes */
	} else if (cfg->alive_until_ns <= now) {
		count(STEER_DROP_HELD);     /* a handover's hold: retransmitted to the next agent */
		return TC_ACT_SHOT;
	}
	if (skb->gso_size)
		frame_len = l4_off + TCP_HEADER_MAX + skb->gso_size;
	if (frame_len > UPCALL_FRAME_MAX) {
		if (decision == STEER_REDIRECT_PREFIX)
			return fast_pass(STEER_PASS_TOO_BIG);
		count(STEER_DROP_TOO_BIG);
		return TC_ACT_SHOT;
	}
	if (iface->queues > 1)
		queue = xskp_upcall_queue(skb, decision, ip, dport, iface->queues);
	/* admission: a new flow's first packet goes up only while its socket has credit (room its
	 * worker granted); without, the veth hop, XDP and copy would take the CPU its worker
	 * needs, for a frame its full rings would drop anyway. Flows under way always go up. */
	slot = iface->xsk_base + queue;
	if (slot < STEER_XSKMAP_SIZE) {
		struct xskp_upcall_credit *credit = &((struct xskp_fast_config *)cfg)->credit[slot];
		__u64 limit = credit->limit;

		if (limit && (__s64)(limit - credit->sent) <= 0 && decision == STEER_REDIRECT_FRONTEND &&
		    (ip->protocol == IPPROTO_UDP ||
		     (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)) {
			count(UPCALL_DROP_SHED);
			return TC_ACT_SHOT;
		}
		__sync_fetch_and_add(&credit->sent, 1);
	}
	count(decision);
	if (iface->queues > 1)
		skb->queue_mapping = queue + 1;
	return bpf_redirect(iface->upcall_ifindex, 0);
}

SEC("tc")
int xskp_fast(struct __sk_buff *skb)
{
	const struct xskp_fast_config *cfg = fast_config();
	__u32 ifindex = skb->ingress_ifindex;
	const struct steer_iface *iface;
	struct steer_v4_lpm_key prefix_key;
	void *data, *data_end;
	struct xskp_flow_v4 *f;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u16 sport = 0, dport = 0, *ports;
	__u8 tcp_flags = 0;
	__u32 l4_off, *roles;
	int upcall;
	__u64 now;

	if (!cfg || !cfg->flow_mask)
		return TC_ACT_OK;
	iface = bpf_map_lookup_elem(&xskp_ifaces, &ifindex);
	if (!iface || !iface->roles)
		return TC_ACT_OK;
	if (skb->protocol != bpf_htons(ETH_P_IP) || skb->vlan_present)
		return fast_pass(FAST_PASS_NO_MATCH);
	now = bpf_ktime_get_ns();
	if (!fast_live(cfg, iface, now))
		return fast_pass(FAST_PASS_NOT_LIVE);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	/* the headers read below in the linear part, pulled only when they are not (a pull of a
	 * cloned skb copies its head); short frames stay short (bounds checked below) */
	if (data + HEADERS_PLAIN > data_end) {
		bpf_skb_pull_data(skb, HEADERS_PLAIN);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	eth = data;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl < 5 ||
	    ip->version != 4)
		return fast_pass(FAST_PASS_NO_MATCH);
	if ((ip->ihl != 5 || ip->protocol == IPPROTO_IPIP) && data + HEADERS_MAX > data_end) {
		bpf_skb_pull_data(skb, HEADERS_MAX);    /* IP options, or an inner header (DSR) */
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		eth = data;
		ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return fast_pass(FAST_PASS_NO_MATCH);
	}
	if (ip->frag_off & bpf_htons(IP_FRAGMENT_BITS))
		return fast_pass(FAST_PASS_NO_MATCH);
	l4_off = ETH_HLEN + ip->ihl * 4;
	upcall = iface->upcall_ifindex != 0;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP ||
	    ip->protocol == IPPROTO_SCTP) {
		ports = (void *)ip + ip->ihl * 4;
		if ((void *)(ports + 2) > data_end)
			return fast_pass(FAST_PASS_NO_MATCH);
		sport = ports[0];
		dport = ports[1];
		if (ip->protocol == IPPROTO_TCP) {
			__u8 *flags = (void *)ports + TCP_FLAGS_OFFSET;

			if ((void *)(flags + 1) > data_end)
				return fast_pass(FAST_PASS_NO_MATCH);
			tcp_flags = *flags;
		}
		/* upcall mode: a frame whose TTL expires here is userspace's (ICMP time exceeded) */
		if (ip->protocol != IPPROTO_SCTP &&
		    (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN &&
		    !(upcall && ip->ttl <= 1)) {
			f = flow_lookup_v4(cfg, ip->saddr, ip->daddr, sport, dport, ip->protocol);
			if (f && !(f->flags & XSKP_FLOW_DECAP) &&
			    (!(f->flags & XSKP_FLOW_ROUTE) || fast_routing_live(cfg, now)))
				return fast_execute_flow(skb, cfg, f, ip, l4_off, sport, dport, tcp_flags, now);
		}
	} else if (ip->protocol == IPPROTO_IPIP) {
		int rc = fast_decapsulate(skb, cfg, ip, now);

		if (rc != FAST_NO_MATCH)
			return rc;
		/* fast_decapsulate may have pulled data: the header pointers are re-read */
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > data_end)
			return fast_pass(FAST_PASS_NO_MATCH);
	}
	if (upcall)
		return fast_upcall(skb, cfg, iface, ip, l4_off, sport, dport, tcp_flags, now);
	if (fast_routing_live(cfg, now)) {
		prefix_key.prefixlen = 32;
		prefix_key.addr = ip->daddr;
		roles = bpf_map_lookup_elem(&xskp_v4_pfxs, &prefix_key);
		if (steered_on(roles, iface))
			return fast_route_bypass(skb, ip);
	}
	return fast_pass(FAST_PASS_NO_MATCH);
}

/* Upcall mode, the kernel end of an upcall veth pair: what arrives here is what the agent sent
 * on the socket end; out of the served interface it belongs to. */
SEC("tc")
int xskp_upcall_tx(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ingress_ifindex;
	const struct steer_iface *dev = bpf_map_lookup_elem(&xskp_ifaces, &ifindex);

	if (!dev || !dev->egress_ifindex || skb->protocol != bpf_htons(ETH_P_IP)) {
		count(UPCALL_DROP_TX_STRAY);
		return TC_ACT_SHOT;
	}
	return bpf_redirect(dev->egress_ifindex, 0);
}

char _license[] SEC("license") = "GPL";
