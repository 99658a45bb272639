/* xskfwd_c.c — the minimal C AF_XDP forwarder, reference "path (g)" of the benchmarks: the same
 * steering program and pyxdp functions as dataplane/forwarder.py, with the per-frame work
 * (MAC rewrite, TTL decrement) in C. Two sockets share one UMEM; both directions; no state.
 *
 * usage: xskfwd_c --transport IF --gateway IF --transport-peer-mac MAC --gateway-peer-mac MAC
 *                 [--queue N] [--steer-prefix CIDR[@transport|@gateway] ...] [--bpf-obj PATH]
 *                 [--skb-mode] [--poll]
 * Frames received on one interface leave on the other, with source MAC = that interface's MAC and
 * destination MAC = the peer MAC given for it. Runs until SIGINT/SIGTERM, then detaches and
 * prints one line of counters. Never leaves the program attached on a clean exit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <net/if.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "xskp_io.h"

#define MAX_PREFIXES 64

struct iface {
	const char *name;
	uint32_t ifindex;
	uint32_t role;
	uint8_t own_mac[6];
	uint8_t peer_mac[6];
	uint64_t sock;
	uint64_t rx, tx, completed, dropped, tx_full;
	int kick_pending;           /* tx descriptors the kernel has not taken yet */
};

static volatile sig_atomic_t stop_requested;

static void request_stop(int signo)
{
	(void)signo;
	stop_requested = 1;
}

