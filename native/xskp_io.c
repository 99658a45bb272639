/* xskp_io.c — AF_XDP UMEM/sockets, ring batches and the steering program's lifecycle, over
 * libxdp's xsk API and libbpf (declarations and conventions: xskp_io.h). Compiled into pyxdp
 * (setup.py) and into the C reference forwarder (CMake). Never loads libxdp's default program.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <linux/if_link.h>
#include <linux/magic.h>
#include <linux/if_xdp.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>

#include "xskp_io.h"

#define STEER_PROG_NAME "xskp_steer"
#define UPCALL_PROG_NAME "xskp_upcall"
#define UPCALL_TX_PROG_NAME "xskp_upcall_tx"
#define FAST_PROG_NAME "xskp_fast"
#define FLOWS_MAP_NAME "xskp_flows_v4"
#define ADOPT_MAX_MAPS 32
#define PIN_PATH_MAX 512

struct xskp_umem {
	struct xsk_umem *umem;
	void *area;
	uint64_t size;
	uint32_t frame_size;
	uint32_t frame_count;
	uint32_t sockets;           /* sockets still using this UMEM */
	struct xsk_umem_config config;
	struct xsk_ring_prod fill0; /* libxdp's rings of the UMEM fd, copied into the first socket */
	struct xsk_ring_cons comp0;
};

struct xskp_socket {
	struct xsk_socket *xsk;
	struct xskp_umem *umem;
	struct xsk_ring_cons rx;
	struct xsk_ring_prod tx;
	struct xsk_ring_prod fill;
	struct xsk_ring_cons comp;
	int fd;
	uint32_t need_wakeup;
};

struct xskp_steer {
	struct bpf_object *obj;
	int prog_fd;
	int map_fds[STEER_MAP_MAX];
	int ncpus;
	uint64_t *percpu_values;    /* scratch for one per-CPU counter: ncpus values */
	uint32_t attached_ifindex[STEER_MAX_IFACES];
	uint32_t attached_flags[STEER_MAX_IFACES]; /* XDP_FLAGS_*_MODE it was attached with */
	int attached_prog_fd[STEER_MAX_IFACES];    /* the program attached there */
	uint32_t attached_count;
	int fast_prog_fd;           /* the tc fast path */
	int upcall_prog_fd;         /* XDP on an upcall pair's socket end */
	int upcall_tx_prog_fd;      /* tc on an upcall pair's kernel end */
	uint32_t tc_ifindex[STEER_MAX_IFACES];
	uint32_t tc_created_qdisc[STEER_MAX_IFACES]; /* 1: this handle created the clsact qdisc */
	uint32_t tc_count;
	char pin_dir[PIN_PATH_MAX / 2]; /* where attached programs are pinned; "": nowhere */
};

/* Where a program is attached, for its pins' names. */
enum pin_hook {
	PIN_XDP = 0,
	PIN_TC = 1,                 /* our handle and priority at clsact ingress */
};

static const char *const pin_hook_names[] = { [PIN_XDP] = "xdp", [PIN_TC] = "tc" };

/* ELF names of the maps, indexed by enum steer_map (kernel map names are at most 15 chars). */
static const char *const steer_map_names[STEER_MAP_MAX] = {
	[STEER_MAP_IFACES] = "xskp_ifaces",
	[STEER_MAP_V4_FRONTENDS] = "xskp_v4_fronts",
	[STEER_MAP_V4_BACKENDS] = "xskp_v4_backs",
	[STEER_MAP_V4_PREFIXES] = "xskp_v4_pfxs",
	[STEER_MAP_V4_NODE_ADDRS] = "xskp_v4_nodes",
	[STEER_MAP_XSKS] = "xskp_xsks",
	[STEER_MAP_COUNTERS] = "xskp_counters",
	[STEER_MAP_FLOWS_V4] = FLOWS_MAP_NAME,
	[STEER_MAP_FAST_CONFIG] = "xskp_fast_cfg",
};

/* ---- library logging ----------------------------------------------------------------- */

static int discard_libbpf_message(enum libbpf_print_level level, const char *format, va_list args)
{
	(void)level;
	(void)format;
	(void)args;
	return 0;
}

static int discard_libxdp_message(enum libxdp_print_level level, const char *format, va_list args)
{
	(void)level;
	(void)format;
	(void)args;
	return 0;
}

void xskp_set_library_logging(uint32_t verbose)
{
	static libbpf_print_fn_t libbpf_default;
	static libxdp_print_fn_t libxdp_default;
	static int saved;
	libbpf_print_fn_t old_bpf = libbpf_set_print(verbose ? libbpf_default : discard_libbpf_message);
	libxdp_print_fn_t old_xdp = libxdp_set_print(verbose ? libxdp_default : discard_libxdp_message);

	if (!saved) {
		libbpf_default = old_bpf;
		libxdp_default = old_xdp;
		saved = 1;
		if (verbose) {
			libbpf_set_print(libbpf_default);
			libxdp_set_print(libxdp_default);
		}
	}
}

/* ---- UMEM ---------------------------------------------------------------------------- */

