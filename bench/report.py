"""The benchmark report: results as JSON, a Markdown table (ratios to path (b)) and a PNG plot.

Pure formatting of what bench/run.py measured; never measures forwarding itself (only the
numba->cffi call cost, through the function the dataplane exposes for it).
"""
import json
import os


def _k(value):
    if value is None:
        return "-"
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.0f} k"


def _count(value):
    """An event count: exact below 10,000, else k/M."""
    return f"{value:.0f}" if value < 1e4 else _k(value)


def _fmt(value, unit):
    """pps as k/M, Gbit/s with two decimals."""
    if value is None:
        return "-"
    return _k(value) if unit == "pps" else f"{value:.2f}"


def reference_row(results, row):
    """The (b) row a row is compared with: (b) of the same lab (gateway) with the same N, or with the smallest N."""
    b_rows = [r for r in results["rows"] if r["key"] == "b"]
    b_rows = [r for r in b_rows if r.get("gateway", "veth") == row.get("gateway", "veth")] or b_rows
    same = [r for r in b_rows if row["services"] is not None and r["services"] == row["services"]]
    if same:
        return same[0]
    return min(b_rows, key=lambda r: r["services"]) if b_rows else None


def _median(row, workload, metric="rate"):
    cell = row["cells"].get(workload)
    return cell[metric]["median"] if cell and cell.get(metric) else None


def _request_response(workload):
    """True for the request/response workloads (sockperf, wrk, ab), which have their own table."""
    return workload.get("request_response", workload["unit"] not in ("pps", "Gbit/s"))


def _carries(row, workload_key):
    """Whether the row's part of the matrix has the workload (rows written before rows listed theirs: all)."""
    return workload_key in row.get("workloads", [workload_key])


def attach_text(attach):
    """What was attached on the node's transport and gateway while a row ran, e.g. 'XDP skb on tr0, gw0 +
    tc on tr0, gw0'; '' when nothing was (kernel paths)."""
    if not attach:
        return ""
    parts = []
    modes = {}
    for ifname, mode in sorted((attach.get("xdp") or {}).items(), key=lambda item: item[0] != "tr0"):
        modes.setdefault(mode, []).append(ifname)
    parts += [f"XDP {mode} on {', '.join(ifnames)}" for mode, ifnames in modes.items()]
    if attach.get("tc"):
        parts.append(f"tc on {', '.join(attach['tc'])}")
    if attach.get("upcall"):
        parts.append(f"upcall pairs of {', '.join(attach['upcall'])}")
    return " + ".join(parts)


