/* xskproxy_abi.h — the single source of truth for every binary layout and constant shared by
 * the XDP program (C, BPF target), the pyxdp bindings and the numba dataplane (numpy dtypes).
 * Python never copies a value from here by hand: it reads them from pyxdp (ffi/lib), and
 * tests/native/test_abi_layout.py checks every numpy dtype against ffi.sizeof/ffi.offsetof.
 *
 * Format rules (this file is also fed to cffi's cdef, which understands only a subset of C):
 * fixed-width __u8/__u16/__u32/__u64 types, plain `#define NAME <integer>` constants, enums,
 * no macros with arguments, no bit-fields. Lines starting with '#' other than integer
 * #defines are stripped before cdef. Addresses and ports are in network byte order unless
 * a field's comment says otherwise.
 */
#ifndef XSKPROXY_ABI_H
#define XSKPROXY_ABI_H

#ifndef XSKP_CDEF
#include <linux/types.h>
#endif

/* ---------------------------------------------------------------------------------------
 * UMEM and sockets (pyxdp, dataplane/xsk.py, dataplane/forwarder.py)
 * ------------------------------------------------------------------------------------- */
#define XSKP_FRAME_SIZE 4096        /* bytes per UMEM chunk (a power of two: aligned mode) */
#define XSKP_FRAME_HEADROOM 256     /* bytes reserved before each received frame (IPIP encap) */
#define XSKP_RING_SIZE 2048         /* default size of rx, tx, fill and completion rings */
#define XSKP_UMEM_FRAMES 8192       /* default frames per worker UMEM: 4 rings' worth, 32 MiB */
#define XSKP_BATCH_MAX 64           /* frames moved per ring operation */
#define XSKP_KICK_MAX_RETRIES 256   /* sendto calls per tx kick while the kernel says EAGAIN */

/* How a socket binds: zero-copy when the driver can, else copy (veth: copy only). */
enum xskp_bind_mode {
	XSKP_BIND_AUTO = 0,         /* zero-copy, falling back to copy on EOPNOTSUPP */
	XSKP_BIND_COPY = 1,
	XSKP_BIND_ZEROCOPY = 2,
};

/* How the steering program attaches to an interface. */
enum xskp_attach_mode {
	XSKP_ATTACH_AUTO = 0,       /* native (driver) mode, falling back to skb mode */
	XSKP_ATTACH_NATIVE = 1,
	XSKP_ATTACH_SKB = 2,
	XSKP_ATTACH_UPCALL = 3,     /* xskp_upcall (native) on an upcall pair's socket end */
};

/* tc programs of the steering object (xskp_tc_attach). */
enum xskp_tc_program {
	XSKP_TC_FAST = 0,           /* xskp_fast at a served interface's ingress */
	XSKP_TC_UPCALL_TX = 1,      /* xskp_upcall_tx at an upcall pair's kernel end */
};

/* A socket's kernel statistics (getsockopt XDP_STATISTICS, struct xdp_statistics). */
struct xskp_socket_stats {
	__u64 rx_dropped;               /* dropped for reasons other than invalid descriptors */
	__u64 rx_invalid_descs;         /* dropped: invalid descriptor */
	__u64 tx_invalid_descs;         /* not sent: invalid descriptor */
	__u64 rx_ring_full;             /* dropped: rx ring full */
	__u64 rx_fill_ring_empty_descs; /* times the fill ring was empty when a frame arrived */
	__u64 tx_ring_empty_descs;      /* times the tx ring was empty on a kick */
};

/* What a worker loop counts, per interface (index: enum xskp_iface): the slow paths and totals
 * of dataplane/forwarder.py. A counters array has shape (XSKP_IFACE_MAX, XSKP_WC_MAX), uint64. */
enum xskp_worker_counter {
	XSKP_WC_RX_FRAMES = 0,      /* frames received on this interface */
	XSKP_WC_TX_FRAMES,          /* frames queued for tx on this interface */
	XSKP_WC_TX_COMPLETED,       /* frames the kernel completed on this interface */
	XSKP_WC_DROPPED,            /* frames received here with a drop verdict */
	XSKP_WC_TX_RING_FULL,       /* frames recycled because this tx ring was full */
	XSKP_WC_TX_KICKS,           /* sendto calls made to kick tx */
	XSKP_WC_TX_KICK_ERRORS,     /* kicks that ended in an error other than EAGAIN */
	XSKP_WC_FILL_SHORT,         /* refills that found fewer free frames than fill slots */
	XSKP_WC_RX_WAKEUPS,         /* fill-ring wakeups (need_wakeup was set) */
	XSKP_WC_EMPTY_POLLS,        /* rx batches that returned nothing */
	XSKP_WC_IDLE_SLEEPS,        /* poll() waits after IDLE_SPIN_NS without a frame */
	XSKP_WC_NO_ROOM,            /* passes that ended with no room for another frame (no fill
				     * entry with the kernel or no free rx slot): the worker is
				     * behind; upcall mode sheds new flows until it has room */
	XSKP_WC_MAX,
};