int xskp_umem_create(uint64_t *umem_out, uint32_t frame_count, uint32_t frame_size,
		     uint32_t headroom, uint32_t ring_size)
{
	struct xsk_umem_config config = {
		.fill_size = ring_size,
		.comp_size = ring_size,
		.frame_size = frame_size,
		.frame_headroom = headroom,
		.flags = 0,
	};
	struct xskp_umem *u;
	int err;

	if (!frame_count || !frame_size || (frame_size & (frame_size - 1)) || !ring_size ||
	    (ring_size & (ring_size - 1)))
		return -EINVAL;
	u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	u->config = config;
	u->frame_size = frame_size;
	u->frame_count = frame_count;
	u->size = (uint64_t)frame_count * frame_size;
	u->area = mmap(NULL, u->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (u->area == MAP_FAILED) {
		err = -errno;
		goto err_free;
	}
	err = xsk_umem__create(&u->umem, u->area, u->size, &u->fill0, &u->comp0, &config);
	if (err)
		goto err_unmap;
	*umem_out = (uint64_t)(uintptr_t)u;
	return 0;

err_unmap:
	munmap(u->area, u->size);
err_free:
	free(u);
	return err;
}

uint64_t xskp_umem_area(uint64_t umem)
{
	return (uint64_t)(uintptr_t)((struct xskp_umem *)(uintptr_t)umem)->area;
}

uint64_t xskp_umem_size(uint64_t umem)
{
	return ((struct xskp_umem *)(uintptr_t)umem)->size;
}

int xskp_umem_destroy(uint64_t umem)
{
	struct xskp_umem *u = (struct xskp_umem *)(uintptr_t)umem;
	int err;

	if (u->sockets)
		return -EBUSY;
	err = u->umem ? xsk_umem__delete(u->umem) : 0;
	if (err)
		return err;
	munmap(u->area, u->size);
	free(u);
	return 0;
}

/* ---- sockets ------------------------------------------------------------------------- */

/* libxdp binds the first socket on the UMEM's own fd; when that bind fails it unmaps the UMEM's
 * fill/completion rings but keeps pointers to them (and marks the rx/tx rings as set up), so a
 * retry on the same UMEM would write into unmapped or reused memory. Start from a fresh one. */
static int umem_reset(struct xskp_umem *u)
{
	int err = xsk_umem__delete(u->umem);

	u->umem = NULL;
	if (err)
		return err;
	return xsk_umem__create(&u->umem, u->area, u->size, &u->fill0, &u->comp0, &u->config);
}

static int socket_bind(struct xskp_socket *s, const char *ifname, uint32_t queue,
		       uint16_t bind_flags, uint32_t ring_size)
{
	struct xsk_socket_config config = {
		.rx_size = ring_size,
		.tx_size = ring_size,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.xdp_flags = 0,
		.bind_flags = bind_flags,
	};
	int err, reset_err;

	if (!s->umem->umem)
		return -EBADF; /* an earlier reset failed */
	err = xsk_socket__create_shared(&s->xsk, ifname, queue, s->umem->umem, &s->rx, &s->tx,
					&s->fill, &s->comp, &config);
	if (err && !s->umem->sockets) {
		reset_err = umem_reset(s->umem);
		if (reset_err)
			return reset_err;
	}
	return err;
}

int xskp_socket_create(uint64_t *sock_out, uint64_t umem, const char *ifname, uint32_t queue,
		       uint32_t mode, uint32_t need_wakeup, uint32_t ring_size)
{
	uint16_t wakeup_flag = need_wakeup ? XDP_USE_NEED_WAKEUP : 0;
	struct xskp_socket *s;
	int err;

	if (mode > XSKP_BIND_ZEROCOPY)
		return -EINVAL;
	if (!if_nametoindex(ifname))
		return -ENODEV;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->umem = (struct xskp_umem *)(uintptr_t)umem;
	s->need_wakeup = !!need_wakeup;
	if (mode == XSKP_BIND_COPY)
		err = socket_bind(s, ifname, queue, XDP_COPY | wakeup_flag, ring_size);
	else
		err = socket_bind(s, ifname, queue, XDP_ZEROCOPY | wakeup_flag, ring_size);
	if (err == -EOPNOTSUPP && mode == XSKP_BIND_AUTO)
		err = socket_bind(s, ifname, queue, XDP_COPY | wakeup_flag, ring_size);
	if (err)
		goto err_free;
	s->fd = xsk_socket__fd(s->xsk);
	s->umem->sockets++;
	*sock_out = (uint64_t)(uintptr_t)s;
	return 0;

err_free:
	free(s);
	return err;
}

int xskp_socket_fd(uint64_t sock)
{
	return ((struct xskp_socket *)(uintptr_t)sock)->fd;
}

int xskp_socket_zerocopy(uint64_t sock)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;
	struct xdp_options options;
	socklen_t len = sizeof(options);

	if (getsockopt(s->fd, SOL_XDP, XDP_OPTIONS, &options, &len))
		return -errno;
	return !!(options.flags & XDP_OPTIONS_ZEROCOPY);
}

int xskp_socket_statistics(uint64_t sock, struct xskp_socket_stats *out)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;
	struct xdp_statistics stats;
	socklen_t len = sizeof(stats);

	memset(&stats, 0, sizeof(stats));
	if (getsockopt(s->fd, SOL_XDP, XDP_STATISTICS, &stats, &len))
		return -errno;
	out->rx_dropped = stats.rx_dropped;
	out->rx_invalid_descs = stats.rx_invalid_descs;
	out->tx_invalid_descs = stats.tx_invalid_descs;
	out->rx_ring_full = stats.rx_ring_full;
	out->rx_fill_ring_empty_descs = stats.rx_fill_ring_empty_descs;
	out->tx_ring_empty_descs = stats.tx_ring_empty_descs;
	return 0;
}

void xskp_socket_destroy(uint64_t sock)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;

	if (!s)
		return;
	xsk_socket__delete(s->xsk);
	s->umem->sockets--;
	free(s);
}

/* ---- hot path ------------------------------------------------------------------------ */

static inline uint32_t prod_free(struct xsk_ring_prod *ring, uint32_t want)
{
	uint32_t free_slots = xsk_prod_nb_free(ring, want);

	return free_slots < want ? free_slots : want; /* nb_free may report more than asked */
}

uint32_t xskp_fill_free(uint64_t sock, uint32_t want)
{
	return prod_free(&((struct xskp_socket *)(uintptr_t)sock)->fill, want);
}

uint32_t xskp_fill(uint64_t sock, const uint64_t *addrs, uint32_t n)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;
	uint32_t idx, i;

	n = prod_free(&s->fill, n);
	if (!n || xsk_ring_prod__reserve(&s->fill, n, &idx) != n)
		return 0;
	for (i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&s->fill, idx + i) = addrs[i];
	xsk_ring_prod__submit(&s->fill, n);
	return n;
}

uint32_t xskp_rx(uint64_t sock, uint64_t *addrs, uint32_t *lens, uint32_t max)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;
	uint32_t idx, i, n;

	n = xsk_ring_cons__peek(&s->rx, max, &idx);
	for (i = 0; i < n; i++) {
		const struct xdp_desc *desc = xsk_ring_cons__rx_desc(&s->rx, idx + i);

		addrs[i] = desc->addr;
		lens[i] = desc->len;
	}
	if (n)
		xsk_ring_cons__release(&s->rx, n);
	return n;
}