def markdown(results):
    """Markdown: forwarded pps (median [min-max], ratio to (b)), then CPU ns per packet on the path core."""
    meta = results["meta"]
    workloads = [w for w in results["workloads"] if not _request_response(w) and not w.get("pod_to_pod")]
    main_rows = [r for r in results["rows"]
                 if not r.get("pod_to_pod") and any(_carries(r, w["key"]) for w in workloads)]
    lines = [f"Forwarded packets per second at the sink (UDP) or Gbit/s received by iperf3 (TCP), median of "
             f"{meta['runs']} run(s) of {meta['seconds_per_measurement']:g} s [min-max], x ratio to (b) "
             f"(same N, else the smallest N); UDP cells are medians of the clean runs (other processes below "
             f"5% of both cores; `(k/n clean)`), or of all runs marked `(under load)`; generator on CPU "
             f"{meta['generator_cpu']}, path on CPU {meta['path_cpu']} (rx mode {meta.get('rx_mode', 'rps')}); "
             f"kernel {meta['kernel']}, "
             f"load average at start {' '.join(meta['loadavg_at_start'])}"
             f"{' (quick run)' if meta['quick'] else ''}. `attached` = what the path had attached on the node's "
             f"transport and gateway while it ran (XDP mode: native or skb = generic; tc = a tc ingress program); "
             f"rows marked `bridge gateway` ran on the lab whose gw0 is a Linux bridge (TCP bulk only).", ""]
    lines.append("| path | attached | " + " | ".join(f"{w['name']} ({w['unit']})" for w in workloads) + " |")
    lines.append("|---|---|" + "---|" * len(workloads))
    for row in main_rows:
        cells = [attach_text(row.get("attach")) or "-"]
        for w in workloads:
            cell = row["cells"].get(w["key"])
            if not _carries(row, w["key"]):
                cells.append("")
                continue
            if row["unavailable"] or (row["error"] and not cell):
                cells.append(f"n/a: {row['unavailable'] or row['error']}"[:90])
                continue
            if w["key"] in (row.get("unsupported") or {}):
                cells.append(f"not supported: {row['unsupported'][w['key']]}"[:120])
                continue
            if not cell:
                cells.append("-")
                continue
            rate, unit = cell["rate"], w["unit"]
            ref = reference_row(results, row)
            ref_rate = _median(ref, w["key"]) if ref else None
            ratio = f" x{rate['median'] / ref_rate:.2f}" if ref_rate else ""
            text = f"{_fmt(rate['median'], unit)} [{_fmt(rate['min'], unit)}-{_fmt(rate['max'], unit)}]{ratio}"
            if cell.get("under_load"):
                text += " (under load)"
            elif cell.get("clean_runs") is not None and w["unit"] == "pps" and cell["clean_runs"] < cell["runs"]:
                text += f" ({cell['clean_runs']}/{cell['runs']} clean)"
            if cell.get("errors"):
                text += f" ({len(cell['errors'])} failed: {cell['errors'][0]})"[:80]
            cells.append(text)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    udp = [w for w in workloads if w["unit"] == "pps"]
    if not main_rows:
        lines = lines[:1]
    if main_rows and udp:
        lines += ["", "CPU per forwarded packet on the path core (medians): `ns/pkt` = all busy time of the core; "
                  "`own` = the path's own time only (system + softirq on that core + its worker's user time; other "
                  "processes' user time left out, so it holds under load); `1-core` = 1e9/own, the pps the path "
                  "would reach with the whole core; `busy` = core utilisation (user share in brackets: for kernel "
                  "paths that is other processes); `offered` = what the generator sent.", ""]
        lines += udp_cpu_lines(main_rows, udp)
    call = results.get("batch_call") or {}
    tcp = [w for w in workloads if w["unit"] == "Gbit/s"]
    if tcp and main_rows:
        lines += ["", "TCP: path core utilisation, the path core's own CPU time per GB received (ms/GB: system + "
                  "softirq + its worker's user time; includes the Pod's receive processing, which runs where the "
                  "path delivers) and TCP retransmits (medians):", "",
                  "| path | " + " | ".join(f"{w['key']} busy | own ms/GB | retr" for w in tcp) + " |",
                  "|---|" + "---|---|---|" * len(tcp)]
        for row in main_rows:
            cells = []
            for w in tcp:
                cell = row["cells"].get(w["key"])
                util = cell and cell["path_cpu_utilisation"]
                per_gb = cell and cell.get("path_own_ms_per_gb")
                retr = cell and cell["retransmits"]
                cells += [f"{util['median'] * 100:.0f}%" if util else "-",
                          f"{per_gb['median']:.0f}" if per_gb else "-", f"{retr['median']:.0f}" if retr else "-"]
            if any(c != "-" for c in cells):
                lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += request_response_lines(results)
    lines += pod_to_pod_lines(results)
    lines += path_counter_lines(results)
    lines += ["", ("One numba->cffi batch call: " + (f"{call['ns']:.1f} ns" if "ns" in call
               else f"not measured ({call.get('unavailable', 'unknown')})")), ""]
    return "\n".join(lines)


