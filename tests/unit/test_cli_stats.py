"""`xskproxy stats`: tables a person reads, each counter's meaning taken from the ABI header."""
import json
import os
import subprocess
import sys

from control import cli
from dataplane import abi

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _steering_names():
    return [n for n in list(abi.enum_members("STEER_")) + list(abi.enum_members("FAST_"))
            if getattr(abi.lib, n) < abi.lib.STEER_COUNTER_MAX and not n.startswith(("STEER_ROLE_", "STEER_MAP_"))
            and n in abi.ffi.typeof("enum steer_counter").relements]


def _snapshot(failing=False):
    steering = {name: 0 for name in _steering_names()}
    steering.update(STEER_REDIRECT_FRONTEND=1200, STEER_PASS_FAST_FLOW=98000, FAST_FLOW=98000,
                    FAST_PASS_NO_MATCH=3)
    worker = {name[len("XSKP_WC_"):].lower(): 0 for name in abi.enum_members("XSKP_WC_") if name != "XSKP_WC_MAX"}
    sockets = {name: 0 for name in abi.dtype("struct xskp_socket_stats").names}
    queue = {"pipeline": {"XSKP_DROP_NOT_OURS": 2, "XSKP_CNT_TX_GATEWAY": 5000, "XSKP_CNT_FLOW_OFFLOADED": 40},
             "worker": {"tr0": dict(worker, rx_frames=700), "gw0": dict(worker, rx_frames=5100, dropped=2)},
             "sockets": {"tr0": dict(sockets), "gw0": dict(sockets, rx_ring_full=4)},
             "flows": {"ct": 12, "affinity": 0}, "error": None}
    sync = {"publishes": 3, "unchanged": 1, "failures": 2 if failing else 0,
            "consecutive_failures": 2 if failing else 0, "last_error": "KeyError: 'x'" if failing else None,
            "last_sync_seconds": 0.002, "translator_resets": 0}
    return {"node": "node0", "generation": 3, "published_at": 1_700_000_000.0, "uptime_seconds": 60.0,
            "source": {"kind": "files", "staleness_seconds": 0.0, "error": None}, "sync": sync,
            "translate": {"services": 2, "backends": 4}, "steering": steering,
            "fast_path": {"enabled": True, "capacity": 1024, "entries": 6, "live": True},
            "queues": {"0": queue}}


def _section(text, title_start):
    """The lines of the table whose title starts with title_start, up to the next blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_every_counter_stats_shows_has_its_header_comment_as_meaning():
    """Each steering and fast-path counter, pipeline reason and outcome, worker event and socket
    statistic has a non-empty one-line meaning read from native/xskproxy_abi.h, a comment that
    runs over several lines joined into one."""
    meanings = cli.header_meanings()
    names = (_steering_names() + [n for n in abi.enum_members("XSKP_DROP_") if n not in ("XSKP_DROP_NONE", "XSKP_DROP_REASON_MAX")]
             + [n for n in abi.enum_members("XSKP_CNT_")]
             + [n for n in abi.enum_members("XSKP_WC_") if n != "XSKP_WC_MAX"]
             + list(abi.dtype("struct xskp_socket_stats").names))
    missing = [n for n in names if not meanings.get(n)]
    assert not missing
    assert "\n" not in "".join(meanings.values())
    assert meanings["STEER_DROP_TOO_BIG"].startswith("larger than a UMEM chunk holds") and \
        meanings["STEER_DROP_TOO_BIG"].endswith("TCP retransmits it smaller")
    assert meanings["FAST_FLOW"] == "rewritten by an offloaded flow's entry and redirected"


def test_header_meanings_parses_enum_and_struct_comments(tmp_path):
    """A member with a comment on its line, one whose comment runs on, one without, and a
    struct field are all found, in the header's order."""
    header = tmp_path / "h.h"
    header.write_text("/* a file comment: X_NOT_A_MEMBER, /* no */\n"
                      "enum things {\n\tX_ONE = 0,   /* the first */\n\tX_TWO,       /* the second, whose\n"
                      "\t\t     * comment runs on */\n\tX_MAX,\n};\n"
                      "struct xskp_socket_stats {\n\t__u64 rx_dropped;   /* dropped */\n};\n")
    assert cli.header_meanings(str(header)) == {"X_ONE": "the first", "X_TWO": "the second, whose comment runs on",
                                                "X_MAX": "", "xskp_socket_stats.rx_dropped": "dropped",
                                                "rx_dropped": "dropped"}