uint32_t xskp_rx_room(uint64_t sock)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;
	uint32_t waiting = __atomic_load_n(s->rx.producer, __ATOMIC_ACQUIRE) - *s->rx.consumer;
	uint32_t filled = *s->fill.producer - __atomic_load_n(s->fill.consumer, __ATOMIC_ACQUIRE);
	uint32_t rx_free = waiting < s->rx.size ? s->rx.size - waiting : 0;

	return filled < rx_free ? filled : rx_free;
}

uint32_t xskp_tx(uint64_t sock, const uint64_t *addrs, const uint32_t *lens, uint32_t n)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;
	uint32_t idx, i;

	n = prod_free(&s->tx, n);
	if (!n || xsk_ring_prod__reserve(&s->tx, n, &idx) != n)
		return 0;
	for (i = 0; i < n; i++) {
		struct xdp_desc *desc = xsk_ring_prod__tx_desc(&s->tx, idx + i);

		desc->addr = addrs[i];
		desc->len = lens[i];
		desc->options = 0;
	}
	xsk_ring_prod__submit(&s->tx, n);
	return n;
}

uint32_t xskp_complete(uint64_t sock, uint64_t *addrs, uint32_t max)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;
	uint32_t idx, i, n;

	n = xsk_ring_cons__peek(&s->comp, max, &idx);
	for (i = 0; i < n; i++)
		addrs[i] = *xsk_ring_cons__comp_addr(&s->comp, idx + i);
	if (n)
		xsk_ring_cons__release(&s->comp, n);
	return n;
}

