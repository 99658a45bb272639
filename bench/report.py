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
    """The (b) row a row is compared with: (b) with the same N, or (b) with the smallest N."""
    b_rows = [r for r in results["rows"] if r["key"] == "b"]
    same = [r for r in b_rows if row["services"] is not None and r["services"] == row["services"]]
    if same:
        return same[0]
    return min(b_rows, key=lambda r: r["services"]) if b_rows else None


def _median(row, workload, metric="rate"):
    cell = row["cells"].get(workload)
    return cell[metric]["median"] if cell and cell.get(metric) else None


def markdown(results):
    """Markdown: forwarded pps (median [min-max], ratio to (b)), then CPU ns per packet on the path core."""
    meta, workloads = results["meta"], results["workloads"]
    lines = [f"Forwarded packets per second at the sink (UDP) or Gbit/s received by iperf3 (TCP), median of "
             f"{meta['runs']} run(s) of {meta['seconds_per_measurement']:g} s [min-max], x ratio to (b) "
             f"(same N, else the smallest N); UDP cells are medians of the clean runs (other processes below "
             f"5% of both cores; `(k/n clean)`), or of all runs marked `(under load)`; generator on CPU "
             f"{meta['generator_cpu']}, path on CPU {meta['path_cpu']} (rx mode {meta.get('rx_mode', 'rps')}); "
             f"kernel {meta['kernel']}, "
             f"load average at start {' '.join(meta['loadavg_at_start'])}"
             f"{' (quick run)' if meta['quick'] else ''}.", ""]
    lines.append("| path | " + " | ".join(f"{w['name']} ({w['unit']})" for w in workloads) + " |")
    lines.append("|---|" + "---|" * len(workloads))
    for row in results["rows"]:
        cells = []
        for w in workloads:
            cell = row["cells"].get(w["key"])
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
    lines += ["", "CPU per forwarded packet on the path core (medians): `ns/pkt` = all busy time of the core; "
              "`own` = the path's own time only (system + softirq on that core + its worker's user time; other "
              "processes' user time left out, so it holds under load); `1-core` = 1e9/own, the pps the path "
              "would reach with the whole core; `busy` = core utilisation (user share in brackets: for kernel "
              "paths that is other processes); `offered` = what the generator sent.", ""]
    udp = [w for w in workloads if w["unit"] == "pps"]
    lines.append("| path | " + " | ".join(f"{w['key']} ns/pkt | own | 1-core | busy | offered" for w in udp) + " |")
    lines.append("|---|" + "---|---|---|---|---|" * len(udp))
    for row in results["rows"]:
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
    call = results.get("batch_call") or {}
    tcp = [w for w in workloads if w["unit"] != "pps"]
    if tcp:
        lines += ["", "TCP: path core utilisation and TCP retransmits (medians):", "",
                  "| path | " + " | ".join(f"{w['key']} busy | retr" for w in tcp) + " |",
                  "|---|" + "---|---|" * len(tcp)]
        for row in results["rows"]:
            cells = []
            for w in tcp:
                cell = row["cells"].get(w["key"])
                util = cell and cell["path_cpu_utilisation"]
                retr = cell and cell["retransmits"]
                cells += [f"{util['median'] * 100:.0f}%" if util else "-", f"{retr['median']:.0f}" if retr else "-"]
            if any(c != "-" for c in cells):
                lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += path_counter_lines(results)
    lines += ["", ("One numba->cffi batch call: " + (f"{call['ns']:.1f} ns" if "ns" in call
               else f"not measured ({call.get('unavailable', 'unknown')})")), ""]
    return "\n".join(lines)


# pipeline counters shown per cell (the rest of them are in latest.json); every XSKP_DROP_* is shown
SHOWN_COUNTERS = ("XSKP_CNT_TX_GATEWAY", "XSKP_CNT_TX_TRANSPORT", "XSKP_CNT_CT_HIT", "XSKP_CNT_CT_CREATED",
                  "XSKP_CNT_DNAT", "XSKP_CNT_CSUM_COMPLETED", "XSKP_CNT_CT_EVICTED")


def path_counter_lines(results):
    """Per row keeping its own counters (the agent's pipeline): what moved during each measurement
    (medians over runs), next to what the sink counted, so that one sees the traffic was translated."""
    rows = [r for r in results["rows"]
            if any(s.get("path_counters") is not None for c in r["cells"].values() for s in c["samples"])]
    if not rows:
        return []
    import statistics
    lines = ["", "Path counters: the agent's pipeline counters that moved during each measurement (stats.json "
             "deltas, medians over runs; `forwarded` = packets at the sink, or bytes received for TCP):", "",
             "| path | workload | forwarded | counters |", "|---|---|---|---|"]
    for row in rows:
        for w in results["workloads"]:
            cell = row["cells"].get(w["key"])
            samples = [s for s in (cell["samples"] if cell else []) if s.get("path_counters") is not None]
            if not samples:
                continue
            names = sorted({n for s in samples for n in s["path_counters"]
                            if n in SHOWN_COUNTERS or n.startswith("XSKP_DROP_")})
            text = " ".join(f"{n[len('XSKP_'):]}={_count(statistics.median(s['path_counters'].get(n, 0) for s in samples))}"
                            for n in names)
            forwarded = statistics.median(s["forwarded"] for s in samples)
            lines.append(f"| {row['label']} | {w['key']} | {_count(forwarded)} | {text or '-'} |")
    return lines


def plot(results, path):
    """Grouped bars per workload (one panel for pps, one for Gbit/s), whiskers min-max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["rows"] if r["cells"]]
    panels = [(unit, [w for w in results["workloads"] if w["unit"] == unit]) for unit in ("pps", "Gbit/s")]
    panels = [(unit, ws) for unit, ws in panels if ws]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5.5), squeeze=False)
    width = 0.8 / max(1, len(rows))
    for ax, (unit, workloads) in zip(axes[0], panels):
        scale = 1e3 if unit == "pps" else 1.0
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
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=row["label"])
        ax.set_xticks(range(len(workloads)), [w["name"] for w in workloads], rotation=15, fontsize=8)
        ax.set_ylabel("forwarded kpps" if unit == "pps" else "Gbit/s received")
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
