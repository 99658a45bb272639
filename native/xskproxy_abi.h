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
 * UMEM and sockets
 * ------------------------------------------------------------------------------------- */
#define XSKP_FRAME_SIZE 4096        /* bytes per UMEM chunk */
#define XSKP_FRAME_HEADROOM 256     /* bytes reserved before each received frame (IPIP encap) */
#define XSKP_RING_SIZE 2048         /* default size of rx, tx, fill and completion rings */
#define XSKP_BATCH_MAX 64           /* frames moved per ring operation */

/* ---------------------------------------------------------------------------------------
 * Steering (XDP program maps). Seam 1 of DESIGN.md: redirect to the XSKMAP only what
 * xskproxy owns; everything else is XDP_PASS.
 * ------------------------------------------------------------------------------------- */
/* Interface roles, as bits: a map value says on which roles a match is steered. */
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

/* Key of steer_v4_frontends (destination) and steer_v4_backends (source): an (address, port,
 * protocol) triple. Frontends: ClusterIPs, LoadBalancer IPs, externalIPs, NodePorts on each
 * node address, and (port 0, IPPROTO_IPIP) for DSR tunnels to a node address. Backends: the
 * Service endpoints, so that their replies are steered back for reverse translation. */
struct steer_v4_l4_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
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

/* Decisions of the steering program; the indices of its per-CPU counter array. */
enum steer_counter {
	STEER_PASS_NO_IFACE = 0,    /* interface not configured (no role) */
	STEER_PASS_NOT_IPV4,        /* ARP, IPv6 (until steered), other ethertypes */
	STEER_PASS_MALFORMED,       /* truncated headers: the kernel decides */
	STEER_PASS_FRAGMENT,        /* IPv4 fragments: ports unknown, the kernel reassembles */
	STEER_PASS_NO_MATCH,        /* not owned by xskproxy */
	STEER_REDIRECT_FRONTEND,    /* destination is a Service frontend */
	STEER_REDIRECT_BACKEND_REPLY, /* source is a Service backend */
	STEER_REDIRECT_SNAT_REPLY,  /* destination is a node address + SNAT port */
	STEER_REDIRECT_PREFIX,      /* destination in a steered prefix (Pod CIDR) */
	STEER_REDIRECT_FAILED,      /* redirect returned XDP_PASS (no socket bound) */
	STEER_COUNTER_MAX,
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
 * Pipeline tables (dataplane/): drop reasons, table entries. Owned by the pipeline.
 * ------------------------------------------------------------------------------------- */

#endif /* XSKPROXY_ABI_H */
