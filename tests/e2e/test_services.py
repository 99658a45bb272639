"""Every Service scenario of the demo, through xskproxy agents, with real clients (curl, UDP)."""
import pytest

from lab import scenarios


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS, ids=[s.__name__ for s in scenarios.SCENARIOS])
def test_scenario(service_lab, scenario):
    """The scenario's one-sentence promise (its docstring) holds through xskproxy."""
    result = scenario(service_lab)
    assert result.ok, f"{scenario.__doc__.strip()} -> {result.detail}"


def test_agents_forwarded_the_traffic(service_lab):
    """The scenarios above went through xskproxy: each node's pipeline transmitted frames and
    the steering program redirected Service traffic."""
    for node in service_lab.cluster.nodes:
        stats = service_lab.agent_stats(node)
        pipeline = stats["queues"]["0"]["pipeline"]
        assert pipeline.get("XSKP_CNT_TX_TRANSPORT", 0) + pipeline.get("XSKP_CNT_TX_GATEWAY", 0) > 0, stats
        assert stats["steering"]["STEER_REDIRECT_FRONTEND"] > 0, stats["steering"]
