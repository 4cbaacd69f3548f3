"""Retry-After as a provider sends it: per request, saturated, and past the cap.

Regression tests for the issue "The engine, reshaped", defects 1 and 2. The unit tests
drive ``Health`` and the pool with made-up times; the end-to-end ones assert on counts and
on the server's own records, never on the test's clock.
"""

import json
import subprocess
import sys

import pytest

from llmframe import RunConfig
from llmframe._health import Health
from llmframe._pool import EndpointPool

from conftest import run_rows


def test_scattered_429s_never_pause_the_endpoint():
    """A 429 says this request should wait; with 1 refusal in 10 the endpoint goes on."""
    h = Health(256)
    t = 0.0
    for i in range(1000):
        t += 0.002
        if i % 10 == 0:
            h.on_failure(t, "http_error", 429, retry_after=1.0, sent_at=t - 0.001)
        else:
            h.on_success(t, 0.001)
        assert h.allowed(t) == 256, i  # never paused, window never cut
    assert h.throttled == 100 and h.pauses == 0


def test_saturation_pauses_once_and_old_429s_never_extend_it():
    h = Health(64)
    for _ in range(10):  # every recent answer refused: clear saturation
        h.on_failure(1.0, "http_error", 429, retry_after=3.0, sent_at=0.9)
    assert h.pauses == 1 and h.held(2.0) and not h.held(4.01)
    # refusals of requests sent before the pause began never extend it
    for _ in range(50):
        h.on_failure(3.5, "http_error", 429, retry_after=3.0, sent_at=0.95)
    assert h.paused_until == 4.0 and h.pauses == 1
    assert h.window < 64  # and the window was cut (AIMD)


def test_a_paused_single_endpoint_still_takes_rows():
    """Pauses move traffic to other endpoints; they never hold rows when there is none."""
    import asyncio

    async def main():
        pool = EndpointPool(RunConfig(["http://127.0.0.1:9/v1"]))
        target = pool.targets[0]
        for _ in range(10):
            target.health.on_failure(1.0, "http_error", 429, retry_after=30.0, sent_at=1.0)
        assert target.health.held(2.0)
        picked = pool.pick(-1, 2.0)
        await pool.close()
        return picked is target

    assert asyncio.run(main())