int32_t xskp_kick_tx(uint64_t sock)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;
	int32_t calls;

	if (s->need_wakeup && !xsk_ring_prod__needs_wakeup(&s->tx))
		return 0;
	for (calls = 1; calls <= XSKP_KICK_MAX_RETRIES; calls++) {
		if (sendto(s->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
			return calls;
		if (errno != EAGAIN && errno != EBUSY && errno != ENOBUFS)
			return -errno;
	}
	return -EAGAIN;
}

int32_t xskp_wakeup_rx(uint64_t sock)
{
	struct xskp_socket *s = (struct xskp_socket *)(uintptr_t)sock;

	if (s->need_wakeup && !xsk_ring_prod__needs_wakeup(&s->fill))
		return 0;
	if (recvfrom(s->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL) < 0 && errno != EAGAIN &&
	    errno != EBUSY && errno != ENOBUFS)
		return -errno;
	return 1;
}

int32_t xskp_poll_rx(uint64_t sock_a, uint64_t sock_b, int32_t wake_fd, int32_t timeout_ms)
{
	struct pollfd fds[3];
	int nfds = 0, ready;
	uint64_t wakes;

	if (sock_a) {
		fds[nfds].fd = ((struct xskp_socket *)(uintptr_t)sock_a)->fd;
		fds[nfds++].events = POLLIN;
	}
	if (sock_b) {
		fds[nfds].fd = ((struct xskp_socket *)(uintptr_t)sock_b)->fd;
		fds[nfds++].events = POLLIN;
	}
	if (wake_fd >= 0) {
		fds[nfds].fd = wake_fd;
		fds[nfds++].events = POLLIN;
	}
	ready = poll(fds, nfds, timeout_ms);
	if (ready < 0)
		return errno == EINTR ? 0 : -errno;
	if (wake_fd >= 0 && (fds[nfds - 1].revents & POLLIN) &&
	    read(wake_fd, &wakes, sizeof(wakes)) < 0 && errno != EAGAIN)
		return -errno;
	return ready;
}

uint64_t xskp_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint32_t xskp_batch_probe(uint64_t *addrs, uint32_t n)
{
	(void)addrs;
	return n;
}

/* ---- steering program ---------------------------------------------------------------- */

static int prog_name_of(uint32_t prog_id, char *name, uint32_t name_size);

/* ---- pins ------------------------------------------------------------------------------
 * Taking over a program or map by its kernel id (BPF_PROG_GET_FD_BY_ID, BPF_MAP_GET_FD_BY_ID)
 * needs CAP_SYS_ADMIN, which the DaemonSet does not grant. So every program attached to an
 * interface is pinned in bpffs, with the flow table of the steering program and of the fast
 * path beside it: <pin_dir>/<hook>-<netns inode>-<ifindex>[-flows]. The next agent (after a
 * handover or a kill) opens them with BPF_OBJ_GET (CAP_BPF and the file's mode, 0600), checks
 * that the pinned program is the one the kernel says is attached there (a stale pin is ignored),
 * adopts the flow table and replaces the program with the pin's fd as the expected old one.
 * A detach removes the pins; a release (handover) keeps them. Without a pin, the id is tried
 * (it works with CAP_SYS_ADMIN: a predecessor that could not pin). */

static int pin_path(const struct xskp_steer *st, enum pin_hook hook, uint32_t ifindex,
		    const char *suffix, char *path)
{
	struct stat netns;

	if (!st->pin_dir[0])
		return -ENOENT;
	if (stat("/proc/thread-self/ns/net", &netns))
		return -errno;
	if (snprintf(path, PIN_PATH_MAX, "%s/%s-%lu-%u%s", st->pin_dir, pin_hook_names[hook],
		     (unsigned long)netns.st_ino, ifindex, suffix) >= PIN_PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

/* The pin_dir, made 0700 when missing; it must sit on a bpffs. 0 or -errno. */
static int pin_dir_prepare(const char *dir)
{
	struct statfs fs;

	if (mkdir(dir, 0700) && errno != EEXIST)
		return -errno;
	if (statfs(dir, &fs))
		return -errno;
	if ((unsigned long)fs.f_type != (unsigned long)BPF_FS_MAGIC)
		return -EMEDIUMTYPE;
	return chmod(dir, 0700) ? -errno : 0;
}

/* Pins fd as the pin's name + "-new" (bpffs takes no dot in a name): the name itself still
 * holds the predecessor's pin, whose program the attach replaces; pins_finish renames it
 * (atomically) or removes what was staged. */
static int pin_stage(const struct xskp_steer *st, enum pin_hook hook, uint32_t ifindex,
		     const char *suffix, int fd)
{
	char path[PIN_PATH_MAX], staged[PIN_PATH_MAX + 4];
	int err = pin_path(st, hook, ifindex, suffix, path);

	if (err)
		return err == -ENOENT ? 0 : err;        /* no pin_dir: nothing to pin */
	snprintf(staged, sizeof(staged), "%s-new", path);
	unlink(staged);                                 /* a start killed mid-way left it */
	return bpf_obj_pin(fd, staged) ? -errno : 0;
}

static int pins_stage(const struct xskp_steer *st, enum pin_hook hook, uint32_t ifindex,
		      int prog_fd, int with_flows)
{
	int err = pin_stage(st, hook, ifindex, "", prog_fd);

	if (!err && with_flows)
		err = pin_stage(st, hook, ifindex, "-flows", st->map_fds[STEER_MAP_FLOWS_V4]);
	return err;
}

/* attached: the staged pins take the names (a program without a flow table removes the
 * predecessor's flow table pin); else the staged pins go. */
static void pins_finish(const struct xskp_steer *st, enum pin_hook hook, uint32_t ifindex,
			int attached)
{
	const char *const suffixes[] = { "", "-flows" };
	char path[PIN_PATH_MAX], staged[PIN_PATH_MAX + 4];
	int i;

	for (i = 0; i < 2; i++) {
		if (pin_path(st, hook, ifindex, suffixes[i], path))
			return;
		snprintf(staged, sizeof(staged), "%s-new", path);
		if (!attached || rename(staged, path)) {
			unlink(staged);
			if (attached)
				unlink(path);
		}
	}
}

/* Removes the pins of what was attached at ifindex's hook. */
static void pins_remove(const struct xskp_steer *st, enum pin_hook hook, uint32_t ifindex)
{
	char path[PIN_PATH_MAX];

	if (!pin_path(st, hook, ifindex, "", path))
		unlink(path);
	if (!pin_path(st, hook, ifindex, "-flows", path))
		unlink(path);
}

static uint32_t object_id_of(int fd)
{
	struct bpf_prog_info info;      /* a map's info starts the same way: type, id */
	uint32_t len = sizeof(info);

	memset(&info, 0, sizeof(info));
	return bpf_obj_get_info_by_fd(fd, &info, &len) ? 0 : info.id;
}

/* 1 if the program behind fd is named `name` (or `other`, when not NULL). */
static int prog_named(int fd, const char *name, const char *other)
{
	struct bpf_prog_info info;
	uint32_t len = sizeof(info);

	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(fd, &info, &len))
		return 0;
	return !strcmp(info.name, name) || (other && !strcmp(info.name, other));
}

/* An fd of the program prog_id, attached at ifindex's hook: from our pin there when it holds
 * that program (any capabilities), else by its id (CAP_SYS_ADMIN). -ENOENT: it is gone;
 * -EPERM: neither way (a program nobody pinned, without CAP_SYS_ADMIN). */
static int attached_prog_fd(const struct xskp_steer *st, enum pin_hook hook, uint32_t ifindex,
			    uint32_t prog_id)
{
	char path[PIN_PATH_MAX];
	int fd;

	if (!pin_path(st, hook, ifindex, "", path)) {
		fd = bpf_obj_get(path);
		if (fd >= 0) {
			if (object_id_of(fd) == prog_id)
				return fd;
			close(fd);              /* stale: another program sits there now */
		}
	}
	fd = bpf_prog_get_fd_by_id(prog_id);
	return fd >= 0 ? fd : -errno;
}

/* The XDP program on ifindex: *prog_id (0: none) and its enum xskp_attach_mode. */
static int xdp_attached(uint32_t ifindex, uint32_t *prog_id, uint32_t *mode)
{
	LIBBPF_OPTS(bpf_xdp_query_opts, query);
	int err = bpf_xdp_query(ifindex, 0, &query);

	if (err)
		return err;
	*prog_id = query.prog_id;
	*mode = query.attach_mode == XDP_ATTACHED_SKB ? XSKP_ATTACH_SKB :
		query.attach_mode == XDP_ATTACHED_DRV ? XSKP_ATTACH_NATIVE : XSKP_ATTACH_AUTO;
	return 0;
}

/* The program at our tc handle and priority on ifindex's ingress: *prog_id (0: none). */
static int tc_attached(uint32_t ifindex, uint32_t *prog_id)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, query, .handle = XSKP_TC_HANDLE, .priority = XSKP_TC_PRIORITY);
	int err = bpf_tc_query(&hook, &query);

	*prog_id = 0;
	if (err == -ENOENT || err == -EINVAL)
		return 0;       /* no filter there, or no clsact qdisc at all */
	if (err)
		return err;
	*prog_id = query.prog_id;
	return 0;
}

static int flow_table_shaped(int fd, const struct bpf_map *flows)
{
	struct bpf_map_info map;
	uint32_t len = sizeof(map);

	memset(&map, 0, sizeof(map));
	return !bpf_obj_get_info_by_fd(fd, &map, &len) && !strcmp(map.name, FLOWS_MAP_NAME) &&
	       map.value_size == sizeof(struct xskp_flow_v4) &&
	       map.max_entries == bpf_map__max_entries(flows) &&
	       map.map_flags == bpf_map__map_flags(flows);
}

/* The flow table of the program prog_fd (attached at ifindex's hook) if it has the shape of
 * `flows`: the pin beside the program's, else by the program's map ids. fd or -ENOENT. */
