// SPDX-License-Identifier: GPL-2.0
/* BPF programs of the benchmark: xdp_generate writes a complete Ethernet/IPv4/UDP header into every
 * frame and returns XDP_TX (run through BPF_PROG_RUN with live frames); xdp_sink counts and drops;
 * tc_redirect is path (e), a tc clsact ingress program that does what pedit+csum+mirred would
 * (this kernel lacks those actions): MAC rewrite, TTL decrement, redirect to the gateway.
 * Never attached to an interface that carries anything but bench traffic. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* What the generator writes; filled by the loader before the first run (map "gen_config"). */
struct gen_config {
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u32 src_ip_first;     /* host order; sources are src_ip_first + k, k < src_ip_count */
	__u32 src_ip_count;
	__u32 dst_ip;           /* host order */
	__u16 dst_port;
	__u16 src_port_first;   /* source ports are src_port_first + k, k < src_port_count */
	__u32 src_port_count;
	__u32 flows;            /* established mode: cycle over this many 5-tuples */
	__u32 new_flows;        /* 1: every frame gets the next 5-tuple of the whole (ip, port) space */
	__u32 frame_len;        /* bytes written on the wire without FCS (>= 42) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_config SEC(".maps");

/* Index 0: frames generated (xdp_generate) or frames dropped (xdp_sink), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} gen_counters SEC(".maps");

#define COUNTER_GENERATED 0
#define COUNTER_SUNK 1
#define HEADERS_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

static __always_inline __u16 ipv4_header_checksum(const struct iphdr *ip)
{
	const __u16 *word = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += word[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

SEC("xdp")
int xdp_generate(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0, counter_key = COUNTER_GENERATED;
	struct gen_config *cfg = bpf_map_lookup_elem(&gen_config, &zero);
	__u64 *generated = bpf_map_lookup_elem(&gen_counters, &counter_key);
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = data + sizeof(*eth) + sizeof(*ip);

	if (!cfg || !generated || data + HEADERS_LEN > data_end)
		return XDP_ABORTED;
	__u64 seq = (*generated)++;
	__u32 ports = cfg->src_port_count ? cfg->src_port_count : 1;
	__u32 ips = cfg->src_ip_count ? cfg->src_ip_count : 1;
	__u64 flow = cfg->new_flows ? seq : seq % (cfg->flows ? cfg->flows : 1);
	__u32 port_index = flow % ports;
	__u32 ip_index = (flow / ports) % ips;
	__u16 l3_len = cfg->frame_len - sizeof(*eth);

	__builtin_memcpy(eth->h_dest, cfg->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(l3_len);
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000); /* DF */
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = bpf_htonl(cfg->src_ip_first + ip_index);
	ip->daddr = bpf_htonl(cfg->dst_ip);
	ip->check = ipv4_header_checksum(ip);
	udp->source = bpf_htons(cfg->src_port_first + port_index);
	udp->dest = bpf_htons(cfg->dst_port);
	udp->len = bpf_htons(l3_len - sizeof(*ip));
	udp->check = 0; /* optional for UDP over IPv4 */
	return XDP_TX;
}

SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	__u32 counter_key = COUNTER_SUNK;
	__u64 *sunk = bpf_map_lookup_elem(&gen_counters, &counter_key);

	if (sunk)
		(*sunk)++;
	return XDP_DROP;
}

/* What tc_redirect does; filled by the loader (map "redirect_config"). */
struct redirect_config {
	__u8 dst_mac[6];        /* the next hop's MAC behind the output interface */
	__u8 src_mac[6];        /* the output interface's MAC */
	__u32 dst_prefix;       /* host order; frames to dst_prefix/dst_prefix_len are redirected */
	__u32 dst_prefix_len;
	__u32 out_ifindex;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct redirect_config);
} redirect_config SEC(".maps");

SEC("tc")
int tc_redirect(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u32 zero = 0;
	struct redirect_config *cfg = bpf_map_lookup_elem(&redirect_config, &zero);

	if (!cfg || (void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	__u32 mask = cfg->dst_prefix_len ? ~0u << (32 - cfg->dst_prefix_len) : 0;
	if ((bpf_ntohl(ip->daddr) & mask) != cfg->dst_prefix || ip->ttl <= 1)
		return TC_ACT_OK;
	__builtin_memcpy(eth->h_dest, cfg->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->src_mac, ETH_ALEN);
	/* TTL decrement with the incremental checksum update of RFC 1624 (as ip_decrease_ttl does) */
	__u32 check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
	return bpf_redirect(cfg->out_ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