def udp_cpu_lines(rows, udp):
    """The UDP CPU table's header and one line per row carrying a UDP workload."""
    lines = ["| path | " + " | ".join(f"{w['key']} ns/pkt | own | 1-core | busy | offered" for w in udp) + " |",
             "|---|" + "---|---|---|---|---|" * len(udp)]
    for row in rows:
        if not any(_carries(row, w["key"]) for w in udp):
            continue
        cells = []
        for w in udp:
            cell = row["cells"].get(w["key"])
            if not cell:
                cells += ["-", "-", "-", "-", "-"]
                continue
            ns, own = cell["path_ns_per_packet"], cell.get("path_own_ns_per_packet")
            cells += [f"{ns['median']:.0f}" if ns else "-", f"{own['median']:.0f}" if own else "-",
                      _k(1e9 / own["median"]) if own and own["median"] else "-"]
            util, user = cell["path_cpu_utilisation"], cell.get("path_cpu_user_share")
            busy = f"{util['median'] * 100:.0f}%" if util else "-"
            busy += f" ({user['median'] * 100:.0f}%)" if user else ""
            cells += [busy,
                      _k(cell["offered_pps"]["median"])]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def _rate(value):
    return "-" if value is None else f"{value:,.0f}"


def _us(value):
    return "-" if value is None else f"{value:.1f}"