/* ---------------------------------------------------------------------------------------
 * Steering (XDP program maps, native/xskproxy_steer.bpf.c). Seam 1 of DESIGN.md: redirect
 * to the XSKMAP only what xskproxy owns; everything else is XDP_PASS.
 * ------------------------------------------------------------------------------------- */
/* Interface roles, as bits: a map value says on which roles a match is steered. A value of 0
 * in steer_v4_prefixes excludes a more specific prefix (e.g. the node's own /32). */
enum steer_role {
	STEER_ROLE_GATEWAY = 1,     /* the interface to the node's Pods (antrea-gw0) */
	STEER_ROLE_TRANSPORT = 2,   /* the node's uplink (eth0) */
};

#define STEER_MAX_IFACES 64
#define STEER_MAX_FRONTENDS 262144
#define STEER_MAX_BACKENDS 262144
#define STEER_MAX_PREFIXES 16384
#define STEER_MAX_NODE_ADDRS 64
#define STEER_MAX_QUEUES 64
#define STEER_XSKMAP_SIZE 4096      /* STEER_MAX_IFACES * STEER_MAX_QUEUES */

/* The steering program's maps, as pyxdp's xskp_steer_map_* functions name them. */
enum steer_map {
	STEER_MAP_IFACES = 0,       /* hash: __u32 ifindex -> struct steer_iface */
	STEER_MAP_V4_FRONTENDS,     /* hash: struct steer_v4_l4_key (destination) -> __u32 roles */
	STEER_MAP_V4_BACKENDS,      /* hash: struct steer_v4_l4_key (source) -> __u32 roles */
	STEER_MAP_V4_PREFIXES,      /* LPM trie: struct steer_v4_lpm_key (destination) -> __u32 roles */
	STEER_MAP_V4_NODE_ADDRS,    /* hash: __u32 address -> struct steer_v4_snat_range */
	STEER_MAP_XSKS,             /* XSKMAP: steer_iface.xsk_base + rx queue -> AF_XDP socket */
	STEER_MAP_COUNTERS,         /* per-CPU array: enum steer_counter -> __u64 packets */
	STEER_MAP_FLOWS_V4,         /* mmapable array: struct xskp_flow_v4, the fast path's flows */
	STEER_MAP_FAST_CONFIG,      /* mmapable array[1]: struct xskp_fast_config */
	STEER_MAP_MAX,
};

/* Value of steer_ifaces: what an interface is to xskproxy and where its sockets sit. */
struct steer_iface {
	__u32 roles;                /* enum steer_role bits; 0: attached but steers nothing */
	__u32 xsk_base;             /* XSKMAP index of this interface's queue 0 */
	__u64 hold_until_ns;        /* CLOCK_MONOTONIC; until then a redirect of traffic xskproxy
				     * translates (not STEER_REDIRECT_PREFIX) that finds no socket
				     * is dropped instead of passed: a restarting agent's handover */
	__u32 upcall_ifindex;       /* a served interface in upcall mode: the kernel end of its
				     * upcall veth pair, where xskp_fast sends what userspace takes
				     * (0: the XDP program steers on this interface itself) */
	__u32 egress_ifindex;       /* an upcall pair's kernel end: the served interface where
				     * xskp_upcall_tx sends the agent's transmissions (0: none) */
	__u32 queues;               /* worker queues serving this interface: XDP mode, sockets on
				     * rx queues 0..queues-1 (a frame on another queue is
				     * STEER_PASS_UNSERVED_QUEUE); upcall mode, its pair's queues,
				     * one worker each, over which xskp_fast partitions the upcalls
				     * (xskp_upcall_queue). 0 counts as 1 */
	__u32 pad;
};

/* Key of steer_v4_frontends (destination) and steer_v4_backends (source): an (address, port,
 * protocol) triple. Frontends: ClusterIPs, LoadBalancer IPs, externalIPs, NodePorts on each
 * node address, and (port 0, IPPROTO_IPIP) for DSR tunnels to a node address. Backends: the
 * Service endpoints, so that their replies are steered back for reverse translation.
 * Protocols without ports (ICMP, IPIP) use port 0. */
struct steer_v4_l4_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;                   /* always 0: hash keys compare every byte */
};

/* Key of steer_v4_prefixes, an LPM trie on the destination address (Pod CIDRs, noEncap). */
struct steer_v4_lpm_key {
	__u32 prefixlen;            /* host order, as the LPM trie wants it */
	__u32 addr;
};

/* Value of steer_v4_node_addrs: replies to translated flows SNATed to this address arrive
 * with a destination port in [snat_port_min, snat_port_max] (host order). */
struct steer_v4_snat_range {
	__u16 snat_port_min;
	__u16 snat_port_max;
	__u32 roles;                /* enum steer_role bits */
};

/* Decisions of the steering program; the indices of its per-CPU counter array. A redirect
 * counts its decision, and also STEER_REDIRECT_FAILED when no socket took the frame. */