static int flow_table_of(const struct xskp_steer *st, enum pin_hook hook, uint32_t ifindex,
			 int prog_fd, const struct bpf_map *flows)
{
	uint32_t map_ids[ADOPT_MAX_MAPS], len, i, n, pinned_id;
	struct bpf_prog_info info;
	char path[PIN_PATH_MAX];
	int fd;

	memset(&info, 0, sizeof(info));
	info.nr_map_ids = ADOPT_MAX_MAPS;
	info.map_ids = (uint64_t)(uintptr_t)map_ids;
	len = sizeof(info);
	if (bpf_obj_get_info_by_fd(prog_fd, &info, &len))
		return -errno;
	n = info.nr_map_ids < ADOPT_MAX_MAPS ? info.nr_map_ids : ADOPT_MAX_MAPS;
	if (!pin_path(st, hook, ifindex, "-flows", path) && (fd = bpf_obj_get(path)) >= 0) {
		pinned_id = object_id_of(fd);
		for (i = 0; i < n; i++)
			if (map_ids[i] == pinned_id && flow_table_shaped(fd, flows))
				return fd;
		close(fd);      /* stale, or of another shape */
	}
	for (i = 0; i < n; i++) {
		fd = bpf_map_get_fd_by_id(map_ids[i]);
		if (fd < 0)
			continue;
		if (flow_table_shaped(fd, flows))
			return fd;
		close(fd);
	}
	return -ENOENT;
}

/* The flow table of the xskproxy program attached to ifindex (a predecessor that stopped for a
 * handover, or was killed), if it has the shape asked for: reused by the new object, so that
 * offloaded flows keep their entries across the restart. 1 adopted, 0 nothing to adopt, -errno. */
static int adopt_flow_table(const struct xskp_steer *st, struct bpf_map *flows, uint32_t ifindex)
{
	/* the XDP steering program there, or (upcall mode: no XDP there) the tc fast path */
	const struct { enum pin_hook hook; const char *name; } homes[] = {
		{ PIN_XDP, STEER_PROG_NAME }, { PIN_TC, FAST_PROG_NAME },
	};
	uint32_t prog_id, mode;
	int i, prog_fd, fd, err;

	for (i = 0; i < 2; i++) {
		if (homes[i].hook == PIN_XDP ? xdp_attached(ifindex, &prog_id, &mode) :
		    tc_attached(ifindex, &prog_id))
			continue;
		if (!prog_id)
			continue;
		prog_fd = attached_prog_fd(st, homes[i].hook, ifindex, prog_id);
		if (prog_fd < 0)
			continue;
		if (!prog_named(prog_fd, homes[i].name, NULL)) {
			close(prog_fd);
			continue;
		}
		fd = flow_table_of(st, homes[i].hook, ifindex, prog_fd, flows);
		close(prog_fd);
		if (fd < 0)
			return 0;
		err = bpf_map__reuse_fd(flows, fd);
		close(fd);
		return err ? err : 1;
	}
	return 0;
}

int xskp_steer_open(uint64_t *steer_out, const char *obj_path, uint32_t flow_entries,
		    const char *pin_dir, uint32_t adopt_ifindex, uint32_t *adopted_out,
		    int32_t *pin_err_out)
{
	struct bpf_program *prog;
	struct bpf_map *flows;
	struct xskp_steer *st;
	int err, i;

	*adopted_out = 0;
	*pin_err_out = 0;
	if (flow_entries == 0 || (flow_entries & (flow_entries - 1)))
		return -EINVAL;
	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	if (pin_dir && pin_dir[0]) {
		if (strlen(pin_dir) >= sizeof(st->pin_dir))
			*pin_err_out = -ENAMETOOLONG;
		else
			*pin_err_out = pin_dir_prepare(pin_dir);
		if (!*pin_err_out)
			strcpy(st->pin_dir, pin_dir);
	}
	st->ncpus = libbpf_num_possible_cpus();
	if (st->ncpus <= 0) {
		err = st->ncpus ? st->ncpus : -EINVAL;
		goto err_free;
	}
	st->percpu_values = calloc(st->ncpus, sizeof(uint64_t));
	if (!st->percpu_values) {
		err = -ENOMEM;
		goto err_free;
	}
	st->obj = bpf_object__open_file(obj_path, NULL);
	if (!st->obj) {
		err = -errno;
		goto err_free_values;
	}
	flows = bpf_object__find_map_by_name(st->obj, FLOWS_MAP_NAME);
	if (!flows) {
		err = -ENOENT;
		goto err_close;
	}
	err = bpf_map__set_max_entries(flows, flow_entries);
	if (err)
		goto err_close;
	if (adopt_ifindex) {
		err = adopt_flow_table(st, flows, adopt_ifindex);
		if (err < 0)
			goto err_close;
		*adopted_out = err;
	}
	err = bpf_object__load(st->obj);
	if (err)
		goto err_close;
	{
		/* the object's programs, each found by name */
		const struct { const char *name; int *fd; } programs[] = {
			{ STEER_PROG_NAME, &st->prog_fd }, { FAST_PROG_NAME, &st->fast_prog_fd },
			{ UPCALL_PROG_NAME, &st->upcall_prog_fd },
			{ UPCALL_TX_PROG_NAME, &st->upcall_tx_prog_fd },
		};

		for (i = 0; i < (int)(sizeof(programs) / sizeof(programs[0])); i++) {
			prog = bpf_object__find_program_by_name(st->obj, programs[i].name);
			if (!prog) {
				err = -ENOENT;
				goto err_close;
			}
			*programs[i].fd = bpf_program__fd(prog);
		}
	}
	for (i = 0; i < STEER_MAP_MAX; i++) {
		st->map_fds[i] = bpf_object__find_map_fd_by_name(st->obj, steer_map_names[i]);
		if (st->map_fds[i] < 0) {
			err = -ENOENT;
			goto err_close;
		}
	}
	*steer_out = (uint64_t)(uintptr_t)st;
	return 0;

err_close:
	bpf_object__close(st->obj);
err_free_values:
	free(st->percpu_values);
err_free:
	free(st);
	return err;
}

int xskp_steer_map_fd(uint64_t steer, uint32_t map)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;

	if (map >= STEER_MAP_MAX)
		return -EINVAL;
	return st->map_fds[map];
}

/* ---- the tc fast path ------------------------------------------------------------------ */

static int tc_index_of(const struct xskp_steer *st, uint32_t ifindex)
{
	uint32_t i;

	for (i = 0; i < st->tc_count; i++)
		if (st->tc_ifindex[i] == ifindex)
			return (int)i;
	return -1;
}