def request_response_lines(results):
    """Request/response through the Service (issue 12): round-trip p50/p99 (sockperf), keep-alive
    requests/s (wrk), new connections/s (ab), medians [min-max] with the ratio to (b); then what the
    path core and the endpoints' core were busy with. Rows that cannot carry them (no Service) are left out."""
    meta = results["meta"]
    rr = {w["tool"]: w for w in results["workloads"] if _request_response(w)}
    rows = [r for r in results["rows"]
            if any(_carries(r, w["key"]) and w["key"] not in (r.get("unsupported") or {}) for w in rr.values())]
    if not rr or not rows:
        return []
    latency, keepalive, new_conns = rr.get("sockperf"), rr.get("wrk"), rr.get("ab")
    columns = []   # (header, workload, metric, format)
    if latency:
        columns += [("round trip p50 (us, lower is better)", latency, "p50_us", _us),
                    ("round trip p99 (us)", latency, "p99_us", _us)]
    if keepalive:
        columns.append(("HTTP keep-alive requests/s (wrk)", keepalive, "rate", _rate))
    if new_conns:
        columns.append(("HTTP new connections/s (ab)", new_conns, "rate", _rate))
    seconds = meta.get("latency_seconds_per_measurement"), meta.get("request_response_seconds_per_measurement")
    lines = ["", f"Request/response through the Service's TCP port (issue 12), median of {meta['runs']} run(s) "
             f"[min-max], x ratio to (b) (same N, else the smallest N): sockperf ping-pong over one connection "
             f"(one message in flight, {seconds[0] or '?'} s with 0.4 s warm-up; full round trips); nginx (one "
             f"worker, a 3-byte body from memory) loaded by wrk (one thread, keep-alive) and by ab (a new "
             f"connection per request), {seconds[1] or '?'} s each; client and server both on CPU "
             f"{meta['generator_cpu']}, the path on CPU {meta['path_cpu']}. (a) aims at the Pod itself, routed "
             f"without netfilter: what the endpoints cost alone, the floor of every path. Targets: p50 <= (b), new "
             f"connections/s >= 2x (b).", "",
             "| path | " + " | ".join(c[0] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        ref = reference_row(results, row)
        cells = []
        for _, w, metric, fmt in columns:
            cell = row["cells"].get(w["key"])
            if row["unavailable"] or (row["error"] and not cell):
                cells.append(f"n/a: {row['unavailable'] or row['error']}"[:90])
                continue
            if w["key"] in (row.get("unsupported") or {}):
                cells.append(f"not supported: {row['unsupported'][w['key']]}"[:120])
                continue
            stat = cell.get(metric) if cell else None
            if not stat:
                cells.append(f"- ({cell['errors'][0]})"[:80] if cell and cell.get("errors") else "-")
                continue
            ref_value = _median(ref, w["key"], metric) if ref else None
            ratio = f" x{stat['median'] / ref_value:.2f}" if ref_value else ""
            text = f"{fmt(stat['median'])} [{fmt(stat['min'])}-{fmt(stat['max'])}]{ratio}"
            if cell.get("under_load"):
                text += " (under load)"
            if cell.get("errors"):
                text += f" ({len(cell['errors'])} with errors: {cell['errors'][0]})"[:90]
            cells.append(text)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Request/response CPU (medians): `path busy` = path core utilisation, `own ns` = the path core's "
              "own time (system + softirq + its worker's user time) per round trip / request / connection, which "
              "includes the endpoints' receive processing the path delivers on that core; `CPU "
              f"{meta['generator_cpu']} busy` = the core of client and server.", ""]
    ordered = [w for w in (latency, keepalive, new_conns) if w]
    lines.append("| path | " + " | ".join(f"{w['tool']} path busy | own ns | CPU {meta['generator_cpu']} busy"
                                         for w in ordered) + " |")
    lines.append("|---|" + "---|---|---|" * len(ordered))
    for row in rows:
        cells = []
        for w in ordered:
            cell = row["cells"].get(w["key"])
            util = cell and cell.get("path_cpu_utilisation")
            own = cell and cell.get("path_own_ns_per_packet")
            gen = cell and cell.get("generator_cpu_utilisation")
            cells += [f"{util['median'] * 100:.0f}%" if util else "-", f"{own['median']:,.0f}" if own else "-",
                      f"{gen['median'] * 100:.0f}%" if gen else "-"]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


# the cross-node Pod-to-Pod rows (issue 12, must-show 4): kernel routing + netfilter, and xskproxy's bypass
POD_TO_POD_KERNEL, POD_TO_POD_BYPASS = "h", "i"


def pod_to_pod_comparison(results):
    """Per lab (gateway) and Pod-to-Pod workload: kernel (h) and bypass (i) medians of Gbit/s and of the path
    core's CPU per GB (all busy time, own time), and the ratios bypass / kernel. Goes to latest.json."""
    out = []
    for gateway in results["meta"].get("gateways", ["veth"]):
        rows = {r["key"]: r for r in results["rows"] if r.get("pod_to_pod") and r.get("gateway", "veth") == gateway}
        kernel, bypass = rows.get(POD_TO_POD_KERNEL), rows.get(POD_TO_POD_BYPASS)
        if not kernel and not bypass:
            continue
        for w in [w for w in results["workloads"] if w.get("pod_to_pod")]:
            entry = {"gateway": gateway, "workload": w["key"], "name": w["name"]}
            for side, row in (("kernel", kernel), ("bypass", bypass)):
                for metric in ("gbit_s", "path_ms_per_gb", "path_own_ms_per_gb", "path_cpu_utilisation"):
                    entry[f"{side}_{metric}"] = _median(row, w["key"], metric) if row else None
            for metric in ("gbit_s", "path_ms_per_gb", "path_own_ms_per_gb"):
                k, b = entry[f"kernel_{metric}"], entry[f"bypass_{metric}"]
                entry[f"ratio_{metric}"] = b / k if k and b is not None else None
            out.append(entry)
    return out


def _median_counters(cell, names):
    """'NAME=n ...' of the medians over a cell's samples of those counters any sample has."""
    import statistics
    samples = [s for s in cell["samples"] if s.get("path_counters") is not None]
    return " ".join(f"{n}={_count(statistics.median(s['path_counters'].get(n, 0) for s in samples))}"
                    for n in names if any(n in s["path_counters"] for s in samples))


def pod_to_pod_lines(results):
    """The must-show-4 table: throughput and path-core CPU per GB, kernel vs bypass, ratios."""
    rows = [r for r in results["rows"] if r.get("pod_to_pod")]
    if not rows:
        return []
    meta = results["meta"]
    lines = ["", f"Cross-node Pod-to-Pod TCP (issue 12, must-show 4; the TCManager design promised ~20% more "
             f"throughput through the bypass): a Pod of another node (the client namespace, 10.244.1.2, routed "
             f"via it) to the Pod's own address, iperf3 on CPU {meta['generator_cpu']} with the Pods' default "
             f"offloads; (h) the node routes with its kube-proxy/Antrea iptables rules and conntrack, (i) the same "
             f"rules loaded and xskproxy's tc fast path routing the Pod CIDRs past them. Median of {meta['runs']} "
             f"run(s) [min-max]; `ms/GB` = the path core's busy time per GB received (`own`: system + softirq + "
             f"the agent's user time; both include the Pod's receive processing, alike for both rows).", "",
             "| path | attached | workload | Gbit/s | path busy | ms/GB | own ms/GB | counters |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for w in [w for w in results["workloads"] if w.get("pod_to_pod")]:
            cell = row["cells"].get(w["key"])
            if row["unavailable"] or (row["error"] and not cell):
                lines.append(f"| {row['label']} | - | {w['key']} | "
                             + f"n/a: {row['unavailable'] or row['error']}"[:120] + " | | | | |")
                continue
            if not cell:
                continue
            rate = cell["rate"]
            util, per_gb, own = (cell.get(k) for k in ("path_cpu_utilisation", "path_ms_per_gb", "path_own_ms_per_gb"))
            text = f"{rate['median']:.2f} [{rate['min']:.2f}-{rate['max']:.2f}]" if rate else "-"
            if cell.get("errors"):
                text += f" ({len(cell['errors'])} failed: {cell['errors'][0]})"[:80]
            cells = [row["label"], attach_text(row.get("attach")) or "-", w["key"], text,
                     f"{util['median'] * 100:.0f}%" if util else "-",
                     f"{per_gb['median']:.0f}" if per_gb else "-", f"{own['median']:.0f}" if own else "-",
                     _median_counters(cell, ("FAST_BYPASS", "FAST_PASS_NO_NEIGHBOUR")) or "-"]
            lines.append("| " + " | ".join(cells) + " |")
    comparison = results.get("pod_to_pod") or pod_to_pod_comparison(results)
    if comparison:
        lines += ["", "Bypass / kernel (ratio of medians; throughput above 1 and CPU per GB below 1 favour the "
                  "bypass):", "",
                  "| lab | workload | Gbit/s (i)/(h) | ms/GB (i)/(h) | own ms/GB (i)/(h) |", "|---|---|---|---|---|"]
        for entry in comparison:
            cells = [f"x{entry[f'ratio_{m}']:.2f}" if entry[f"ratio_{m}"] is not None else "-"
                     for m in ("gbit_s", "path_ms_per_gb", "path_own_ms_per_gb")]
            lines.append(f"| {entry['gateway']} gateway | {entry['workload']} | " + " | ".join(cells) + " |")
    return lines


# pipeline and fast path counters shown per cell (the rest of them are in latest.json); every drop is shown
SHOWN_COUNTERS = ("XSKP_CNT_TX_GATEWAY", "XSKP_CNT_TX_TRANSPORT", "XSKP_CNT_CT_HIT", "XSKP_CNT_CT_CREATED",
                  "XSKP_CNT_DNAT", "XSKP_CNT_CSUM_COMPLETED", "XSKP_CNT_CT_EVICTED", "FAST_FLOW", "FAST_BYPASS",
                  "FAST_PASS_NO_NEIGHBOUR", "STEER_PASS_FAST_BYPASS", "STEER_REDIRECT_PREFIX",
                  "STEER_REDIRECT_FAILED", "STEER_PASS_TOO_BIG")
SHOWN_COUNTER_PREFIXES = ("XSKP_DROP_", "STEER_DROP_", "FAST_DROP_")


def path_counter_lines(results):
    """Per row keeping its own counters (the agent's pipeline): what moved during each measurement
    (medians over runs), next to what the sink counted, so that one sees the traffic was translated."""
    rows = [r for r in results["rows"]
            if any(s.get("path_counters") is not None for c in r["cells"].values() for s in c["samples"])]
    if not rows:
        return []
    import statistics
    lines = ["", "Path counters: the agent's pipeline and kernel fast path (FAST_*) counters that moved during each measurement (stats.json "
             "deltas, medians over runs; `forwarded` = packets at the sink, bytes received for iperf3, or round "
             "trips / requests / connections completed for the request/response workloads):", "",
             "| path | workload | forwarded | counters |", "|---|---|---|---|"]
    for row in rows:
        for w in results["workloads"]:
            cell = row["cells"].get(w["key"])
            samples = [s for s in (cell["samples"] if cell else []) if s.get("path_counters") is not None]
            if not samples:
                continue
            names = sorted({n for s in samples for n in s["path_counters"]
                            if n in SHOWN_COUNTERS or n.startswith(SHOWN_COUNTER_PREFIXES)})
            text = " ".join(f"{n.removeprefix('XSKP_')}="
                            f"{_count(statistics.median(s['path_counters'].get(n, 0) for s in samples))}" for n in names)
            forwarded = statistics.median(s["forwarded"] for s in samples)
            lines.append(f"| {row['label']} | {w['key']} | {_count(forwarded)} | {text or '-'} |")
    return lines


# per unit of a workload: (divisor, y axis label) of its plot panel
PLOT_UNITS = {"pps": (1e3, "forwarded kpps"), "Gbit/s": (1.0, "Gbit/s received"),
              "us": (1.0, "round trip p50 (us), lower is better"), "req/s": (1e3, "k requests/s (keep-alive)"),
              "conn/s": (1e3, "k new connections/s")}


def plot(results, path):
    """Grouped bars per workload, one panel per unit (pps, Gbit/s, and the request/response figures),
    whiskers min-max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["rows"] if r["cells"]]
    panels = [(unit, [w for w in results["workloads"] if w["unit"] == unit]) for unit in PLOT_UNITS]
    panels = [(unit, ws) for unit, ws in panels if ws]
    ncols = min(3, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 5.5 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    width = 0.8 / max(1, len(rows))
    for ax, (unit, workloads) in zip(axes.flat, panels):
        scale, ylabel = PLOT_UNITS[unit]
        for i, row in enumerate(rows):
            xs, ys, lo, hi = [], [], [], []
            for j, w in enumerate(workloads):
                cell = row["cells"].get(w["key"])
                if not cell or not cell.get("rate"):
                    continue
                r = cell["rate"]
                xs.append(j + (i - (len(rows) - 1) / 2) * width)
                ys.append(r["median"] / scale)
                lo.append((r["median"] - r["min"]) / scale)
                hi.append((r["max"] - r["median"]) / scale)
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=row["label"], color=f"C{i % 10}")
        ax.set_xticks(range(len(workloads)), [w["name"] for w in workloads], rotation=15, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"xskproxy bench {results['meta']['started']}, kernel {results['meta']['kernel']} "
                 f"(median, min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results, out_dir):
    """latest.json, latest.md and latest.png in out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"latest.{ext}") for ext in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(paths["md"], "w") as f:
        f.write(markdown(results))
    plot(results, paths["png"])
    return paths


def batch_call_cost():
    """ns per numba->cffi batch call, from the function dataplane/forwarder.py exposes for it."""
    try:
        from dataplane import forwarder
    except Exception as e:  # not written or not built yet
        return {"unavailable": f"dataplane.forwarder does not import: {type(e).__name__}: {e}"}
    fn = getattr(forwarder, "measure_batch_call_ns", None)
    if fn is None:
        return {"unavailable": "dataplane.forwarder has no measure_batch_call_ns()"}
    try:
        return {"ns": float(fn())}
    except Exception as e:
        return {"unavailable": f"measure_batch_call_ns failed: {type(e).__name__}: {e}"}
