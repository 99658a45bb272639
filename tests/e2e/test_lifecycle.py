"""The agents' lifetime with real traffic (lab/lifecycle.py, also in the demo): netfilter bypass
until SIGTERM, fail-open on kill -9, restart without loss, endpoint churn under load,
proxyLoadBalancerIPs=false. Each scenario leaves every agent running again."""
import pytest

from lab import lifecycle


@pytest.mark.parametrize("scenario", lifecycle.SCENARIOS, ids=[s.__name__ for s in lifecycle.SCENARIOS])
def test_lifecycle(service_lab, scenario):
    """The scenario's promise (its docstring) holds; what it measured is printed."""
    result = scenario(service_lab)
    print(f"\n{result.name}: {result.detail}")
    assert result.ok, f"{scenario.__doc__.strip()} -> {result.detail}"