int xskp_tc_attach(uint64_t steer, uint32_t ifindex, uint32_t program, uint32_t *created_qdisc_out)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, query, .handle = XSKP_TC_HANDLE, .priority = XSKP_TC_PRIORITY);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = XSKP_TC_HANDLE, .priority = XSKP_TC_PRIORITY,
		    .flags = BPF_TC_F_REPLACE);
	int err, created, old_fd;

	*created_qdisc_out = 0;
	if (program > XSKP_TC_UPCALL_TX)
		return -EINVAL;
	opts.prog_fd = program == XSKP_TC_FAST ? st->fast_prog_fd : st->upcall_tx_prog_fd;
	if (tc_index_of(st, ifindex) >= 0)
		return -EALREADY;
	if (st->tc_count == STEER_MAX_IFACES)
		return -ENOSPC;
	err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST)
		return err;
	created = err == 0;
	err = bpf_tc_query(&hook, &query);
	if (!err) {
		/* something sits at our handle and priority: replace it only if it is ours */
		old_fd = attached_prog_fd(st, PIN_TC, ifindex, query.prog_id);
		if (old_fd >= 0) {
			err = prog_named(old_fd, FAST_PROG_NAME, UPCALL_TX_PROG_NAME) ? 0 : -EBUSY;
			close(old_fd);
		} else {
			err = old_fd == -EPERM ? -EBUSY : old_fd == -ENOENT ? 0 : old_fd;
		}
		if (err)
			return err;     /* -EBUSY: not ours, or nobody pinned it and we may not ask */
	} else if (err != -ENOENT && err != -EINVAL) {
		return err;     /* -EINVAL: "cannot find specified filter chain", an empty clsact */
	}
	err = pins_stage(st, PIN_TC, ifindex, opts.prog_fd, program == XSKP_TC_FAST);
	if (!err)
		err = bpf_tc_attach(&hook, &opts);
	pins_finish(st, PIN_TC, ifindex, !err);
	if (err) {
		if (created)
			bpf_tc_hook_destroy(&hook);
		return err;
	}
	st->tc_ifindex[st->tc_count] = ifindex;
	st->tc_created_qdisc[st->tc_count] = created;
	st->tc_count++;
	*created_qdisc_out = created;
	return 0;
}

int xskp_tc_detach(uint64_t steer, uint32_t ifindex, uint32_t destroy_qdisc)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = XSKP_TC_HANDLE, .priority = XSKP_TC_PRIORITY);
	int i = tc_index_of(st, ifindex), err;

	err = bpf_tc_detach(&hook, &opts);
	if (!err || err == -ENOENT)
		pins_remove(st, PIN_TC, ifindex);
	if (i >= 0) {
		destroy_qdisc |= st->tc_created_qdisc[i];
		st->tc_count--;
		st->tc_ifindex[i] = st->tc_ifindex[st->tc_count];
		st->tc_created_qdisc[i] = st->tc_created_qdisc[st->tc_count];
	}
	if (destroy_qdisc) {
		hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS;    /* the clsact qdisc itself */
		if (bpf_tc_hook_destroy(&hook) && !err)
			err = -errno;
	}
	return err == -ENOENT ? 0 : err;
}

int xskp_tc_query(uint32_t ifindex, uint32_t *prog_id, char *name, uint32_t name_size)
{
	int err;

	if (name_size)
		name[0] = '\0';
	err = tc_attached(ifindex, prog_id);
	if (err || !*prog_id)
		return err;
	err = prog_name_of(*prog_id, name, name_size);
	return err == -EPERM ? 0 : err;         /* without CAP_SYS_ADMIN the name stays unknown */
}

int xskp_tc_remove_stale(uint64_t steer, uint32_t ifindex, uint32_t destroy_qdisc)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	uint32_t prog_id;
	int fd, ours, err;

	err = tc_attached(ifindex, &prog_id);
	if (err || !prog_id)
		return err;
	fd = attached_prog_fd(st, PIN_TC, ifindex, prog_id);
	if (fd < 0)
		return fd == -ENOENT || fd == -EPERM ? 0 : fd;
	ours = prog_named(fd, FAST_PROG_NAME, NULL);
	close(fd);
	if (!ours)
		return 0;
	err = xskp_tc_detach(steer, ifindex, destroy_qdisc);
	return err ? err : 1;
}

int xskp_steer_object_ids(uint64_t steer, uint32_t *prog_ids, uint32_t *map_ids)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	struct bpf_prog_info prog;
	struct bpf_map_info map;
	uint32_t len;
	int i, fds[4] = { st->prog_fd, st->fast_prog_fd, st->upcall_prog_fd, st->upcall_tx_prog_fd };

	for (i = 0; i < 4; i++) {
		memset(&prog, 0, sizeof(prog));
		len = sizeof(prog);
		if (bpf_obj_get_info_by_fd(fds[i], &prog, &len))
			return -errno;
		prog_ids[i] = prog.id;
	}
	for (i = 0; i < STEER_MAP_MAX; i++) {
		memset(&map, 0, sizeof(map));
		len = sizeof(map);
		if (bpf_obj_get_info_by_fd(st->map_fds[i], &map, &len))
			return -errno;
		map_ids[i] = map.id;
	}
	return 0;
}

int xskp_bpf_object_exists(uint32_t is_map, uint32_t id)
{
	int fd = is_map ? bpf_map_get_fd_by_id(id) : bpf_prog_get_fd_by_id(id);

	if (fd >= 0) {
		close(fd);
		return 1;
	}
	return errno == ENOENT ? 0 : -errno;
}

/* ---- the fast path's heartbeat ------------------------------------------------------- */

struct xskp_heartbeat {
	pthread_t thread;
	volatile int stop;
	volatile struct xskp_fast_config *config;
	uint64_t period_ns;
	uint64_t liveness_ns;
};

static void *heartbeat_loop(void *arg)
{
	struct xskp_heartbeat *hb = arg;
	struct timespec pause = { .tv_sec = hb->period_ns / 1000000000ull,
				  .tv_nsec = hb->period_ns % 1000000000ull };

	while (!hb->stop) {
		hb->config->alive_until_ns = xskp_now_ns() + hb->liveness_ns;
		nanosleep(&pause, NULL);
	}
	return NULL;
}