enum steer_counter {
	STEER_PASS_NO_IFACE = 0,    /* interface not configured (no role) */
	STEER_PASS_NOT_IPV4,        /* ARP, IPv6 (until steered), other ethertypes */
	STEER_PASS_MALFORMED,       /* truncated headers: the kernel decides */
	STEER_PASS_FRAGMENT,        /* IPv4 fragments: ports unknown, the kernel reassembles */
	STEER_PASS_NO_MATCH,        /* not owned by xskproxy */
	STEER_PASS_NODE_ADDRESS,    /* to a node address, outside this node's SNAT range */
	STEER_REDIRECT_FRONTEND,    /* destination is a Service frontend */
	STEER_REDIRECT_BACKEND_REPLY, /* source is a Service backend */
	STEER_REDIRECT_SNAT_REPLY,  /* destination is a node address + SNAT port */
	STEER_REDIRECT_PREFIX,      /* destination in a steered prefix (Pod CIDR) */
	STEER_REDIRECT_FAILED,      /* redirect fell back to XDP_PASS (no socket bound) */
	STEER_DROP_HELD,            /* redirect found no socket during a handover hold: dropped */
	STEER_PASS_FAST_FLOW,       /* an offloaded flow: passed on to the tc fast path */
	STEER_PASS_FAST_BYPASS,     /* Pod-CIDR traffic passed on to the tc fast path (bypass) */
	STEER_PASS_TOO_BIG,         /* larger than a UMEM chunk holds, no agent (or Pod-CIDR traffic):
				     * the kernel's */
	STEER_DROP_TOO_BIG,         /* larger than a UMEM chunk holds, of a flow the running agent
				     * translates but has not offloaded (yet): dropped, as the kernel
				     * would deliver it untranslated (a reset); TCP retransmits it
				     * smaller */
	STEER_PASS_VLAN,            /* an 802.1Q/802.1ad tag in the frame: a VLAN device's, or nobody's
				     * (the kernel delivers or drops it); xskproxy serves untagged
				     * frames only. A tag the NIC stripped into metadata is not seen
				     * here (xdp_md has no VLAN field): see the program's comment */
	STEER_PASS_KERNEL_NAT,      /* to a node address + SNAT port, but of a flow in the kernel's
				     * conntrack (its masquerade, e.g. --random-fully): the kernel's */
	STEER_PASS_UNSERVED_QUEUE,  /* XDP mode: ours, but on an rx queue no worker serves (the
				     * interface has more channels than `queues`): the kernel's */
	/* the tc fast path (xskp_fast), per packet it sees */
	FAST_FLOW,                  /* rewritten by an offloaded flow's entry and redirected */
	FAST_BYPASS,                /* routed untracked to a Pod CIDR (kernel FIB) and redirected */
	FAST_PASS_NOT_LIVE,         /* no live agent and no handover hold: the kernel's */
	FAST_PASS_NO_MATCH,         /* no offloaded flow, no bypass prefix: the kernel's */
	FAST_PASS_NO_NEIGHBOUR,     /* bypass next hop unresolved (or other FIB miss): the kernel's */
	FAST_PASS_TTL,              /* TTL would expire: the kernel answers ICMP time exceeded */
	FAST_DROP_REWRITE,          /* a rewrite helper failed (counted, dropped) */
	/* upcall mode (no XDP on the served interface: tc steers through a veth pair) */
	UPCALL_DROP_NO_SOCKET,      /* an upcall found no socket on its queue (the agent died within
				     * the liveness time): dropped, the sender retransmits */
	UPCALL_DROP_TX_STRAY,       /* a frame from an upcall pair's socket end that is not the
				     * agent's (not IPv4, or no served interface set): dropped */
	UPCALL_DROP_SHED,           /* a new flow's first packet (TCP SYN, UDP) while its socket
				     * has no credit (its worker's rings are full until it runs
				     * again): dropped at tc, before the upcall's veth hop and copy,
				     * so that the flood does not take the worker's CPU; the sender
				     * retries */
	STEER_COUNTER_MAX,
};

/* ---------------------------------------------------------------------------------------
 * The kernel fast path (tc program xskp_fast in native/xskproxy_steer.bpf.c; the userspace
 * side: dataplane/fastpath.py). The userspace engine decides every flow; for established
 * ones it writes the decision into xskp_flows_v4, an mmapable BPF array it shares with the
 * BPF programs, and the tc program executes it on skbs (GSO super-frames and jumbo frames
 * included). Unlike the steering maps, addresses and ports here are HOST order numbers, as in
 * the conntrack table the entries mirror; the BPF code converts.
 * ------------------------------------------------------------------------------------- */
