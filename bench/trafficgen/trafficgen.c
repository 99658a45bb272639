// SPDX-License-Identifier: GPL-2.0
/* xskp-trafficgen: the benchmark's packet generator and sink, run inside a lab namespace.
 *   generate: BPF_PROG_RUN with live frames (BPF_F_TEST_XDP_LIVE_FRAMES) of an XDP program that writes
 *             a full UDP/IPv4 header per frame and returns XDP_TX on --dev, pinned to --cpu;
 *   sink:     attaches a counting XDP_DROP program to --dev until SIGINT/SIGTERM or --duration;
 *   tc-redirect: attaches the tc clsact ingress program of path (e) to --dev (MAC rewrite, TTL,
 *             redirect to --out for --prefix) until SIGINT/SIGTERM, then removes it.
 * Prints one JSON line with what it did. Never touches an interface it was not given. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

/* Must match struct gen_config in trafficgen.bpf.c. */
struct gen_config {
	uint8_t dst_mac[6];
	uint8_t src_mac[6];
	uint32_t src_ip_first;
	uint32_t src_ip_count;
	uint32_t dst_ip;
	uint16_t dst_port;
	uint16_t src_port_first;
	uint32_t src_port_count;
	uint32_t flows;
	uint32_t new_flows;
	uint32_t frame_len;
};

/* Must match struct redirect_config in trafficgen.bpf.c. */
struct redirect_config {
	uint8_t dst_mac[6];
	uint8_t src_mac[6];
	uint32_t dst_prefix;
	uint32_t dst_prefix_len;
	uint32_t out_ifindex;
};

struct options {
	const char *mode;
	const char *dev;
	const char *obj;
	struct gen_config cfg;
	double duration;
	int cpu;
	unsigned batch;
	int skb_mode;
	int have_dst_mac, have_src_mac, have_dst_ip;
	const char *out_dev;
	uint32_t prefix, prefix_len;
	int have_prefix;
};

static volatile sig_atomic_t stop_requested;

static void request_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_mac(const char *text, uint8_t mac[6])
{
	unsigned v[6];

	if (sscanf(text, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
		return -EINVAL;
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)v[i];
	return 0;
}

static int parse_ipv4(const char *text, uint32_t *host_order)
{
	struct in_addr addr;

	if (inet_pton(AF_INET, text, &addr) != 1)
		return -EINVAL;
	*host_order = ntohl(addr.s_addr);
	return 0;
}

static int read_dev_mac(const char *dev, uint8_t mac[6])
{
	char path[128], text[32] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/sys/class/net/%s/address", dev);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	if (!fgets(text, sizeof(text), f)) {
		fclose(f);
		return -EIO;
	}
	fclose(f);
	return parse_mac(text, mac);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: xskp-trafficgen generate --dev IF --dst-mac MAC --dst-ip IP [options]\n"
		"       xskp-trafficgen sink --dev IF [--duration S] [--skb-mode]\n"
		"       xskp-trafficgen tc-redirect --dev IF --out IF --prefix CIDR --dst-mac MAC\n"
		"generate options:\n"
		"  --dst-port P (9)  --src-mac MAC (dev's)  --src-ip IP (198.18.0.1)  --src-ips N (1)\n"
		"  --src-port P (1024)  --src-ports N (60000)  --flows N (1; established mode)\n"
		"  --new-flows (every frame a new 5-tuple)  --size BYTES (64, with FCS)\n"
		"  --duration S (5)  --cpu N (0)  --batch N (64)\n"
		"common: --obj PATH (trafficgen.bpf.o next to this binary)\n");
}

