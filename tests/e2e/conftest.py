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


@pytest.fixture(scope="module")
def service_lab(tmp_path_factory):
    """ServiceLab with every node's agent running (torn down after the module)."""
    workdir = str(tmp_path_factory.mktemp("lab"))
    with Lab("xe2e") as lab:
        sl = scenarios.ServiceLab(lab, workdir=workdir)
        try:
            sl.start_agents()
        except Exception:
            for node in sl.cluster.nodes:
                path = os.path.join(workdir, f"{node.name}.log")
                if os.path.exists(path):
                    print(f"--- {node.name}.log ---\n" + open(path).read()[-4000:])
            raise
        yield sl
    shutil.rmtree(workdir, ignore_errors=True)