#define XSKP_FLOW_MAX_PROBE 8           /* flow table probe window (slots from the key's hash) */
#define XSKP_FAST_LIVENESS_NS 500000000 /* a worker's heartbeat keeps the fast path on this long */
#define XSKP_TC_PRIORITY 1              /* tc filter priority and handle of xskp_fast */
#define XSKP_TC_HANDLE 22611            /* 0x5853, "XS" */
/* Upcall mode: the MTU of both ends of an upcall veth pair. Native XDP on a veth takes frames up
 * to a page less the XDP headroom and skb_shared_info (~3506 bytes of MTU with 4 KiB pages);
 * xskp_fast never upcalls a frame (or GSO segment) larger than this plus the Ethernet header. */
#define XSKP_UPCALL_MTU 3490

/* Flow entry flags. */
#define XSKP_FLOW_IN_USE 1
#define XSKP_FLOW_TOMBSTONE 2           /* deleted slot, keeps probe chains intact */
#define XSKP_FLOW_ROUTE 4               /* routing only (the netfilter bypass of a frame the
					 * steering program sent to userspace, e.g. a Service
					 * backend's reply that another node translates): no
					 * conntrack entry; the rewrite is the identity */
#define XSKP_FLOW_ENCAP 8               /* DSR ingress: after TTL - 1, IPIP-encapsulate from
					 * xskp_fast_config.encap_src to encap_dst */
#define XSKP_FLOW_DECAP 16              /* DSR backend node: the key is the inner 5-tuple of an
					 * IPIP packet to this node; decapsulate, then rewrite */

/* One direction of an offloaded flow: key as the packet arrives, the rewrite, the egress.
 * Open addressing (linear probing within XSKP_FLOW_MAX_PROBE slots from hash_flow & mask).
 * Written by one userspace worker (owner); the BPF program writes only last_seen_ns,
 * tcp_flags_seen, packets and bytes. xskp_flow_v6 will have the same shape with 16-byte
 * addresses. */
struct xskp_flow_v4 {
	__u32 src_addr;                 /* key */
	__u32 dst_addr;
	__u16 src_port;
	__u16 dst_port;
	__u8 proto;
	__u8 flags;                     /* XSKP_FLOW_*; 0: empty slot (written last on insert) */
	__u8 tcp_flags_seen;            /* OR of the TCP flags the fast path forwarded */
	__u8 owner;                     /* the worker (queue) whose conntrack holds the flow */
	__u32 new_src_addr;             /* rewrite */
	__u32 new_dst_addr;
	__u16 new_src_port;
	__u16 new_dst_port;
	__u32 out_ifindex;              /* redirect target (egress) */
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u32 ct_index;                 /* the owner's conntrack entry this executes (not ROUTE) */
	__u32 fib_generation;           /* MACs/out_ifindex resolved in this FIB generation */
	__u32 encap_dst;                /* XSKP_FLOW_ENCAP: outer destination (the backend's node) */
	__u64 last_seen_ns;             /* CLOCK_MONOTONIC of the last packet the fast path took */
	__u64 packets;                  /* packets / bytes the fast path forwarded (approximate: */
	__u64 bytes;                    /* concurrent CPUs may lose an increment) */
};

/* Upcall admission, per socket (its XSKMAP slot): tc counts the frames it sends up to the
 * socket (`sent`, atomically); the socket's worker, after each pass, grants `limit` = sent +
 * the frames its rings can still take (fill entries the kernel holds, at most the free rx
 * slots). A new flow's first packet goes up only while sent < limit, else UPCALL_DROP_SHED;
 * frames lost on the way only cost credit until the next grant. limit 0: never granted (no
 * worker has run yet), no admission. One cache line each: workers share none. */
struct xskp_upcall_credit {
	__u64 sent;
	__u64 limit;
	__u64 pad[6];
};

/* The fast path's switches (element 0 of the mmapable array xskp_fast_cfg). */
struct xskp_fast_config {
	__u64 alive_until_ns;           /* CLOCK_MONOTONIC; the workers push it forward by
					 * XSKP_FAST_LIVENESS_NS: a dead agent's fast path stops
					 * (unless an interface's handover hold is running) */
	__u32 flow_mask;                /* flow table capacity - 1 (a power of two) */
	__u32 bypass;                   /* 1: Pod-CIDR traffic is routed by the fast path */
	__u32 encap_src;                /* DSR tunnels' outer source: the node address (host order) */
	__u32 pad;
	__u64 pad_to_line[5];           /* the credits start on their own cache line */
	struct xskp_upcall_credit credit[STEER_XSKMAP_SIZE];  /* by XSKMAP slot (a socket) */
};

/* ---------------------------------------------------------------------------------------
 * Dataplane verdicts (pipeline output, one per frame)
 * ------------------------------------------------------------------------------------- */
enum xskp_verdict {
	XSKP_VERDICT_CONTINUE = -1, /* a stage has not decided yet (never leaves the pipeline) */
	XSKP_VERDICT_DROP = 0,      /* recycle the frame; the reason is counted separately */
	XSKP_VERDICT_TX_TRANSPORT = 1,
	XSKP_VERDICT_TX_GATEWAY = 2,
};