static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{"dev", required_argument, 0, 'd'},      {"dst-mac", required_argument, 0, 'M'},
		{"src-mac", required_argument, 0, 'm'},  {"dst-ip", required_argument, 0, 'I'},
		{"src-ip", required_argument, 0, 'i'},   {"src-ips", required_argument, 0, 'n'},
		{"dst-port", required_argument, 0, 'P'}, {"src-port", required_argument, 0, 'p'},
		{"src-ports", required_argument, 0, 'N'}, {"flows", required_argument, 0, 'f'},
		{"new-flows", no_argument, 0, 'F'},      {"size", required_argument, 0, 's'},
		{"duration", required_argument, 0, 't'}, {"cpu", required_argument, 0, 'c'},
		{"batch", required_argument, 0, 'b'},    {"obj", required_argument, 0, 'o'},
		{"skb-mode", no_argument, 0, 'S'},       {"help", no_argument, 0, 'h'},
		{"out", required_argument, 0, 'O'},      {"prefix", required_argument, 0, 'X'},
		{0, 0, 0, 0}};
	int c, index = 0;

	if (argc < 2 || (strcmp(argv[1], "generate") && strcmp(argv[1], "sink") &&
			 strcmp(argv[1], "tc-redirect"))) {
		usage(stderr);
		return -EINVAL;
	}
	o->mode = argv[1];
	o->cfg.src_ip_first = 0xc6120001; /* 198.18.0.1, RFC 2544 benchmark range */
	o->cfg.src_ip_count = 1;
	o->cfg.dst_port = 9;
	o->cfg.src_port_first = 1024;
	o->cfg.src_port_count = 60000;
	o->cfg.flows = 1;
	o->cfg.frame_len = 60;
	o->duration = 5;
	o->batch = 64;
	optind = 2;
	while ((c = getopt_long(argc, argv, "", longopts, &index)) != -1) {
		int err = 0;

		switch (c) {
		case 'd': o->dev = optarg; break;
		case 'M': err = parse_mac(optarg, o->cfg.dst_mac); o->have_dst_mac = 1; break;
		case 'm': err = parse_mac(optarg, o->cfg.src_mac); o->have_src_mac = 1; break;
		case 'I': err = parse_ipv4(optarg, &o->cfg.dst_ip); o->have_dst_ip = 1; break;
		case 'i': err = parse_ipv4(optarg, &o->cfg.src_ip_first); break;
		case 'n': o->cfg.src_ip_count = strtoul(optarg, NULL, 0); break;
		case 'P': o->cfg.dst_port = strtoul(optarg, NULL, 0); break;
		case 'p': o->cfg.src_port_first = strtoul(optarg, NULL, 0); break;
		case 'N': o->cfg.src_port_count = strtoul(optarg, NULL, 0); break;
		case 'f': o->cfg.flows = strtoul(optarg, NULL, 0); break;
		case 'F': o->cfg.new_flows = 1; break;
		case 's': o->cfg.frame_len = strtoul(optarg, NULL, 0) - 4; break;
		case 't': o->duration = strtod(optarg, NULL); break;
		case 'c': o->cpu = atoi(optarg); break;
		case 'b': o->batch = strtoul(optarg, NULL, 0); break;
		case 'o': o->obj = optarg; break;
		case 'S': o->skb_mode = 1; break;
		case 'O': o->out_dev = optarg; break;
		case 'X': {
			char text[64], *slash;

			snprintf(text, sizeof(text), "%s", optarg);
			slash = strchr(text, '/');
			o->prefix_len = slash ? strtoul(slash + 1, NULL, 10) : 32;
			if (slash)
				*slash = 0;
			err = parse_ipv4(text, &o->prefix);
			if (o->prefix_len > 32)
				err = -EINVAL;
			o->have_prefix = 1;
			break;
		}
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -EINVAL;
		}
		if (err) {
			fprintf(stderr, "xskp-trafficgen: --%s: cannot parse '%s'\n",
				longopts[index].name, optarg);
			return err;
		}
	}
	if (!o->dev) {
		fprintf(stderr, "xskp-trafficgen: --dev is required\n");
		return -EINVAL;
	}
	if (!strcmp(o->mode, "generate") && (!o->have_dst_mac || !o->have_dst_ip)) {
		fprintf(stderr, "xskp-trafficgen generate: --dst-mac and --dst-ip are required\n");
		return -EINVAL;
	}
	if (!strcmp(o->mode, "tc-redirect") && (!o->out_dev || !o->have_prefix || !o->have_dst_mac)) {
		fprintf(stderr, "xskp-trafficgen tc-redirect: --out, --prefix and --dst-mac are required\n");
		return -EINVAL;
	}
	if (o->cfg.frame_len < 42 || o->cfg.frame_len > 1514) {
		fprintf(stderr, "xskp-trafficgen: --size %u is outside 46..1518\n", o->cfg.frame_len + 4);
		return -EINVAL;
	}
	return 0;
}

static struct bpf_object *open_and_load(const char *argv0, const char *obj_path)
{
	char default_path[4200];
	struct bpf_object *obj;
	int err;