static int parse_mac(const char *text, uint8_t mac[6])
{
	unsigned int b[6];
	int i;

	if (sscanf(text, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -EINVAL;
	for (i = 0; i < 6; i++)
		mac[i] = (uint8_t)b[i];
	return 0;
}

static int read_own_mac(const char *ifname, uint8_t mac[6])
{
	struct ifreq req;
	int fd = socket(AF_INET, SOCK_DGRAM, 0), err = 0;

	if (fd < 0)
		return -errno;
	memset(&req, 0, sizeof(req));
	strncpy(req.ifr_name, ifname, IFNAMSIZ - 1);
	if (ioctl(fd, SIOCGIFHWADDR, &req))
		err = -errno;
	else
		memcpy(mac, req.ifr_hwaddr.sa_data, 6);
	close(fd);
	return err;
}

/* IPv4 frames: TTL - 1 with an RFC 1624 checksum update; 0 means drop (TTL expired, not IPv4). */
static int rewrite_frame(uint8_t *frame, uint32_t len, const struct iface *egress)
{
	uint8_t *ip = frame + 14;
	uint32_t sum;

	if (len < 34 || frame[12] != 0x08 || frame[13] != 0x00 || ip[8] <= 1)
		return 0;
	ip[8]--;
	/* the TTL is the high byte of its 16-bit word: the word drops by 0x0100 */
	sum = (uint32_t)((ip[10] << 8) | ip[11]) + 0x0100;
	sum = (sum & 0xffff) + (sum >> 16);
	ip[10] = (uint8_t)(sum >> 8);
	ip[11] = (uint8_t)sum;
	memcpy(frame, egress->peer_mac, 6);
	memcpy(frame + 6, egress->own_mac, 6);
	return 1;
}

struct frame_pool {
	uint64_t *addrs;
	uint32_t count;
};

static void forward_batch(struct iface *in, struct iface *out, uint8_t *area,
			  uint32_t frame_size, struct frame_pool *pool)
{
	uint64_t addrs[XSKP_BATCH_MAX], tx_addrs[XSKP_BATCH_MAX];
	uint32_t lens[XSKP_BATCH_MAX], tx_lens[XSKP_BATCH_MAX];
	uint32_t n, i, ntx = 0, sent;

	n = xskp_rx(in->sock, addrs, lens, XSKP_BATCH_MAX);
	in->rx += n;
	for (i = 0; i < n; i++) {
		if (rewrite_frame(area + addrs[i], lens[i], out)) {
			tx_addrs[ntx] = addrs[i];
			tx_lens[ntx++] = lens[i];
		} else {
			pool->addrs[pool->count++] = addrs[i] & ~(uint64_t)(frame_size - 1);
			in->dropped++;
		}
	}
	sent = ntx ? xskp_tx(out->sock, tx_addrs, tx_lens, ntx) : 0;
	out->tx += sent;
	for (i = sent; i < ntx; i++) {
		pool->addrs[pool->count++] = tx_addrs[i] & ~(uint64_t)(frame_size - 1);
		out->tx_full++;
	}
	if (sent)
		out->kick_pending = 1;
	if (out->kick_pending && xskp_kick_tx(out->sock) != -EAGAIN)
		out->kick_pending = 0;
}

static void recycle(struct iface *ifc, uint32_t frame_size, struct frame_pool *pool)
{
	uint64_t addrs[XSKP_BATCH_MAX];
	uint32_t n, i, want;

	n = xskp_complete(ifc->sock, addrs, XSKP_BATCH_MAX);
	ifc->completed += n;
	for (i = 0; i < n; i++)
		pool->addrs[pool->count++] = addrs[i] & ~(uint64_t)(frame_size - 1);
	want = xskp_fill_free(ifc->sock, pool->count < XSKP_BATCH_MAX ? pool->count : XSKP_BATCH_MAX);
	if (want) {
		n = xskp_fill(ifc->sock, pool->addrs + pool->count - want, want);
		pool->count -= n;
	}
	xskp_wakeup_rx(ifc->sock);
}

static int parse_prefix(const char *text, struct steer_v4_lpm_key *key, uint32_t *roles)
{
	char buf[64], *slash, *at;

	snprintf(buf, sizeof(buf), "%s", text);
	*roles = STEER_ROLE_TRANSPORT | STEER_ROLE_GATEWAY;
	at = strchr(buf, '@');
	if (at) {
		*at++ = '\0';
		if (!strcmp(at, "transport"))
			*roles = STEER_ROLE_TRANSPORT;
		else if (!strcmp(at, "gateway"))
			*roles = STEER_ROLE_GATEWAY;
		else
			return -EINVAL;
	}
	slash = strchr(buf, '/');
	key->prefixlen = 32;
	if (slash) {
		*slash++ = '\0';
		key->prefixlen = (uint32_t)atoi(slash);
	}
	if (key->prefixlen > 32 || inet_pton(AF_INET, buf, &key->addr) != 1)
		return -EINVAL;
	return 0;
}

static void usage_exit(const char *why)
{
	fprintf(stderr, "xskfwd_c: %s\nusage: xskfwd_c --transport IF --gateway IF "
		"--transport-peer-mac MAC --gateway-peer-mac MAC [--queue N] "
		"[--steer-prefix CIDR[@transport|@gateway] ...] [--bpf-obj PATH] [--skb-mode] "
		"[--poll]\n", why);
	exit(2);
}

static int fail(const char *what, int err)
{
	fprintf(stderr, "xskfwd_c: %s: %s\n", what, strerror(-err));
	return 1;
}

int main(int argc, char **argv)
{
	struct iface ifaces[2] = {
		{.role = STEER_ROLE_TRANSPORT}, {.role = STEER_ROLE_GATEWAY},
	};
	const char *prefixes[MAX_PREFIXES], *bpf_obj = getenv("XSKPROXY_BPF_OBJ");
	uint32_t n_prefixes = 0, queue = 0, attach_mode = XSKP_ATTACH_AUTO, mode, i;
	char default_obj[4096], what[4400];
	struct frame_pool pool;
	uint64_t umem = 0, steer = 0;
	uint32_t adopted;
	int32_t pin_err;
	int use_poll = 0, err = 0, rc = 1, have_mac[2] = {0, 0};
	uint8_t *area;

	for (i = 1; i < (uint32_t)argc; i++) {
		const char *arg = argv[i], *val = i + 1 < (uint32_t)argc ? argv[i + 1] : NULL;

		if (!strcmp(arg, "--skb-mode")) {
			attach_mode = XSKP_ATTACH_SKB;
			continue;
		}
		if (!strcmp(arg, "--poll")) {
			use_poll = 1;
			continue;
		}
		if (!val)
			usage_exit("missing value");
		i++;
		if (!strcmp(arg, "--transport"))
			ifaces[0].name = val;
		else if (!strcmp(arg, "--gateway"))
			ifaces[1].name = val;
		else if (!strcmp(arg, "--transport-peer-mac"))
			have_mac[0] = !parse_mac(val, ifaces[0].peer_mac);
		else if (!strcmp(arg, "--gateway-peer-mac"))
			have_mac[1] = !parse_mac(val, ifaces[1].peer_mac);
		else if (!strcmp(arg, "--queue"))
			queue = (uint32_t)atoi(val);
		else if (!strcmp(arg, "--steer-prefix") && n_prefixes < MAX_PREFIXES)
			prefixes[n_prefixes++] = val;
		else if (!strcmp(arg, "--bpf-obj"))
			bpf_obj = val;
		else
			usage_exit(arg);
	}
	if (!ifaces[0].name || !ifaces[1].name || !have_mac[0] || !have_mac[1])
		usage_exit("--transport, --gateway and both peer MACs are required");
	if (!bpf_obj) {
		char self[4096];
		ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);

		self[len > 0 ? len : 0] = '\0';
		snprintf(default_obj, sizeof(default_obj), "%s/xskproxy_steer.bpf.o", dirname(self));
		bpf_obj = default_obj;
	}
	for (i = 0; i < 2; i++) {
		ifaces[i].ifindex = if_nametoindex(ifaces[i].name);
		if (!ifaces[i].ifindex) {
			snprintf(what, sizeof(what), "interface %s", ifaces[i].name);
			return fail(what, -ENODEV);
		}
		err = read_own_mac(ifaces[i].name, ifaces[i].own_mac);
		if (err)
			return fail("reading interface MAC", err);
	}
	signal(SIGINT, request_stop);
	signal(SIGTERM, request_stop);

	err = xskp_umem_create(&umem, XSKP_UMEM_FRAMES, XSKP_FRAME_SIZE, XSKP_FRAME_HEADROOM,
			       XSKP_RING_SIZE);
	if (err)
		return fail("creating UMEM", err);
	area = (uint8_t *)(uintptr_t)xskp_umem_area(umem);
	pool.addrs = calloc(XSKP_UMEM_FRAMES, sizeof(uint64_t));
	if (!pool.addrs) {
		xskp_umem_destroy(umem);
		return fail("allocating the frame pool", -ENOMEM);
	}
	for (pool.count = 0; pool.count < XSKP_UMEM_FRAMES; pool.count++)
		pool.addrs[pool.count] = (uint64_t)pool.count * XSKP_FRAME_SIZE;

	err = xskp_steer_open(&steer, bpf_obj, 1024, NULL, 0, &adopted, &pin_err);
	if (err) {
		snprintf(what, sizeof(what), "loading %s", bpf_obj);
		fail(what, err);
		goto out;
	}
	for (i = 0; i < 2; i++) {
		struct steer_iface value = {.roles = ifaces[i].role, .xsk_base = i * STEER_MAX_QUEUES};

		err = xskp_socket_create(&ifaces[i].sock, umem, ifaces[i].name, queue,
					 XSKP_BIND_AUTO, 1, XSKP_RING_SIZE);
		if (err) {
			snprintf(what, sizeof(what), "binding AF_XDP socket on %s queue %u",
				 ifaces[i].name, queue);
			fail(what, err);
			goto out;
		}
		err = xskp_steer_set_socket(steer, value.xsk_base + queue, ifaces[i].sock);
		if (!err)
			err = xskp_steer_map_update(steer, STEER_MAP_IFACES, &ifaces[i].ifindex, &value);
		if (!err)
			err = xskp_steer_attach(steer, ifaces[i].ifindex, attach_mode, &mode);
		if (err) {
			snprintf(what, sizeof(what), "attaching the steering program to %s",
				 ifaces[i].name);
			fail(what, err);
			goto out;
		}
		fprintf(stderr, "xskfwd_c: %s attached in %s mode, socket in %s mode\n",
			ifaces[i].name, mode == XSKP_ATTACH_SKB ? "skb" : "native",
			xskp_socket_zerocopy(ifaces[i].sock) == 1 ? "zero-copy" : "copy");
	}
	for (i = 0; i < n_prefixes; i++) {
		struct steer_v4_lpm_key key;
		uint32_t roles;

		if (parse_prefix(prefixes[i], &key, &roles)) {
			fprintf(stderr, "xskfwd_c: --steer-prefix: '%s' is not CIDR[@transport|@gateway]\n",
				prefixes[i]);
			goto out;
		}
		err = xskp_steer_map_update(steer, STEER_MAP_V4_PREFIXES, &key, &roles);
		if (err) {
			fail("writing a steered prefix", err);
			goto out;
		}
	}
	for (i = 0; i < 2; i++)
		recycle(&ifaces[i], XSKP_FRAME_SIZE, &pool);

	while (!stop_requested) {
		if (use_poll)
			xskp_poll_rx(ifaces[0].sock, ifaces[1].sock, -1, 100);
		forward_batch(&ifaces[0], &ifaces[1], area, XSKP_FRAME_SIZE, &pool);
		forward_batch(&ifaces[1], &ifaces[0], area, XSKP_FRAME_SIZE, &pool);
		recycle(&ifaces[0], XSKP_FRAME_SIZE, &pool);
		recycle(&ifaces[1], XSKP_FRAME_SIZE, &pool);
	}
	rc = 0;
	for (i = 0; i < 2; i++)
		fprintf(stdout, "%s rx=%llu tx=%llu dropped=%llu tx_ring_full=%llu\n", ifaces[i].name,
			(unsigned long long)ifaces[i].rx, (unsigned long long)ifaces[i].tx,
			(unsigned long long)ifaces[i].dropped, (unsigned long long)ifaces[i].tx_full);
out:
	xskp_steer_close(steer);
	for (i = 0; i < 2; i++)
		xskp_socket_destroy(ifaces[i].sock);
	if (umem)
		xskp_umem_destroy(umem);
	free(pool.addrs);
	return rc;
}