/* Interfaces a worker serves, indices of per-interface arrays. */
enum xskp_iface {
	XSKP_IFACE_TRANSPORT = 0,
	XSKP_IFACE_GATEWAY = 1,
	XSKP_IFACE_MAX = 2,
};

/* ---------------------------------------------------------------------------------------
 * Pipeline tables (dataplane/tables.py, dataplane/pipeline.py): drop reasons, counters, table
 * entries, conntrack timeouts. Owned by the pipeline.
 * Unlike the steering maps, every address and port in these tables is in HOST byte order (the
 * numeric value: 10.0.0.1 is 0x0a000001, port 80 is 80): the numba code loads frame fields
 * with explicit big-endian reads and compares numbers. MAC addresses are bytes in wire order.
 * ------------------------------------------------------------------------------------- */
/* Why a frame was dropped: the first indices of the pipeline's counter array (enum xskp_counter
 * continues it). Every frame is counted exactly once under a drop reason or under
 * XSKP_CNT_TX_TRANSPORT / XSKP_CNT_TX_GATEWAY; the other XSKP_CNT_* count events. */
enum xskp_drop_reason {
	XSKP_DROP_NONE = 0,             /* not dropped (never counted) */
	XSKP_DROP_TRUNCATED,            /* a header is cut short */
	XSKP_DROP_BAD_IP,               /* IPv4 version/IHL/total length inconsistent */
	XSKP_DROP_FRAGMENT,             /* an IPv4 fragment that is not bypass-routed: no ports to match */
	XSKP_DROP_TTL_EXCEEDED,         /* TTL would reach 0 (the kernel would send ICMP) */
	XSKP_DROP_NOT_OURS,             /* steered but owned by nobody here (ARP, stale steering, no flow) */
	XSKP_DROP_NO_BACKEND,           /* Service has no usable endpoint */
	XSKP_DROP_SOURCE_RANGE,         /* client outside loadBalancerSourceRanges */
	XSKP_DROP_NO_ROUTE,             /* no FIB entry for the destination */
	XSKP_DROP_NO_NEIGHBOUR,         /* next hop's MAC not resolved */
	XSKP_DROP_CT_FULL,              /* conntrack probe window full and nothing evictable */
	XSKP_DROP_SNAT_EXHAUSTED,       /* no free SNAT port */
	XSKP_DROP_NO_HEADROOM,          /* DSR encapsulation needs headroom the frame lacks */
	XSKP_DROP_UNSUPPORTED,          /* a protocol or option the pipeline does not handle (IPv6 for now) */
	XSKP_DROP_TCP_INVALID,          /* TCP segment that fits no tracked flow and opens none (RST) */
	XSKP_DROP_BAD_DESC,             /* descriptor outside the UMEM or longer than its frame */
	XSKP_DROP_VLAN,                 /* an 802.1Q/802.1ad-tagged frame: no VLAN is configured (the
					 * pipeline serves untagged frames only; the kernel drops a tag
					 * no VLAN device claims) */
	XSKP_DROP_BAD_CSUM,             /* IPv4 header checksum does not verify (checked before any
					 * state is touched) */
	XSKP_DROP_SCTP_BAD_CHUNK,       /* SCTP chunks malformed: none, a length below 4 or past the
					 * packet's end, INIT/INIT_ACK/SHUTDOWN_COMPLETE bundled */
	XSKP_DROP_SCTP_BAD_CRC,         /* SCTP CRC32c does not verify (checked before any state is
					 * touched; a field of 0 is a partial checksum, completed) */
	XSKP_DROP_SCTP_INVALID,         /* SCTP packet that fits no tracked association and opens
					 * none (first chunk not INIT, or an INIT with a nonzero
					 * verification tag), as nf_conntrack marks it INVALID */
	XSKP_DROP_REASON_MAX,
};