int xskp_heartbeat_start(uint64_t *heartbeat_out, uint64_t config_addr, uint64_t period_ns,
			 uint64_t liveness_ns)
{
	struct xskp_heartbeat *hb;
	int err;

	if (!config_addr || !period_ns || period_ns >= liveness_ns)
		return -EINVAL;
	hb = calloc(1, sizeof(*hb));
	if (!hb)
		return -ENOMEM;
	hb->config = (struct xskp_fast_config *)(uintptr_t)config_addr;
	hb->period_ns = period_ns;
	hb->liveness_ns = liveness_ns;
	hb->config->alive_until_ns = xskp_now_ns() + liveness_ns;
	err = pthread_create(&hb->thread, NULL, heartbeat_loop, hb);
	if (err) {
		free(hb);
		return -err;
	}
	*heartbeat_out = (uint64_t)(uintptr_t)hb;
	return 0;
}

void xskp_heartbeat_stop(uint64_t heartbeat)
{
	struct xskp_heartbeat *hb = (struct xskp_heartbeat *)(uintptr_t)heartbeat;

	if (!hb)
		return;
	hb->stop = 1;
	pthread_join(hb->thread, NULL);
	free(hb);
}

int xskp_fast_test_run(uint64_t steer, const void *frame, uint32_t len, uint32_t ifindex,
		       void *out, uint32_t out_size, uint32_t *out_len, uint32_t *retval_out)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	struct __sk_buff ctx;
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len,
		    .data_out = out, .data_size_out = out_size, .ctx_in = &ctx,
		    .ctx_size_in = sizeof(ctx), .repeat = 1);

	memset(&ctx, 0, sizeof(ctx));
	ctx.ifindex = ifindex;
	ctx.ingress_ifindex = ifindex;
	if (bpf_prog_test_run_opts(st->fast_prog_fd, &opts))
		return -errno;
	*out_len = opts.data_size_out;
	*retval_out = opts.retval;
	return 0;
}

static uint32_t mode_flags(uint32_t mode)
{
	return mode == XSKP_ATTACH_SKB ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE;
}

static int prog_name_of(uint32_t prog_id, char *name, uint32_t name_size)
{
	struct bpf_prog_info info;
	uint32_t len = sizeof(info);
	int fd, err = 0;

	fd = bpf_prog_get_fd_by_id(prog_id);
	if (fd < 0)
		return -errno;
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(fd, &info, &len))
		err = -errno;
	else if (name_size) {
		strncpy(name, info.name, name_size - 1);
		name[name_size - 1] = '\0';
	}
	close(fd);
	return err;
}

int xskp_xdp_query(uint32_t ifindex, uint32_t *prog_id, uint32_t *mode, char *name,
		   uint32_t name_size)
{
	int err;

	if (name_size)
		name[0] = '\0';
	err = xdp_attached(ifindex, prog_id, mode);
	if (err || !*prog_id)
		return err;
	err = prog_name_of(*prog_id, name, name_size);
	return err == -EPERM ? 0 : err;         /* without CAP_SYS_ADMIN the name stays unknown */
}

/* A program named like ours that another xskproxy left attached (killed, or stopped for a
 * handover with traffic held) is replaced in one step (XDP_FLAGS_REPLACE with its fd, from its
 * pin: no packet meets an interface without a program) when it sits in the mode asked for, or
 * AUTO; in another mode it is detached first. Any other program, or one nobody pinned when its
 * id may not be looked up (no CAP_SYS_ADMIN), is refused with -EBUSY. Returns 0 with *mode_out
 * set once ours is attached, 1 when the caller still has to attach, or -errno. */
static int replace_stale_program(const struct xskp_steer *st, uint32_t ifindex, int prog_fd,
				 const char *prog_name, uint32_t mode, uint32_t *mode_out)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts);
	uint32_t prog_id, stale_mode;
	int err, old_fd;

	err = xdp_attached(ifindex, &prog_id, &stale_mode);
	if (err || !prog_id)
		return err ? err : 1;
	if (prog_id == object_id_of(prog_fd))
		return -EALREADY;
	if (stale_mode == XSKP_ATTACH_AUTO)
		return -EBUSY;
	old_fd = attached_prog_fd(st, PIN_XDP, ifindex, prog_id);
	if (old_fd < 0)
		return old_fd == -ENOENT ? 1 : old_fd == -EPERM ? -EBUSY : old_fd; /* gone: attach */
	if (!prog_named(old_fd, prog_name, NULL)) {
		close(old_fd);
		return -EBUSY;
	}
	opts.old_prog_fd = old_fd;
	if (mode != XSKP_ATTACH_AUTO && mode != stale_mode) {
		err = bpf_xdp_detach(ifindex, mode_flags(stale_mode), &opts);
		close(old_fd);
		return err ? err : 1;
	}
	err = bpf_xdp_attach(ifindex, prog_fd, XDP_FLAGS_REPLACE | mode_flags(stale_mode), &opts);
	close(old_fd);
	if (err)
		return err;
	*mode_out = stale_mode;
	return 0;
}

