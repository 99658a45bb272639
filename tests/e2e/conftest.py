"""The e2e lab: a two-node cluster lab with an agent per node, shared by the tests of a module."""
import os
import shutil

import pytest

from lab import scenarios
from lab.netns import Lab


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="e2e tests need root (network namespaces, XDP, AF_XDP)")
        for item in items:
            if "tests/e2e" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def bpf_pin_dir():
    """As root, the agents pin into a bpffs of the session's own (lab/bpffs.py: this machine's
    /sys/fs/bpf is none, and a private one is freed at the end): XSKPROXY_BPF_PIN_DIR, or None."""
    from lab.bpffs import session_pins
    with session_pins() as pin_dir:
        yield pin_dir


def _start_agents(sl, workdir):
    """Start every node's agent; if one does not come up, print the tail of each agent's log."""
    try:
        sl.start_agents()
    except Exception:
        for node in sl.cluster.nodes:
            path = os.path.join(workdir, f"{node.name}.log")
            if os.path.exists(path):
                print(f"--- {node.name}.log ---\n" + open(path).read()[-4000:])
        raise


@pytest.fixture(scope="module")
def service_lab(tmp_path_factory):
    """ServiceLab with every node's agent running (torn down after the module)."""
    workdir = str(tmp_path_factory.mktemp("lab"))
    with Lab("xe2e") as lab:
        sl = scenarios.ServiceLab(lab, workdir=workdir)
        _start_agents(sl, workdir)
        yield sl
    shutil.rmtree(workdir, ignore_errors=True)


# What test_offload_labs.py measured, one line per transfer, printed after the run (pass or fail).
BULK_REPORT = []


def pytest_terminal_summary(terminalreporter):
    if BULK_REPORT:
        terminalreporter.section("bulk transfers through xskproxy (test_offload_labs.py)")
        for line in BULK_REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def bulk_report():
    """Appends a line to the bulk-transfer summary printed at the end of the run."""
    return BULK_REPORT.append


# The labs of test_offload_labs.py: Pods with default offloads behind gateways that hand
# xskproxy what real nodes do. veth is today's lab (native XDP on every interface), the baseline.
OFFLOAD_LABS = {
    "veth": {},
    "bridge": {"gateway": "bridge"},         # gw0 a Linux bridge: generic XDP, GSO super-frames
    "mtu9000": {"mtu": 9000},               # every link at MTU 9000: frames over a UMEM chunk
}


@pytest.fixture(scope="module", params=list(OFFLOAD_LABS))
def bulk_lab(request, tmp_path_factory):
    """ServiceLab of one OFFLOAD_LABS variant with the bulk Services and every agent running;
    `bulk_lab.variant` names it."""
    workdir = str(tmp_path_factory.mktemp(f"bulk-{request.param}"))
    with Lab("xbr" + request.param[:5]) as lab:
        sl = scenarios.ServiceLab(lab, workdir=workdir, **OFFLOAD_LABS[request.param])
        sl.variant = request.param
        scenarios.write_bulk_manifest(sl)
        _start_agents(sl, workdir)
        yield sl
    shutil.rmtree(workdir, ignore_errors=True)