/* The rest of the pipeline's counter array (uint64, XSKP_COUNTER_MAX entries). */
enum xskp_counter {
	XSKP_CNT_TX_TRANSPORT = XSKP_DROP_REASON_MAX, /* frames with verdict TX_TRANSPORT */
	XSKP_CNT_TX_GATEWAY,            /* frames with verdict TX_GATEWAY */
	XSKP_CNT_CT_HIT,                /* frames that matched a live conntrack entry */
	XSKP_CNT_CT_CREATED,            /* flows created (one per flow, two entries unless DSR ingress) */
	XSKP_CNT_CT_EXPIRED,            /* flows found expired and removed on the way */
	XSKP_CNT_CT_EVICTED,            /* flows evicted (oldest non-established in the probe window) */
	XSKP_CNT_CT_STALE,              /* flows removed because their backend is gone or changed */
	XSKP_CNT_CT_REUSED,             /* closing flows removed by a new SYN (SCTP: INIT) on their tuple
					 * (re-balanced) or whose SNAT port a new SYN or INIT to their
					 * backend took over */
	XSKP_CNT_DNAT,                  /* new flows DNATed to a backend */
	XSKP_CNT_SNAT,                  /* new flows SNATed to the node address (external, remote backend) */
	XSKP_CNT_HAIRPIN,               /* new flows SNATed because client and backend are the same Pod */
	XSKP_CNT_DSR_ENCAP,             /* frames IPIP-encapsulated to a backend's node */
	XSKP_CNT_DSR_DECAP,             /* frames decapsulated from IPIP addressed to this node */
	XSKP_CNT_BYPASS,                /* frames forwarded by route only (netfilter bypass, untracked) */
	XSKP_CNT_ICMP_ERROR_TRANSLATED, /* ICMP errors whose quoted flow was translated back */
	XSKP_CNT_CSUM_COMPLETED,        /* partial (offload) L4 checksums completed in software (an
					 * SCTP CRC32c field of 0 included) */
	XSKP_CNT_AFFINITY_HIT,          /* new flows that reused a ClientIP affinity backend */
	XSKP_CNT_FIB_REFRESH,           /* conntrack entries whose cached MACs were re-resolved */
	XSKP_CNT_FLOW_OFFLOADED,        /* flows handed to the kernel fast path (both directions) */
	XSKP_CNT_FLOW_OFFLOAD_FULL,     /* flows kept in userspace: fast-path probe window full */
	XSKP_CNT_FLOW_RECALLED,         /* flows taken back from the fast path (closing, FIB change) */
	XSKP_CNT_ICMP_TIME_EXCEEDED,    /* frames with TTL <= 1 answered in place with an ICMP time
					 * exceeded to their source (sent under TX_*, not dropped) */
	XSKP_CNT_ICMP_UNREACHABLE,      /* new flows to a Service port without any endpoint answered
					 * in place with ICMP port unreachable from the frontend, as
					 * kube-proxy's REJECT (clients fail at once, no time-out) */
	XSKP_COUNTER_MAX,
};

/* Slots of the counter array after the counters: values, not counts. XSKP_SLOT_NEIGH_MISS
 * holds the last next hop the pipeline found no neighbour entry for (iface << 32 | IPv4
 * address, host order; 0: none); the agent has the kernel resolve it and clears the slot.
 * XSKP_SLOT_ICMP_TAT is the ICMP error rate limit's state (GCRA theoretical arrival time, ns
 * of the caller's clock): per worker, never summed. */
enum xskp_counter_slot {
	XSKP_SLOT_NEIGH_MISS = XSKP_COUNTER_MAX,
	XSKP_SLOT_ICMP_TAT,
	XSKP_COUNTER_SLOTS,             /* length of the counter array */
};

/* ICMP errors the pipeline sends itself (time exceeded), per worker: as the kernel's
 * net.ipv4.icmp_msgs_per_sec (1000) and icmp_msgs_burst (50) defaults. */
#define XSKP_ICMP_ERROR_INTERVAL_NS 1000000
#define XSKP_ICMP_ERROR_BURST 50

/* Service flags (struct xskp_service.flags). Read them through predicates in dataplane/tables.py. */
#define XSKP_SVC_DSR 1                  /* load-balancer mode dsr (else nat); LB and external IPs only */
#define XSKP_SVC_AFFINITY_CLIENTIP 2    /* sessionAffinity ClientIP */
#define XSKP_SVC_ETP_LOCAL 4            /* externalTrafficPolicy Local: external frontends use the local ring */
#define XSKP_SVC_ITP_LOCAL 8            /* internalTrafficPolicy Local: ClusterIP uses the local ring */
#define XSKP_SVC_SOURCE_RANGES 16       /* loadBalancerSourceRanges apply to LB-IP frontends */

/* Frontend kinds (struct xskp_frontend.kind). NodePort, LoadBalancer and external IP are
 * "external" frontends (externalTrafficPolicy applies to them). */
enum xskp_frontend_kind {
	XSKP_FE_EMPTY = 0,              /* free slot of the open-addressing table */
	XSKP_FE_CLUSTER_IP = 1,
	XSKP_FE_NODE_PORT = 2,          /* a node address + nodePort */
	XSKP_FE_LOAD_BALANCER = 3,      /* status.loadBalancer.ingress IP */
	XSKP_FE_EXTERNAL_IP = 4,
};

/* Backend flags (struct xskp_backend.flags). */
#define XSKP_BE_ALIVE 1                 /* present in the current generation (ids are stable) */
#define XSKP_BE_LOCAL 2                 /* the endpoint runs on this node */
#define XSKP_BE_TERMINATING 4           /* draining: keeps its flows; new ones only when no ready one exists */

/* Route flags (struct xskp_route.flags). */
#define XSKP_ROUTE_BYPASS 1             /* Service-less frames to this prefix are forwarded untracked (Pod CIDRs) */

/* One (address, port, protocol) frontend in an open-addressing hash table (linear probing,
 * power-of-two capacity, at most half full; insert/lookup: dataplane/tables.py). service_id
 * indexes the services array. */
struct xskp_frontend {
	__u32 addr;
	__u16 port;
	__u8 proto;                     /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_SCTP */
	__u8 kind;                      /* enum xskp_frontend_kind; XSKP_FE_EMPTY marks a free slot */
	__u32 service_id;
	__u32 pad;
};

