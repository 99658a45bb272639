"""SNAT ports under churn through real agents (issue 13 item 2): `ab` through a hairpin ClusterIP
and a NodePort with externalTrafficPolicy Cluster, with a 256-port snatPortRange so that a few
seconds of load cycle the pool many times over (before the fix, a closed flow held its port 10 s:
25 connections/s per destination, and SYNs were dropped as XSKP_DROP_SNAT_EXHAUSTED)."""
import shutil

import pytest

from lab import scenarios, snat_soak
from lab.netns import Lab


@pytest.fixture(scope="module")
def snat_lab(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("snat"))
    with Lab("xsnat") as lab:
        sl = scenarios.ServiceLab(lab, workdir=workdir,
                                  agent_options={"snatPortRange": "61000-61255"})
        sl.start_agents()
        yield sl
    shutil.rmtree(workdir, ignore_errors=True)


def test_ab_churn_through_hairpin_and_nodeport_never_exhausts_snat_ports(snat_lab):
    """Three rounds of `ab -n 2000 -c 20` on both targets: no failed request and no
    XSKP_DROP_SNAT_EXHAUSTED, closed flows' ports being taken over (XSKP_CNT_CT_REUSED)."""
    lines = []
    totals, delta = snat_soak.soak(snat_lab, rounds=3, requests=2000, concurrency=20,
                                   report=lines.append)
    summary = "\n".join(lines)
    assert all(t["complete"] == 3 * 2000 and t["failed"] == 0 for t in totals.values()), summary
    assert delta["XSKP_DROP_SNAT_EXHAUSTED"] == 0, summary
    assert delta["XSKP_CNT_HAIRPIN"] >= 3 * 2000 and delta["XSKP_CNT_SNAT"] > 0, summary
    assert delta["XSKP_CNT_CT_REUSED"] > 0, summary