int xskp_steer_attach(uint64_t steer, uint32_t ifindex, uint32_t mode, uint32_t *mode_out)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	uint32_t tried = mode == XSKP_ATTACH_SKB ? XSKP_ATTACH_SKB : XSKP_ATTACH_NATIVE;
	int prog_fd = mode == XSKP_ATTACH_UPCALL ? st->upcall_prog_fd : st->prog_fd;
	const char *prog_name = mode == XSKP_ATTACH_UPCALL ? UPCALL_PROG_NAME : STEER_PROG_NAME;
	uint32_t i;
	int err;

	if (mode > XSKP_ATTACH_UPCALL)
		return -EINVAL;
	for (i = 0; i < st->attached_count; i++)
		if (st->attached_ifindex[i] == ifindex)
			return -EALREADY;
	if (st->attached_count == STEER_MAX_IFACES)
		return -ENOSPC;
	err = pins_stage(st, PIN_XDP, ifindex, prog_fd, mode != XSKP_ATTACH_UPCALL);
	if (!err)
		err = replace_stale_program(st, ifindex, prog_fd, prog_name,
					    mode == XSKP_ATTACH_UPCALL ? XSKP_ATTACH_NATIVE : mode,
					    &tried);
	if (err == 1) {
		err = bpf_xdp_attach(ifindex, prog_fd,
				     XDP_FLAGS_UPDATE_IF_NOEXIST | mode_flags(tried), NULL);
		if (err && mode == XSKP_ATTACH_AUTO && err != -ENODEV && err != -EBUSY) {
			tried = XSKP_ATTACH_SKB;
			err = bpf_xdp_attach(ifindex, prog_fd,
					     XDP_FLAGS_UPDATE_IF_NOEXIST | mode_flags(tried), NULL);
		}
	}
	pins_finish(st, PIN_XDP, ifindex, !err);
	if (err)
		return err;
	st->attached_ifindex[st->attached_count] = ifindex;
	st->attached_flags[st->attached_count] = mode_flags(tried);
	st->attached_prog_fd[st->attached_count] = prog_fd;
	st->attached_count++;
	*mode_out = mode == XSKP_ATTACH_UPCALL ? XSKP_ATTACH_UPCALL : tried;
	return 0;
}

int xskp_xdp_remove_stale(uint64_t steer, uint32_t ifindex)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts);
	uint32_t prog_id, mode;
	int err;

	err = xdp_attached(ifindex, &prog_id, &mode);
	if (err || !prog_id)
		return err;
	opts.old_prog_fd = attached_prog_fd(st, PIN_XDP, ifindex, prog_id);
	if (opts.old_prog_fd < 0)
		return opts.old_prog_fd == -ENOENT || opts.old_prog_fd == -EPERM ? 0 : opts.old_prog_fd;
	if (!prog_named(opts.old_prog_fd, STEER_PROG_NAME, NULL)) {
		close(opts.old_prog_fd);
		return 0;
	}
	err = bpf_xdp_detach(ifindex, mode_flags(mode), &opts);
	close(opts.old_prog_fd);
	if (err)
		return err;
	pins_remove(st, PIN_XDP, ifindex);
	return 1;
}

int xskp_steer_detach(uint64_t steer, uint32_t ifindex)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts);
	uint32_t i;
	int err;

	for (i = 0; i < st->attached_count; i++)
		if (st->attached_ifindex[i] == ifindex)
			break;
	if (i == st->attached_count)
		return -ENOENT;
	opts.old_prog_fd = st->attached_prog_fd[i];
	err = bpf_xdp_detach(ifindex, st->attached_flags[i], &opts);
	pins_remove(st, PIN_XDP, ifindex);
	st->attached_count--;
	st->attached_ifindex[i] = st->attached_ifindex[st->attached_count];
	st->attached_flags[i] = st->attached_flags[st->attached_count];
	st->attached_prog_fd[i] = st->attached_prog_fd[st->attached_count];
	return err;
}

int xskp_steer_map_update(uint64_t steer, uint32_t map, const void *key, const void *value)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;

	if (map >= STEER_MAP_MAX || map == STEER_MAP_COUNTERS || map == STEER_MAP_XSKS)
		return -EINVAL;
	return bpf_map_update_elem(st->map_fds[map], key, value, BPF_ANY) ? -errno : 0;
}

int xskp_steer_map_delete(uint64_t steer, uint32_t map, const void *key)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;

	if (map >= STEER_MAP_MAX || map == STEER_MAP_COUNTERS)
		return -EINVAL;
	return bpf_map_delete_elem(st->map_fds[map], key) ? -errno : 0;
}

int xskp_steer_map_lookup(uint64_t steer, uint32_t map, const void *key, void *value)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;

	if (map >= STEER_MAP_MAX || map == STEER_MAP_COUNTERS || map == STEER_MAP_XSKS)
		return -EINVAL;
	return bpf_map_lookup_elem(st->map_fds[map], key, value) ? -errno : 0;
}

int xskp_steer_set_socket(uint64_t steer, uint32_t index, uint64_t sock)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	int fd = xskp_socket_fd(sock);

	return bpf_map_update_elem(st->map_fds[STEER_MAP_XSKS], &index, &fd, BPF_ANY) ? -errno : 0;
}

int xskp_steer_clear_socket(uint64_t steer, uint32_t index)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;

	if (bpf_map_delete_elem(st->map_fds[STEER_MAP_XSKS], &index) && errno != ENOENT)
		return -errno;
	return 0;
}

int xskp_steer_test_run(uint64_t steer, const void *frame, uint32_t len, uint32_t ifindex,
			uint32_t rx_queue, uint32_t *action_out)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	struct xdp_md md = {
		.data = 0,
		.data_end = len,
		.ingress_ifindex = ifindex,
		.rx_queue_index = rx_queue,
	};
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len, .ctx_in = &md,
		    .ctx_size_in = sizeof(md), .repeat = 1);

	if (bpf_prog_test_run_opts(st->prog_fd, &opts))
		return -errno;
	*action_out = opts.retval;
	return 0;
}

int xskp_steer_counters(uint64_t steer, uint64_t *out, uint32_t n)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;
	uint32_t key;
	int cpu;

	for (key = 0; key < n && key < STEER_COUNTER_MAX; key++) {
		if (bpf_map_lookup_elem(st->map_fds[STEER_MAP_COUNTERS], &key, st->percpu_values))
			return -errno;
		out[key] = 0;
		for (cpu = 0; cpu < st->ncpus; cpu++)
			out[key] += st->percpu_values[cpu];
	}
	return 0;
}

static void steer_free(struct xskp_steer *st)
{
	bpf_object__close(st->obj);
	free(st->percpu_values);
	free(st);
}

void xskp_steer_close(uint64_t steer)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;

	if (!st)
		return;
	while (st->tc_count)
		xskp_tc_detach(steer, st->tc_ifindex[0], 0);
	while (st->attached_count)
		xskp_steer_detach(steer, st->attached_ifindex[0]);
	steer_free(st);
}

void xskp_steer_release(uint64_t steer)
{
	struct xskp_steer *st = (struct xskp_steer *)(uintptr_t)steer;

	if (st)
		steer_free(st);   /* the interfaces keep the program, the program keeps its maps */
}