/* One Service port (a Service with two ports is two entries). Rings are slices of the maglev
 * array of backend ids (0: none); a slice of size 0 means no usable endpoint. Translate has
 * already resolved ready/terminating into the rings. */
struct xskp_service {
	__u32 flags;                    /* XSKP_SVC_* */
	__u32 affinity_timeout_s;       /* ClientIP affinity, 1..86400 s */
	__u32 ring_offset;              /* cluster-wide ring (ready endpoints, else terminating) */
	__u32 ring_size;
	__u32 local_ring_offset;        /* ring over this node's endpoints (traffic policy Local) */
	__u32 local_ring_size;
	__u32 source_ranges_offset;     /* slice of the source_ranges array */
	__u32 source_ranges_count;
};

/* A backend (endpoint address + target port), index = backend id, id 0 is never used. Ids are
 * stable across generations: a conntrack entry holds its id and stops matching when the slot
 * is no longer ALIVE or its address/port/node changed. */
struct xskp_backend {
	__u32 addr;
	__u16 port;
	__u16 flags;                    /* XSKP_BE_* */
	__u32 node_addr;                /* transport address of the backend's node (DSR tunnel dst) */
	__u32 pad;
};

/* A source range (loadBalancerSourceRanges): (addr & mask) == net. */
struct xskp_source_range {
	__u32 net;
	__u32 mask;
};

/* A route: destination prefix -> out interface and next hop (0: on-link, the destination
 * itself). The first xskp_node.route_count entries are used, sorted by prefix length, longest
 * first (the first match wins). Include a default route for external clients. */
struct xskp_route {
	__u32 prefix;
	__u32 mask;
	__u32 next_hop;
	__u8 iface;                     /* enum xskp_iface */
	__u8 flags;                     /* XSKP_ROUTE_* */
	__u8 pad[2];
};

/* A resolved neighbour in an open-addressing hash table keyed by (addr, iface) (linear probing,
 * power-of-two capacity, at most half full; insert/lookup: dataplane/tables.py). */
struct xskp_neighbour {
	__u32 addr;
	__u8 iface;                     /* enum xskp_iface */
	__u8 in_use;
	__u8 mac[6];
};

/* Per-node constants of one generation (a one-element array). */
struct xskp_node {
	__u32 node_addr;                /* SNAT source, hairpin SNAT source and DSR tunnel endpoint */
	__u16 snat_port_min;            /* SNAT port range, inclusive */
	__u16 snat_port_max;
	__u8 iface_mac[2][6];           /* own MAC per enum xskp_iface */
	__u16 dsr_mss;                  /* a DSR backend's SYN+ACK announces at most this MSS (the
					 * transport MTU less IPIP, IPv4 and TCP headers), so that
					 * its clients' segments still fit once tunnelled; 0: none */
	__u32 generation;               /* increases with every publish */
	__u32 fib_generation;           /* increases when routes or neighbours change */
	__u32 route_count;              /* used entries of the routes array */
};

/* States of a conntrack entry: TCP's, UDP's (NEW until a reply is seen, then ESTABLISHED) and
 * SCTP's (an association's chunks as nf_conntrack_proto_sctp.c follows them, its three
 * SHUTDOWN states folded into one). */
enum xskp_ct_state {
	XSKP_CT_NEW = 0,                /* UDP seen one way */
	XSKP_CT_SYN_SENT,               /* client SYN seen */
	XSKP_CT_SYN_RECV,               /* server SYN+ACK seen */
	XSKP_CT_ESTABLISHED,            /* TCP handshake done, or a flow picked up mid-stream; SCTP
					 * COOKIE_ACK (or a DATA/SACK/HEARTBEAT answer) seen */
	XSKP_CT_FIN_WAIT,               /* one side sent FIN */
	XSKP_CT_CLOSING,                /* both sides sent FIN, or RST seen */
	XSKP_CT_SCTP_COOKIE_WAIT,       /* SCTP INIT seen (and its INIT_ACK) */
	XSKP_CT_SCTP_COOKIE_ECHOED,     /* SCTP COOKIE_ECHO seen */
	XSKP_CT_SCTP_SHUTDOWN,          /* SCTP SHUTDOWN or SHUTDOWN_ACK seen: closing */
	XSKP_CT_SCTP_CLOSED,            /* SCTP ABORT or SHUTDOWN_COMPLETE seen: closed, its tuple free
					 * for a new INIT at once */
};

/* Idle timeouts in seconds per state (an entry expires last_seen + timeout after its last
 * frame). Closing states as nf_conntrack's (nf_conntrack_proto_tcp.c tcp_timeouts): a closed
 * flow's tuple is free for a new connection at once (a SYN on the same tuple, or a SNAT port
 * taken over), so these timeouts hold no port; they keep late segments translated. */