def test_stats_are_tables_per_section_with_fast_path_counters():
    """The steering table holds the STEER_* decisions (STEER_PASS_FAST_* included), the kernel
    fast path table the FAST_* counters, then the fast path summary, the pipeline per queue,
    worker and socket counters per queue and interface; counters at zero are counted, not
    listed; no Python dict is printed."""
    text = cli.render_stats(_snapshot(), cli.header_meanings(), now=1_700_000_010.0)
    assert text.splitlines()[0].startswith("node node0: generation 3 published 2023-11-14 22:13:20 UTC, 10 s ago")
    steering = _section(text, "steering decisions")
    assert steering[1].split() == ["counter", "packets"]
    assert ["STEER_REDIRECT_FRONTEND", "1,200"] in [line.split() for line in steering]
    assert ["STEER_PASS_FAST_FLOW", "98,000"] in [line.split() for line in steering]
    assert not any("FAST_FLOW " in line and "STEER" not in line for line in steering)
    at_zero = len([n for n in _steering_names() if not n.startswith("FAST_")]) - 2
    assert steering[-1].strip() == f"({at_zero} more at zero; --all shows them)"
    fast = _section(text, "kernel fast path")
    assert [line.split() for line in fast[2:4]] == [["FAST_FLOW", "98,000"], ["FAST_PASS_NO_MATCH", "3"]]
    assert "fast path summary: on, live; 6 of 1,024 flow entries in use" in text
    pipeline = _section(text, "pipeline per queue")
    assert pipeline[1].split() == ["counter", "q0"]
    assert [line.split() for line in pipeline[2:]] == [["XSKP_DROP_NOT_OURS", "2"], ["XSKP_CNT_TX_GATEWAY", "5,000"],
                                                      ["XSKP_CNT_FLOW_OFFLOADED", "40"]]
    worker = _section(text, "worker loops")
    assert worker[1].split() == ["counter", "q0/tr0", "q0/gw0"]
    assert ["rx_frames", "700", "5,100"] in [line.split() for line in worker]
    sockets = _section(text, "AF_XDP sockets")
    assert ["rx_ring_full", "0", "4"] in [line.split() for line in sockets]
    assert "queue 0: flows in use ct 12, affinity 0" in text
    assert "{" not in text and "PUBLISH FAILING" not in text and "meaning" not in text


def test_explain_puts_each_counters_meaning_beside_it_and_all_shows_zeros():
    """--explain: a meaning column from the header; --all: the zero counters listed too."""
    meanings = cli.header_meanings()
    text = cli.render_stats(_snapshot(), meanings, explain=True, show_all=True)
    fast = _section(text, "kernel fast path")
    assert fast[1].split()[-1] == "meaning"
    rows = {line.split()[0]: line for line in fast[2:]}
    assert set(rows) == {n for n in _steering_names() if n.startswith("FAST_")}
    assert rows["FAST_PASS_NOT_LIVE"].endswith(meanings["FAST_PASS_NOT_LIVE"])
    worker = _section(text, "worker loops")
    assert any(line.endswith(meanings["XSKP_WC_TX_RING_FULL"]) and "tx_ring_full" in line for line in worker)
    assert "more at zero" not in text


def test_publish_failing_line_comes_first():
    """A failing publish is the first thing said, as before."""
    text = cli.render_stats(_snapshot(failing=True), cli.header_meanings())
    assert text.splitlines()[0] == ("PUBLISH FAILING: 2 attempts in a row, the tables in use are stale; "
                                    "last error: KeyError: 'x'")


def test_fast_path_off_and_not_live_are_said_in_words():
    """flowOffload false and a stale heartbeat each get a sentence, not a flag."""
    off = dict(_snapshot(), fast_path={"enabled": False})
    assert "fast path summary: off (flowOffload false)" in cli.render_stats(off, cli.header_meanings())
    stale = dict(_snapshot(), fast_path={"enabled": True, "capacity": 1024, "entries": 6, "live": False})
    assert "NOT LIVE" in cli.render_stats(stale, cli.header_meanings())


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "control.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_stats_command_tables_json_unchanged_and_explain_without_agent(tmp_path):
    """`xskproxy stats` prints the tables, `--json` the snapshot as before (sorted, indented),
    and `--explain` with no agent running lists every counter with its meaning."""
    snapshot = _snapshot()
    (tmp_path / "stats.json").write_text(json.dumps(snapshot))
    tables = _cli("stats", "--state-dir", str(tmp_path))
    assert tables.returncode == 0 and "steering decisions" in tables.stdout and "{" not in tables.stdout
    raw = _cli("stats", "--json", "--state-dir", str(tmp_path))
    assert raw.stdout == json.dumps(snapshot, indent=2, sort_keys=True) + "\n"
    legend = _cli("stats", "--explain", "--state-dir", str(tmp_path / "no-agent"))
    assert legend.returncode == 0
    assert "  STEER_PASS_FAST_BYPASS" in legend.stdout and "  FAST_DROP_REWRITE" in legend.stdout
    assert "  rx_fill_ring_empty_descs" in legend.stdout and "  idle_sleeps" in legend.stdout
    missing = _cli("stats", "--state-dir", str(tmp_path / "no-agent"))
    assert missing.returncode != 0 and "is the agent running" in missing.stderr
