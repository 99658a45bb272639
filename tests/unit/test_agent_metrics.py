"""The agent's Prometheus series for the steering program and the tc fast path."""
from control import agent


def test_fast_path_counters_have_their_own_series_with_whole_names():
    """FAST_* counters are xskproxy_fast_path_packets{outcome=...}, not steering decisions with
    their first letters cut off; STEER_* stay xskproxy_steering_packets{decision=...}."""
    snapshot = {"steering": {"STEER_REDIRECT_FRONTEND": 3, "STEER_PASS_FAST_FLOW": 5, "FAST_FLOW": 5,
                             "FAST_BYPASS": 7, "FAST_PASS_NOT_LIVE": 1}}
    families = {f.name: f for f in agent.steering_metrics(snapshot)}
    steer = {s.labels["decision"]: s.value for s in families["xskproxy_steering_packets"].samples}
    fast = {s.labels["outcome"]: s.value for s in families["xskproxy_fast_path_packets"].samples}
    assert steer == {"redirect_frontend": 3, "pass_fast_flow": 5}
    assert fast == {"flow": 5, "bypass": 7, "pass_not_live": 1}
