/* xskp_io.h — the C functions of pyxdp (AF_XDP UMEM and sockets, ring batches, the steering
 * program's load/attach/maps), also linked into the C reference forwarder xskfwd_c.
 *
 * This file is fed to cffi's cdef by native/pyxdp_build.py after the lines up to the marker
 * below are dropped: keep the declarations cdef-compatible (no macros, no includes after it).
 * Conventions: handles are struct pointers carried as uint64_t (numba passes neither void *
 * nor uintptr_t); functions that can fail return 0 or a count on success and -errno on failure;
 * hot-path functions (marked "numba") never block, never allocate, never fail loudly.
 */
#ifndef XSKP_IO_H
#define XSKP_IO_H
#include <stdint.h>
#include "xskproxy_abi.h"
/* ---- cdef starts here ---- */

/* libbpf's and libxdp's own messages on stderr: off (0, the default here: our errors carry the
 * errno and what was attempted) or on (1, for debugging). */
void xskp_set_library_logging(uint32_t verbose);

/* UMEM: frame_count chunks of frame_size bytes (page-aligned anonymous mapping). */
int xskp_umem_create(uint64_t *umem_out, uint32_t frame_count, uint32_t frame_size,
		     uint32_t headroom, uint32_t ring_size);
uint64_t xskp_umem_area(uint64_t umem);       /* address of the first frame */
uint64_t xskp_umem_size(uint64_t umem);       /* bytes: frame_count * frame_size */
int xskp_umem_destroy(uint64_t umem);         /* -EBUSY while sockets still use it */

/* An AF_XDP socket on (ifname, queue) sharing umem; each socket has its own fill and completion
 * rings. mode: enum xskp_bind_mode. The program is never loaded here (INHIBIT_PROG_LOAD): bind
 * the socket into the steering program with xskp_steer_set_socket. */
int xskp_socket_create(uint64_t *sock_out, uint64_t umem, const char *ifname, uint32_t queue,
		       uint32_t mode, uint32_t need_wakeup, uint32_t ring_size);
int xskp_socket_fd(uint64_t sock);
int xskp_socket_zerocopy(uint64_t sock);      /* 1 zero-copy, 0 copy, -errno */
int xskp_socket_statistics(uint64_t sock, struct xskp_socket_stats *out);
void xskp_socket_destroy(uint64_t sock);

/* Hot path (numba). addrs are UMEM offsets; rx returns the offset of the frame's first byte,
 * fill takes chunk offsets, tx takes any offset inside a chunk (e.g. moved into the headroom),
 * complete returns what tx was given. */
uint32_t xskp_fill(uint64_t sock, const uint64_t *addrs, uint32_t n);
uint32_t xskp_fill_free(uint64_t sock, uint32_t want);   /* free fill slots, at most want */
uint32_t xskp_rx(uint64_t sock, uint64_t *addrs, uint32_t *lens, uint32_t max);
uint32_t xskp_tx(uint64_t sock, const uint64_t *addrs, const uint32_t *lens, uint32_t n);
uint32_t xskp_complete(uint64_t sock, uint64_t *addrs, uint32_t max);
/* Frames the kernel can still deliver to the socket: fill entries it holds, at most the free
 * rx slots (upcall admission's credit, struct xskp_upcall_credit). */
uint32_t xskp_rx_room(uint64_t sock);
/* Makes the kernel send what the tx ring holds, if it needs telling: sendto while it answers
 * EAGAIN (copy mode sends a small batch per call), at most XSKP_KICK_MAX_RETRIES times.
 * Returns the number of sendto calls once the kernel took the whole ring (0: no kick was
 * needed), -EAGAIN if it still had not after XSKP_KICK_MAX_RETRIES calls (kick again later),
 * or another -errno. */
int32_t xskp_kick_tx(uint64_t sock);
/* If the fill ring needs a wakeup, a non-blocking recvfrom. 1 woken, 0 not needed, -errno. */
int32_t xskp_wakeup_rx(uint64_t sock);
/* poll() both sockets for rx (a handle may be 0) and wake_fd (an eventfd, or -1) up to
 * timeout_ms; a readable wake_fd is drained. >0 readable, 0, -errno. */
int32_t xskp_poll_rx(uint64_t sock_a, uint64_t sock_b, int32_t wake_fd, int32_t timeout_ms);
uint64_t xskp_now_ns(void);                   /* CLOCK_MONOTONIC */
uint32_t xskp_batch_probe(uint64_t *addrs, uint32_t n);  /* does nothing: times one call */

/* The steering program (native/xskproxy_steer.bpf.c): open + load the object, attach to
 * interfaces (mode: enum xskp_attach_mode, *mode_out: the mode obtained), write its maps
 * (map: enum steer_map). Attaching replaces an xskproxy program another process left attached
 * (killed, or released for a handover) atomically when it sits in the mode asked for (or AUTO);
 * any other program on the interface is refused with -EBUSY. */
int xskp_steer_open(uint64_t *steer_out, const char *obj_path, uint32_t flow_entries,
		    const char *pin_dir, uint32_t adopt_ifindex, uint32_t *adopted_out,
		    int32_t *pin_err_out);
/* flow_entries (a power of two) sizes the fast path's flow table; with adopt_ifindex != 0 the
 * flow table of an xskproxy program attached there (a handover's predecessor) is reused when it
 * has that shape (*adopted_out 1), so offloaded flows keep running across a restart.
 * pin_dir (NULL or "": none), a directory on a bpffs, made 0700 if missing: every program
 * attached is pinned there as <xdp|tc>-<netns inode>-<ifindex>, the steering program's and the
 * fast path's flow table beside it (...-flows), until it is detached; a released handle's pins
 * stay. They let the next agent adopt and replace them with CAP_BPF alone (by kernel id that
 * needs CAP_SYS_ADMIN, still tried for what nobody pinned). *pin_err_out: -errno when pin_dir
 * is unusable (-EMEDIUMTYPE: not a bpffs); the handle then pins nothing. */