def test_an_endpoint_out_past_the_cap_is_never_used_and_says_why():
    import asyncio

    async def main():
        pool = EndpointPool(RunConfig(["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]))
        a, b = pool.targets
        a.health.on_failure(1.0, "http_error", 429, out_for=86400.0)
        picks = {pool.pick(-1, 2.0).index for _ in range(10)}
        reason_one_left = pool.out_reason(2.0)
        b.health.on_failure(1.0, "http_error", 429, out_for=3600.0)
        none_left = pool.pick(-1, 2.0), pool.out_reason(2.0)
        await pool.close()
        return picks, reason_one_left, none_left

    picks, one_left, (pick, reason) = asyncio.run(main())
    assert picks == {1} and one_left is None and pick is None
    assert "server asked to retry after" in reason and "over the 60 s limit" in reason


@pytest.mark.timeout(60)
def test_every_first_attempt_refused_runs_like_a_client_that_waits_retry_after(mock_server):
    """Defect 1, scenario A: each prompt's first attempt is a 429 with Retry-After 2. A
    client that waits Retry-After per request needs ~2 s; llmframe took minutes."""
    srv = mock_server(first_fault="429", retry_after=2)
    srv.state.record_arrivals = True
    results, stats = run_rows([f"q{i}" for i in range(100)], [srv.url], rps=500)
    assert stats.ok == 100 and all(r.attempts == 2 for r in results.values())
    assert srv.counts["requests"] == 200
    arrivals = sorted(srv.state.arrivals)  # the server's clock
    assert arrivals[-1] - arrivals[0] < 2 * (2 + 100 / 500) + 1.0


@pytest.mark.timeout(60)
def test_one_in_ten_refused_does_not_slow_the_run(mock_server):
    """Defect 1, scenario B (smaller): 10% 429 with Retry-After 1 at --rps 500."""
    srv = mock_server(faults={"429": 0.1}, retry_after=1, seed=3)
    srv.state.record_arrivals = True
    _results, stats = run_rows([f"q{i}" for i in range(1000)], [srv.url], rps=500)
    assert stats.ok == 1000
    arrivals = sorted(srv.state.arrivals)
    pacing = srv.counts["requests"] / 500
    assert arrivals[-1] - arrivals[0] < 2 * (pacing + 1)


@pytest.mark.timeout(60)
def test_a_spent_daily_quota_ends_the_run_at_once_with_what_the_server_asked(mock_server,
                                                                            tmp_path):
    """Defect 2: Retry-After 86400 on 5% of answers, one endpoint: every row ends (the
    rest as errors saying why), exit 1, and --retry-errors later sends them again."""
    srv = mock_server(faults={"429": 0.05}, retry_after=86400, seed=1)
    req = tmp_path / "r.jsonl"
    req.write_text("".join(json.dumps({"input": f"q{i}"}) + "\n" for i in range(300)))
    cmd = [sys.executable, "-m", "llmframe", "run", str(req), "-e", srv.url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 1, proc.stderr
    saved = (tmp_path / "r.save.jsonl").read_text().splitlines()
    errors = [json.loads(x) for x in (tmp_path / "r.errors.jsonl").read_text().splitlines()]
    assert len(saved) + len(errors) == 300 and errors
    assert all("server asked to retry after 86400 s, over the 60 s limit" in e["error"]
               for e in errors)
    assert srv.counts["requests"] < 300  # nothing sent to it once it said so
    healthy = mock_server()
    again = subprocess.run([sys.executable, "-m", "llmframe", "run", str(req), "-e",
                            healthy.url, "--retry-errors"], capture_output=True, text=True,
                           timeout=50)
    assert again.returncode == 0, again.stderr
    assert healthy.counts["ok"] == len(errors)


@pytest.mark.timeout(60)
def test_rows_of_an_endpoint_out_for_the_day_go_to_the_others(mock_server):
    out = mock_server(script=["429"], retry_after=86400)
    ok = mock_server()
    _results, stats = run_rows([f"q{i}" for i in range(200)], [out.url, ok.url], rps=500)
    assert stats.ok == 200 and stats.errors == 0
    assert out.counts["requests"] == 1  # out of the run after its answer


def test_aimd_windows_steer_but_never_cap_a_lone_endpoint():
    """Outside finding: a lone endpoint refusing half its requests had its window cut to
    1-3 in flight, 4-10x slower than a client that simply waits Retry-After."""
    import asyncio

    async def main():
        pool = EndpointPool(RunConfig(["http://127.0.0.1:9/v1"], concurrency=64))
        (t,) = pool.targets
        for k in range(40):  # half refused, over many seconds: the window collapses
            t.health.on_failure(float(k), "http_error", 429, retry_after=1.0, sent_at=k)
            t.health.on_success(float(k), 0.2)
        assert t.health.window < 8
        t.in_flight = 60
        picked = pool.pick(-1, 100.0)
        await pool.close()
        return picked is t

    assert asyncio.run(main())


@pytest.mark.timeout(90)
def test_half_refused_at_latency_keeps_the_run_going(mock_server):
    srv = mock_server(faults={"429": 0.5}, retry_after=0.2, latency=0.1, seed=5)
    srv.state.record_arrivals = True
    _, stats = run_rows([f"q{i}" for i in range(600)], [srv.url], rps=500, concurrency=64,
                        max_attempts=20)
    assert stats.ok == 600
    arrivals = sorted(srv.state.arrivals)
    # ~1,200 attempts at <= 500/s plus the waits: a per-request client needs ~3 s; a
    # collapsed window (1-3 in flight at 0.1 s) would need minutes
    assert arrivals[-1] - arrivals[0] < 2 * (srv.counts["requests"] / 500 + 1)


@pytest.mark.timeout(60)
def test_a_row_waits_its_retry_after_when_no_other_endpoint_is_healthy(mock_server):
    """Outside finding: with a dead second endpoint, rows skipped their Retry-After, burnt
    their attempts on backoffs and ended as errors."""
    a = mock_server(first_fault="429", retry_after=1.5)
    dead = mock_server()
    dead_url = dead.url
    dead.stop()
    _, stats = run_rows([f"q{i}" for i in range(50)], [a.url, dead_url])
    assert stats.ok == 50 and stats.errors == 0


@pytest.mark.timeout(90)
def test_an_endpoints_own_rps_keeps_its_pace_while_another_is_paused(mock_server):
    """Second outside review: with an endpoint-level rps, the dispatcher slept until a
    pause ended (up to 1 s) instead of until the limiter refilled: ~1 row/s."""
    srv = mock_server(first_fault="429", retry_after=1)
    srv.state.record_arrivals = True
    _, stats = run_rows([f"q{i}" for i in range(100)], [{"url": srv.url, "rps": 50}])
    assert stats.ok == 100
    arrivals = sorted(srv.state.arrivals)
    assert arrivals[-1] - arrivals[0] < 2 * (srv.counts["requests"] / 50 + 1)


def test_a_healthy_endpoint_without_room_is_not_elsewhere():
    import asyncio

    async def main():
        pool = EndpointPool(RunConfig([{"url": "http://127.0.0.1:9/v1", "concurrency": 4},
                                       "http://127.0.0.1:10/v1"]))
        a, b = pool.targets
        a.health.on_success(0.0, 0.1)
        with_room = pool.elsewhere(b, 1.0)
        a.in_flight = 4
        full = pool.elsewhere(b, 1.0)
        await pool.close()
        return with_room, full

    assert asyncio.run(main()) == (True, False)


def test_a_pause_never_queues_rows_behind_a_full_endpoint():
    """Second outside review: a paused endpoint's rows queued behind a slow endpoint with
    4 slots (3x slower than a client that simply waits Retry-After)."""
    import asyncio

    async def main():
        pool = EndpointPool(RunConfig([{"url": "http://127.0.0.1:9/v1", "concurrency": 4},
                                       "http://127.0.0.1:10/v1"]))
        slow, paused = pool.targets
        for _ in range(10):
            paused.health.on_failure(1.0, "http_error", 429, retry_after=15.0, sent_at=1.0)
        first = pool.pick(-1, 2.0)  # the slow one has room: the pause steers there
        slow.in_flight = 4
        second = pool.pick(-1, 2.0)  # no room left anywhere else: use the paused one
        await pool.close()
        return first is slow, second is paused

    assert asyncio.run(main()) == (True, True)