	if (!obj_path) {
		char exe[4096];
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		char *slash;

		if (n < 0)
			snprintf(exe, sizeof(exe), "%s", argv0);
		else
			exe[n] = 0;
		slash = strrchr(exe, '/');
		if (slash)
			*slash = 0;
		snprintf(default_path, sizeof(default_path), "%s/trafficgen.bpf.o", slash ? exe : ".");
		obj_path = default_path;
	}
	obj = bpf_object__open_file(obj_path, NULL);
	if (!obj) {
		fprintf(stderr, "xskp-trafficgen: opening %s: %s\n", obj_path, strerror(errno));
		return NULL;
	}
	err = bpf_object__load(obj);
	if (err) {
		fprintf(stderr, "xskp-trafficgen: loading %s: %s (need root / CAP_BPF)\n", obj_path, strerror(-err));
		bpf_object__close(obj);
		return NULL;
	}
	return obj;
}

static uint64_t read_counter(struct bpf_object *obj, uint32_t key)
{
	int fd = bpf_object__find_map_fd_by_name(obj, "gen_counters");
	int ncpus = libbpf_num_possible_cpus();
	uint64_t values[ncpus > 0 ? ncpus : 1], total = 0;

	if (fd < 0 || ncpus <= 0 || bpf_map_lookup_elem(fd, &key, values))
		return 0;
	for (int i = 0; i < ncpus; i++)
		total += values[i];
	return total;
}

static int generate(const struct options *o, struct bpf_object *obj, int ifindex)
{
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "xdp_generate");
	int cfg_fd = bpf_object__find_map_fd_by_name(obj, "gen_config");
	struct gen_config cfg = o->cfg;
	uint8_t frame[1514] = {0};
	struct xdp_md ctx_in = {.data_end = cfg.frame_len, .ingress_ifindex = ifindex};
	uint32_t zero = 0;
	uint64_t calls = 0;
	uint32_t repeat = 1 << 16;
	double start, elapsed;
	cpu_set_t cpus;
	int err;

	if (!o->have_src_mac && (err = read_dev_mac(o->dev, cfg.src_mac))) {
		fprintf(stderr, "xskp-trafficgen: reading the MAC of %s: %s\n", o->dev, strerror(-err));
		return err;
	}
	if (!prog || cfg_fd < 0 || bpf_map_update_elem(cfg_fd, &zero, &cfg, BPF_ANY)) {
		fprintf(stderr, "xskp-trafficgen: configuring the generator program: %s\n", strerror(errno));
		return -EINVAL;
	}
	CPU_ZERO(&cpus);
	CPU_SET(o->cpu, &cpus);
	if (sched_setaffinity(0, sizeof(cpus), &cpus)) {
		fprintf(stderr, "xskp-trafficgen: pinning to cpu %d: %s\n", o->cpu, strerror(errno));
		return -errno;
	}
	/* Each BPF_PROG_RUN sets up and destroys a page pool, which can wait for an RCU grace period
	 * (milliseconds): the first call is short to measure the rate, later calls are sized to fill the
	 * remaining duration so that the set-up cost is paid a few times, not every 64 K frames. */
	start = now_seconds();
	do {
		LIBBPF_OPTS(bpf_test_run_opts, run,
			    .data_in = frame, .data_size_in = cfg.frame_len,
			    .ctx_in = &ctx_in, .ctx_size_in = sizeof(ctx_in),
			    .repeat = repeat, .flags = BPF_F_TEST_XDP_LIVE_FRAMES,
			    .batch_size = o->batch);
		err = bpf_prog_test_run_opts(bpf_program__fd(prog), &run);
		if (err && errno != EINTR) {
			fprintf(stderr, "xskp-trafficgen: BPF_PROG_RUN live frames on %s: %s\n", o->dev,
				strerror(errno));
			return -errno;
		}
		calls++;
		elapsed = now_seconds() - start;
		double rate = read_counter(obj, 0) / (elapsed > 1e-6 ? elapsed : 1e-6);
		double wanted = rate * (o->duration - elapsed);
		repeat = wanted < 4096 ? 4096 : wanted > (1u << 30) ? (1u << 30) : (uint32_t)wanted;
	} while (!stop_requested && elapsed < o->duration);
	uint64_t generated = read_counter(obj, 0);
	printf("{\"mode\": \"generate\", \"dev\": \"%s\", \"generated\": %llu, \"seconds\": %.6f, "
	       "\"pps\": %.0f, \"calls\": %llu, \"new_flows\": %u, \"flows\": %u, \"frame_len\": %u}\n",
	       o->dev, (unsigned long long)generated, elapsed, generated / elapsed,
	       (unsigned long long)calls, cfg.new_flows, cfg.flows, cfg.frame_len + 4);
	return 0;
}