/* The fd of a map (enum steer_map), owned by the handle: for mmap of the mmapable arrays. */
int xskp_steer_map_fd(uint64_t steer, uint32_t map);
/* A tc program of the object (program: enum xskp_tc_program; xskp_fast, or xskp_upcall_tx on an
 * upcall pair's kernel end) at clsact ingress of ifindex, at handle XSKP_TC_HANDLE and priority
 * XSKP_TC_PRIORITY. A clsact qdisc is created when missing (*created_qdisc_out 1); a
 * predecessor's program of ours there is replaced in one step; any other filter: -EBUSY. */
int xskp_tc_attach(uint64_t steer, uint32_t ifindex, uint32_t program, uint32_t *created_qdisc_out);
/* Removes our filter (absent: 0); the clsact qdisc too when destroy_qdisc, or when this handle
 * created it. */
int xskp_tc_detach(uint64_t steer, uint32_t ifindex, uint32_t destroy_qdisc);
/* What sits at our tc handle/priority on ifindex: prog id (0: nothing) and name ("" when the
 * kernel does not tell: without CAP_SYS_ADMIN). 0 or -errno. */
int xskp_tc_query(uint32_t ifindex, uint32_t *prog_id, char *name, uint32_t name_size);
/* Removes the xskp_fast of another xskproxy (its pin, or its name by id) from our tc handle on
 * ifindex, with the clsact qdisc when destroy_qdisc. 1 removed, 0 none of ours there, -errno. */
int xskp_tc_remove_stale(uint64_t steer, uint32_t ifindex, uint32_t destroy_qdisc);
/* The kernel ids of the object's four programs (steering, fast path, upcall, upcall tx) and of
 * its maps (indexed by
 * enum steer_map): what an agent added, for checks that a stop removed it all. */
int xskp_steer_object_ids(uint64_t steer, uint32_t *prog_ids, uint32_t *map_ids);
/* 1 if a BPF map (is_map 1) or program (0) with this id still exists, 0 if not, -errno. */
int xskp_bpf_object_exists(uint32_t is_map, uint32_t id);
/* The fast path's heartbeat: a thread of its own (no GIL, no worker loop) that every period_ns
 * sets config->alive_until_ns (the mmapped struct xskp_fast_config at config_addr) to now +
 * liveness_ns, for as long as the process lives; the BPF programs execute offloaded flows only
 * while it is fresh, so a killed agent's flows return to the kernel within liveness_ns. */
int xskp_heartbeat_start(uint64_t *heartbeat_out, uint64_t config_addr, uint64_t period_ns,
			 uint64_t liveness_ns);
void xskp_heartbeat_stop(uint64_t heartbeat);  /* stops beating; the fast path runs out */
/* Runs xskp_fast once on a frame (BPF_PROG_RUN) as if received on ifindex; the frame as it
 * would leave (out, *out_len) and the tc action (*retval_out; a redirect is TC_ACT_REDIRECT). */
int xskp_fast_test_run(uint64_t steer, const void *frame, uint32_t len, uint32_t ifindex,
		       void *out, uint32_t out_size, uint32_t *out_len, uint32_t *retval_out);
/* mode: enum xskp_attach_mode; XSKP_ATTACH_UPCALL attaches xskp_upcall natively (an upcall
 * pair's socket end), the others xskp_steer. *mode_out: the mode obtained. */
int xskp_steer_attach(uint64_t steer, uint32_t ifindex, uint32_t mode, uint32_t *mode_out);
int xskp_steer_detach(uint64_t steer, uint32_t ifindex);
/* Detaches the xskp_steer another xskproxy left on ifindex (its pin, or its name by id),
 * whatever its mode. 1 removed, 0 none of ours there, -errno. */
int xskp_xdp_remove_stale(uint64_t steer, uint32_t ifindex);
int xskp_steer_map_update(uint64_t steer, uint32_t map, const void *key, const void *value);
int xskp_steer_map_delete(uint64_t steer, uint32_t map, const void *key);
int xskp_steer_map_lookup(uint64_t steer, uint32_t map, const void *key, void *value);
int xskp_steer_set_socket(uint64_t steer, uint32_t index, uint64_t sock);
int xskp_steer_clear_socket(uint64_t steer, uint32_t index);
int xskp_steer_counters(uint64_t steer, uint64_t *out, uint32_t n);  /* summed over CPUs */
/* Runs the program once on a frame (BPF_PROG_RUN) as if it arrived on (ifindex, rx_queue), which
 * must exist in the caller's namespace; *action_out: the XDP action. Counters count it. */
int xskp_steer_test_run(uint64_t steer, const void *frame, uint32_t len, uint32_t ifindex,
			uint32_t rx_queue, uint32_t *action_out);
void xskp_steer_close(uint64_t steer);        /* detaches XDP and tc from every interface */
/* Frees the handle and leaves the program attached where it is, with its maps (a handover:
 * the next agent's attach replaces it). */
void xskp_steer_release(uint64_t steer);

/* What is attached to an interface: program id (0: none), enum xskp_attach_mode, and the
 * program's name (name_size bytes, NUL-terminated; "" when the kernel does not tell: without
 * CAP_SYS_ADMIN). 0 or -errno. */
int xskp_xdp_query(uint32_t ifindex, uint32_t *prog_id, uint32_t *mode, char *name,
		   uint32_t name_size);

#endif /* XSKP_IO_H */
