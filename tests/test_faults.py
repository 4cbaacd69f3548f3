"""The fault suite: every row is accounted for exactly once, whatever the endpoints do."""

import threading
import time
from collections import Counter

import pytest

from conftest import run_rows


def _all_accounted(results, n):
    assert sorted(results) == list(range(n))  # one result per row (run_rows rejects doubles)


def test_429_bursts_with_retry_after_slow_only_that_endpoint(mock_server):
    throttled = mock_server(faults={"429": 0.5}, retry_after=0.3, latency=0.005, seed=1)
    calm = mock_server(latency=0.005)
    n = 600
    results, stats = run_rows([f"q{i}" for i in range(n)], [throttled.url, calm.url],
                              rps=400, concurrency=64)
    _all_accounted(results, n)
    assert all(r.error is None for r in results.values())
    assert stats.endpoints[0].throttled > 0
    # paused after each 429 with Retry-After and its window halved: it gets much less traffic
    assert throttled.counts["requests"] < calm.counts["requests"] * 0.6


def test_a_5xx_storm_puts_the_endpoint_in_cooldown(mock_server):
    storm = mock_server(faults={"500": 1.0})
    good = mock_server(latency=0.002)
    n = 400
    results, stats = run_rows([f"q{i}" for i in range(n)], [storm.url, good.url], rps=400,
                              concurrency=16, backoff_initial=0.01)
    _all_accounted(results, n)
    assert all(r.error is None and r.endpoint == good.url for r in results.values())
    assert stats.endpoints[0].cooldowns >= 1
    assert storm.counts["requests"] < n * 0.1  # without cooldown it would take half


@pytest.mark.parametrize("fault", ["drop", "hang", "malformed", "503"])
def test_each_fault_kind_is_retried_and_every_row_accounted(mock_server, fault):
    flaky = mock_server(faults={fault: 0.2}, seed=7, latency=0.002)
    n = 150
    results, stats = run_rows([f"q{i}" for i in range(n)], [flaky.url], timeout=0.5,
                              max_attempts=6, backoff_initial=0.01, backoff_max=0.05)
    _all_accounted(results, n)
    ok = sum(r.error is None for r in results.values())
    assert ok >= n - 2, Counter(r.error_type for r in results.values())
    assert stats.retries >= 10
    assert all(r.response == f"echo: q{i}" for i, r in results.items() if r.error is None)


def test_one_endpoint_killed_mid_run(mock_server):
    a = mock_server(latency=0.01)
    b = mock_server(latency=0.01)
    killer = threading.Timer(0.7, a.stop)
    killer.start()
    n = 500
    try:
        results, stats = run_rows([f"q{i}" for i in range(n)], [a.url, b.url], rps=300,
                                  backoff_initial=0.05)
    finally:
        killer.cancel()
    _all_accounted(results, n)
    assert all(r.error is None for r in results.values())
    assert a.counts["ok"] > 0 and b.counts["ok"] > a.counts["ok"]
    assert stats.endpoints[0].cooldowns >= 1


@pytest.mark.slow
def test_all_endpoints_down_for_seconds_then_back(mock_server):
    a = mock_server(latency=0.01)
    b = mock_server(latency=0.01)

    def outage():
        time.sleep(0.6)
        a.stop()
        b.stop()
        time.sleep(2.5)
        a.start()
        b.start()

    t = threading.Thread(target=outage)
    t.start()
    n = 600
    try:
        results, _ = run_rows([f"q{i}" for i in range(n)], [a.url, b.url], rps=200,
                              max_attempts=5)  # default backoff: 0.5, 1, 2, 4 s
    finally:
        t.join()
    _all_accounted(results, n)
    assert all(r.error is None for r in results.values()), Counter(
        r.error_type for r in results.values())
    # rows sent during the outage failed, were retried, and were answered once it ended
    assert sum(r.attempts > 1 for r in results.values()) > 0