static int sink(const struct options *o, struct bpf_object *obj, int ifindex)
{
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "xdp_sink");
	__u32 flags = o->skb_mode ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE;
	double start = now_seconds(), elapsed;
	int err;

	flags |= XDP_FLAGS_UPDATE_IF_NOEXIST;
	err = bpf_xdp_attach(ifindex, bpf_program__fd(prog), flags, NULL);
	if (err) {
		fprintf(stderr, "xskp-trafficgen sink: attaching XDP to %s: %s\n", o->dev, strerror(-err));
		return err;
	}
	fprintf(stderr, "xskp-trafficgen sink: attached to %s\n", o->dev);
	while (!stop_requested && (o->duration <= 0 || now_seconds() - start < o->duration))
		usleep(20000);
	elapsed = now_seconds() - start;
	bpf_xdp_detach(ifindex, flags & ~XDP_FLAGS_UPDATE_IF_NOEXIST, NULL);
	printf("{\"mode\": \"sink\", \"dev\": \"%s\", \"dropped\": %llu, \"seconds\": %.6f}\n", o->dev,
	       (unsigned long long)read_counter(obj, 1), elapsed);
	return 0;
}

static int tc_redirect(const struct options *o, struct bpf_object *obj, int ifindex)
{
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "tc_redirect");
	int cfg_fd = bpf_object__find_map_fd_by_name(obj, "redirect_config");
	struct redirect_config cfg = {0};
	uint32_t zero = 0;
	int err;
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, attach, .handle = 1, .priority = 1);

	memcpy(cfg.dst_mac, o->cfg.dst_mac, 6);
	cfg.out_ifindex = if_nametoindex(o->out_dev);
	cfg.dst_prefix_len = o->prefix_len;
	cfg.dst_prefix = o->prefix_len ? o->prefix & (~0u << (32 - o->prefix_len)) : 0;
	if (!cfg.out_ifindex) {
		fprintf(stderr, "xskp-trafficgen tc-redirect: no interface %s in this namespace\n", o->out_dev);
		return -ENODEV;
	}
	if ((err = read_dev_mac(o->out_dev, cfg.src_mac))) {
		fprintf(stderr, "xskp-trafficgen tc-redirect: reading the MAC of %s: %s\n", o->out_dev,
			strerror(-err));
		return err;
	}
	if (!prog || cfg_fd < 0 || bpf_map_update_elem(cfg_fd, &zero, &cfg, BPF_ANY)) {
		fprintf(stderr, "xskp-trafficgen tc-redirect: configuring the program: %s\n", strerror(errno));
		return -EINVAL;
	}
	err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST) {
		fprintf(stderr, "xskp-trafficgen tc-redirect: adding clsact on %s: %s\n", o->dev, strerror(-err));
		return err;
	}
	attach.prog_fd = bpf_program__fd(prog);
	err = bpf_tc_attach(&hook, &attach);
	if (err) {
		fprintf(stderr, "xskp-trafficgen tc-redirect: attaching to %s ingress: %s\n", o->dev, strerror(-err));
		hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS;
		bpf_tc_hook_destroy(&hook);
		return err;
	}
	fprintf(stderr, "xskp-trafficgen tc-redirect: attached to %s ingress\n", o->dev);
	while (!stop_requested)
		usleep(20000);
	attach.prog_fd = attach.prog_id = attach.flags = 0;
	bpf_tc_detach(&hook, &attach);
	hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS;
	bpf_tc_hook_destroy(&hook);
	printf("{\"mode\": \"tc-redirect\", \"dev\": \"%s\", \"out\": \"%s\"}\n", o->dev, o->out_dev);
	return 0;
}

int main(int argc, char **argv)
{
	struct options o = {0};
	struct bpf_object *obj;
	struct sigaction sa = {.sa_handler = request_stop};
	int ifindex, err;

	if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		usage(stdout);
		return 0;
	}
	if (parse_options(argc, argv, &o))
		return 2;
	ifindex = if_nametoindex(o.dev);
	if (!ifindex) {
		fprintf(stderr, "xskp-trafficgen: no interface %s in this network namespace\n", o.dev);
		return 1;
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	libbpf_set_print(NULL);
	obj = open_and_load(argv[0], o.obj);
	if (!obj)
		return 1;
	if (!strcmp(o.mode, "generate"))
		err = generate(&o, obj, ifindex);
	else if (!strcmp(o.mode, "sink"))
		err = sink(&o, obj, ifindex);
	else
		err = tc_redirect(&o, obj, ifindex);
	bpf_object__close(obj);
	return err ? 1 : 0;
}