#define XSKP_CT_TIMEOUT_TCP_SYN_S 30            /* SYN_SENT, SYN_RECV */
#define XSKP_CT_TIMEOUT_TCP_ESTABLISHED_S 21600 /* 6 h, above the 2 h keepalive default */
#define XSKP_CT_TIMEOUT_TCP_FIN_WAIT_S 120      /* one side sent FIN (nf_conntrack FIN_WAIT) */
#define XSKP_CT_TIMEOUT_TCP_TIME_WAIT_S 120     /* CLOSING after FINs both ways (TIME_WAIT) */
#define XSKP_CT_TIMEOUT_TCP_CLOSE_S 10          /* CLOSING after an RST (nf_conntrack CLOSE) */
#define XSKP_CT_TIMEOUT_UDP_S 30                /* UDP seen one way */
#define XSKP_CT_TIMEOUT_UDP_ESTABLISHED_S 120   /* UDP with replies */
/* SCTP as nf_conntrack_proto_sctp.c sctp_timeouts: ESTABLISHED is HEARTBEAT's interval times
 * Path.Max.Retrans plus RTO.Max (30 * 5 + 60), the handshake and shutdown steps RTO.Initial. */
#define XSKP_CT_TIMEOUT_SCTP_HANDSHAKE_S 3      /* COOKIE_WAIT, COOKIE_ECHOED */
#define XSKP_CT_TIMEOUT_SCTP_ESTABLISHED_S 210
#define XSKP_CT_TIMEOUT_SCTP_SHUTDOWN_S 3
#define XSKP_CT_TIMEOUT_SCTP_CLOSED_S 10        /* late chunks of a closed association */
#define XSKP_CT_MAX_PROBE 32                    /* conntrack/affinity probe window (slots) */
#define XSKP_SNAT_MAX_TRIES 64                  /* SNAT ports looked at for a free one before
						 * a closed flow's port among them is taken */
#define XSKP_NO_PEER 0xffffffff                 /* xskp_ct_entry.peer of a one-way (DSR ingress) flow */

/* Conntrack entry flags. */
#define XSKP_CT_IN_USE 1
#define XSKP_CT_REPLY 2                 /* this entry matches the reply direction */
#define XSKP_CT_SNAT 4                  /* the flow is SNATed to the node address */
#define XSKP_CT_DSR_ENCAP 8             /* forward direction is IPIP-encapsulated to encap_dst */
#define XSKP_CT_DSR_LOCAL 16            /* flow arrived IPIP-encapsulated (DSR backend node) */
#define XSKP_CT_TOMBSTONE 32            /* deleted slot, keeps probe chains intact */
#define XSKP_CT_FIN_SEEN 64             /* this direction has sent a TCP FIN */
#define XSKP_CT_OFFLOADED 128           /* this direction is in the fast path's flow table */

/* One direction of a tracked flow in an open-addressing table (linear probing within
 * XSKP_CT_MAX_PROBE slots, power-of-two capacity), keyed by the 5-tuple as the frame arrives.
 * Two entries per flow (original and reply) point at each other through peer. */
struct xskp_ct_entry {
	__u32 src_addr;
	__u32 dst_addr;
	__u16 src_port;                 /* ports; 0 for protocols without ports */
	__u16 dst_port;
	__u8 proto;
	__u8 state;                     /* enum xskp_ct_state (kept in the original entry) */
	__u8 flags;                     /* XSKP_CT_*; 0: empty slot */
	__u8 out_iface;                 /* enum xskp_iface, valid while fib_generation matches */
	__u32 new_src_addr;             /* rewrite applied to matching frames */
	__u32 new_dst_addr;
	__u16 new_src_port;
	__u16 new_dst_port;
	__u32 encap_dst;                /* DSR ingress: outer destination (backend's node) */
	__u32 peer;                     /* index of the other direction's entry, or XSKP_NO_PEER */
	__u32 backend_id;
	__u32 service_id;
	__u32 fib_generation;           /* out_iface and MACs below are valid while this matches */
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u64 last_seen_ns;
	__u64 created_ns;
};

/* ClientIP session affinity entry (open-addressing table keyed by client address and service
 * id, linear probing within XSKP_CT_MAX_PROBE slots). */
struct xskp_affinity_entry {
	__u32 client_addr;
	__u32 service_id;
	__u32 backend_id;
	__u32 in_use;
	__u64 last_seen_ns;
};

/* Header of a memory-mapped per-flow table file (/run/xskproxy/...), so that a restarted agent
 * adopts the state of the previous one. */
#define XSKP_STATE_MAGIC 0x58534b50     /* "XSKP" */
#define XSKP_STATE_VERSION 1
struct xskp_state_header {
	__u32 magic;
	__u32 version;
	__u32 entry_size;               /* sizeof of the entry struct: a layout change refuses adoption */
	__u32 pad;
	__u64 capacity;                 /* entries, a power of two */
	__u64 clock_offset_ns;          /* unused by the pipeline: now is passed in */
};

#endif /* XSKPROXY_ABI_H */
