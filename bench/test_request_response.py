"""Unit tests of the request/response rows' pure parts: parsing the tools' output, which paths carry the
workloads, and the (f) rows per flowOffload setting. No namespaces, no timing.

The tool outputs are what sockperf 3.7, wrk 4.1.0 and ab 2.3 (Debian 12 packages) printed in the bench lab.
"""
from bench import agent_setup, report
from bench.measure import (RR_KEEPALIVE, RR_LATENCY, RR_NEW_CONNECTIONS, TCP_WORKLOADS, UDP_NEW_FLOWS, parse_ab,
                           parse_sockperf, parse_wrk)
from bench.paths import CForwarder, IptablesKubeProxy, KernelRouting, XskproxyAgent, all_paths
from bench.run import row_workloads

SOCKPERF_PING_PONG = """\
sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 10.96.0.19      PORT =    80 # TCP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMessages=34942; ReceivedMessages=34941
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=26605; ReceivedMessages=26605
sockperf: \x1b[2;35m====> avg-rtt=58.194 (std-dev=110.085)\x1b[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Round trip is 58.194 usec
sockperf: \x1b[2;35mTotal 26605 observations\x1b[0m; each percentile contains 266.05 observations
sockperf: ---> <MAX> observation = 5259.343
sockperf: ---> percentile 99.999 = 5259.343
sockperf: ---> percentile 99.990 = 4630.976
sockperf: ---> percentile 99.900 = 1587.453
sockperf: ---> percentile 99.000 =  123.502
sockperf: ---> percentile 90.000 =   71.255
sockperf: ---> percentile 75.000 =   56.903
sockperf: ---> percentile 50.000 =   50.093
sockperf: ---> percentile 25.000 =   46.338
sockperf: ---> <MIN> observation =   26.909
"""

WRK_KEEPALIVE = """\
Running 2s test @ http://10.96.0.19:80/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.06ms    1.51ms  15.94ms   85.95%
    Req/Sec    27.34k     5.02k   34.57k    75.00%
  Latency Distribution
     50%  272.00us
     75%    1.42ms
     90%    3.16ms
     99%    6.14ms
  54870 requests in 2.02s, 7.85MB read
Requests/sec:  27215.51
Transfer/sec:      3.89MB
"""

AB_NEW_CONNECTIONS = """\
Server Software:        nginx/1.22.1
Server Hostname:        10.96.0.19
Server Port:            80

Document Path:          /
Document Length:        3 bytes

Concurrency Level:      16
Time taken for tests:   2.005 seconds
Complete requests:      16972
Failed requests:        0
Total transferred:      2463115 bytes
HTML transferred:       50961 bytes
Requests per second:    8466.94 [#/sec] (mean)
Time per request:       1.890 [ms] (mean)
"""


def test_sockperf_round_trip_percentiles_are_read_without_colour_codes():
    """sockperf's p50/p99 round trips (us) and its observation count come out of its coloured output."""
    parsed = parse_sockperf(SOCKPERF_PING_PONG)
    assert parsed == {"rate": 50.093, "p50_us": 50.093, "p99_us": 123.502, "p999_us": 1587.453,
                      "avg_us": 58.194, "transactions": 26605}


def test_sockperf_without_percentiles_has_no_rate():
    """A sockperf that could not connect prints no percentiles: no rate, so the sample carries an error."""
    assert parse_sockperf("sockperf: ERROR: Can't connect socket (errno=111 Connection refused)\n")["rate"] is None


def test_wrk_requests_per_second_and_latency_in_microseconds():
    """wrk's Requests/sec is the rate; its 50%/99% latencies are converted to us."""
    assert parse_wrk(WRK_KEEPALIVE) == {"rate": 27215.51, "p50_us": 272.0, "p99_us": 6140.0, "transactions": 54870}


def test_wrk_socket_errors_are_reported():
    """Socket errors and non-2xx replies become the sample's error; the rate is kept."""
    text = WRK_KEEPALIVE + "  Socket errors: connect 0, read 3, write 0, timeout 0\n  Non-2xx or 3xx responses: 2\n"
    parsed = parse_wrk(text)
    assert parsed["rate"] == 27215.51
    assert parsed["error"] == "Socket errors: connect 0, read 3, write 0, timeout 0; 2 non-2xx/3xx responses"


def test_ab_connections_per_second():
    """ab without keep-alive: requests per second is connections per second."""
    assert parse_ab(AB_NEW_CONNECTIONS) == {"rate": 8466.94, "transactions": 16972}
    failed = parse_ab(AB_NEW_CONNECTIONS.replace("Failed requests:        0", "Failed requests:        5"))
    assert failed["error"] == "5 failed requests, 0 non-2xx responses"


def test_request_response_rows_are_the_service_paths():
    """(b), (c) and (f) carry the request/response workloads, and (a) as their floor (aimed at the Pod);
    the other paths aiming at the Pod say why they do not."""
    for workload in (RR_LATENCY, RR_KEEPALIVE, RR_NEW_CONNECTIONS):
        assert IptablesKubeProxy(10).unsupported(workload) is None
        assert XskproxyAgent(10).unsupported(workload) is None
        assert KernelRouting().unsupported(workload) is None, "(a): the floor, aimed at the Pod"
        assert "no Service" in CForwarder().unsupported(workload)
    assert "partial" in CForwarder().unsupported(TCP_WORKLOADS[0])


def test_new_connections_run_at_every_service_count_established_ones_at_the_smallest():
    """ab's SYNs cross the N rules, so it runs at every N; sockperf and wrk ride established connections."""
    workloads = [UDP_NEW_FLOWS, RR_LATENCY, RR_KEEPALIVE, RR_NEW_CONNECTIONS]
    assert row_workloads(IptablesKubeProxy(10), workloads, (10, 1000)) == workloads
    assert row_workloads(IptablesKubeProxy(1000), workloads, (10, 1000)) == [UDP_NEW_FLOWS, RR_NEW_CONNECTIONS]


def test_agent_rows_per_flow_offload_setting():
    """Each flowOffload setting gives its own (f) rows, told apart by row_id and label, compared with (b)
    of the same N; the default leaves the key out of the agent's config."""
    rows = [r for r in all_paths((10,), (None, True, False)) if r.key == "f"]
    assert [r.row_id for r in rows] == ["f10", "f10-offload", "f10-no-offload"]
    assert len({r.label for r in rows}) == 3 and "flowOffload false" in rows[2].label
    assert "flowOffload" not in agent_setup.agent_config("/m", "/s", "")
    assert agent_setup.agent_config("/m", "/s", "", flow_offload=False)["flowOffload"] is False
    results = {"rows": [{"key": "b", "services": 10, "row_id": "b10"}] + [r.describe() for r in rows]}
    assert all(report.reference_row(results, row)["row_id"] == "b10" for row in results["rows"][1:])
