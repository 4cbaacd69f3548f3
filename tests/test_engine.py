"""The engine against real mock servers on 127.0.0.1."""

import asyncio
import re
from collections import Counter

import pytest

from conftest import run_rows


def test_every_row_gets_exactly_its_own_answer_under_uneven_latency(mock_server):
    fast = mock_server(latency=(0.0, 0.01), seed=1)
    slow = mock_server(latency=(0.0, 0.2), seed=2)
    prompts = [f"question {i} {'x' * (i % 7)}" for i in range(600)]
    results, stats = run_rows(prompts, [fast.url, slow.url], concurrency=64)
    assert sorted(results) == list(range(600))
    for i, text in enumerate(prompts):
        assert results[i].response == f"echo: {text}", i
        assert results[i].error is None
        assert results[i].finish_reason == "stop"
        # the mock counts word/punctuation tokens + 4 per message + 3
        assert results[i].prompt_tokens == len(re.findall(r"\w+|[^\w\s]", text)) + 7
    assert stats.ok == 600 and stats.errors == 0


def test_weighted_shares_through_real_servers(mock_server):
    servers = [mock_server(latency=0.001) for _ in range(3)]
    eps = [{"url": s.url, "weight": w} for s, w in zip(servers, (1, 2, 3), strict=True)]
    results, _ = run_rows([f"p{i}" for i in range(1200)], eps, concurrency=32)
    shares = Counter(r.endpoint for r in results.values())
    for srv, w in zip(servers, (1, 2, 3), strict=True):
        assert abs(shares[srv.url] / 1200 - w / 6) < 0.03
        assert srv.counts["ok"] == shares[srv.url]


def test_400_is_not_retried(mock_server):
    srv = mock_server()
    # raw mode posts the row as the body; the server rejects a body without messages
    results, stats = run_rows([(0, {"not_messages": 1}, None)], [srv.url], api="raw",
                              max_attempts=5)
    r = results[0]
    assert r.error_type == "http_error" and r.status == 400 and r.attempts == 1
    assert "HTTP 400" in r.error and srv.url in r.error
    assert srv.counts["requests"] == 1
    assert stats.retries == 0


def test_401_is_not_retried_and_key_is_redacted_from_echoed_bodies(mock_server, monkeypatch):
    monkeypatch.setenv("LLMF_TEST_KEY", "sk-test-0123456789")
    srv = mock_server(require_key="other", echo_auth=True)
    results, _ = run_rows(["hi"], [{"url": srv.url, "api_key_env": "LLMF_TEST_KEY"}])
    r = results[0]
    assert r.status == 401 and r.attempts == 1
    assert "sk-test-0123456789" not in r.error
    assert srv.auth_seen == {"Bearer sk-test-0123456789": 1}


def test_retry_after_is_honoured(mock_server):
    srv = mock_server(script=["429"], retry_after=1)
    srv.state.record_arrivals = True
    results, stats = run_rows(["hi"], [srv.url], max_attempts=3)
    assert results[0].response == "echo: hi" and results[0].attempts == 2
    assert stats.retries == 1
    first, second = srv.state.arrivals  # the server's clock: it waited what was asked
    assert second - first >= 0.99  # (the backoff alone would be ~0.5 s)


def test_failover_away_from_an_endpoint_answering_500(mock_server):
    broken = mock_server(faults={"500": 1.0})
    good = mock_server()
    results, _ = run_rows([f"q{i}" for i in range(100)], [broken.url, good.url],
                          max_attempts=2, backoff_initial=0.01)
    assert all(r.error is None and r.endpoint == good.url for r in results.values())
    assert Counter(r.attempts for r in results.values()) == {1: 50, 2: 50}
    assert broken.counts["500"] == 50


def test_retryable_faults_recover_and_permanent_failures_are_reported(mock_server):
    srv = mock_server(script=["503", "drop", "malformed", "500"])
    results, stats = run_rows(["a"], [srv.url], max_attempts=5, backoff_initial=0.01)
    assert results[0].response == "echo: a" and results[0].attempts == 5
    assert stats.retries == 4
    # permanent: a fault that never clears ends the row after max_attempts, reported
    dead = mock_server(faults={"500": 1.0})
    results, stats = run_rows(["b", "c"], [dead.url], max_attempts=3, backoff_initial=0.01)
    for r in results.values():
        assert r.error_type == "http_error" and r.status == 500 and r.attempts == 3
        assert "HTTP 500" in r.error and "after 3 attempts" in r.error
    assert stats.errors == 2 and dead.counts["requests"] == 6


def test_timeouts_end_as_timeout_errors(mock_server):
    srv = mock_server(faults={"hang": 1.0})
    results, _ = run_rows(["a", "b"], [srv.url], timeout=0.3, max_attempts=2,
                          backoff_initial=0.01)
    for r in results.values():
        assert r.error_type == "timeout" and r.attempts == 2
        assert "no answer within 0.3 s" in r.error and "after 2 attempts" in r.error


def test_connection_refused_is_an_error_row_not_a_crash(mock_server):
    srv = mock_server()
    url = srv.url
    srv.stop()
    results, _ = run_rows(["a"], [url], max_attempts=2, backoff_initial=0.01)
    assert results[0].error_type == "connection_error"


def test_bad_rows_become_error_rows(mock_server):
    srv = mock_server()
    rows = [
        (0, {"input": "fine"}, None),
        (1, {"input": 3}, None),
        (2, {"text": "no input"}, None),
        (3, {"messages": "nope"}, None),
        (4, {"messages": [{"role": "user", "content": "hi"}]}, None),
        (5, {"input": "x"}, "requests.jsonl line 6: not valid JSON"),
    ]
    results, stats = run_rows(rows, [srv.url])
    assert results[0].response == "echo: fine"
    assert results[1].error == '"input" must be a string, got a number'
    assert results[2].error == 'missing "input" (or "messages")'
    assert "messages" in results[3].error
    assert results[4].response == "echo: hi"
    assert results[5].error == "requests.jsonl line 6: not valid JSON"
    assert stats.ok == 2 and stats.errors == 4
    assert srv.counts["requests"] == 2


def test_rate_limit_holds_in_every_second_including_the_first(mock_server):
    srv = mock_server()
    srv.state.record_arrivals = True
    run_rows([f"r{i}" for i in range(450)], [srv.url], rps=200)
    arrivals = sorted(srv.state.arrivals)
    assert len(arrivals) == 450
    # the densest 1-second window anywhere in the run (a sliding window)
    j = 0
    densest = 0
    for i, t in enumerate(arrivals):
        while arrivals[j] < t - 1.0:
            j += 1
        densest = max(densest, i - j + 1)
    assert densest <= 200 * 1.03 + 1, densest
    assert arrivals[-1] - arrivals[0] >= 2.0  # 450 requests at 200/s take > 2 s


def test_concurrency_bounds_requests_in_flight(mock_server):
    srv = mock_server(latency=0.05)
    run_rows([f"r{i}" for i in range(60)], [srv.url], concurrency=5)
    assert srv.state.max_in_flight == 5


def test_per_endpoint_concurrency_sends_the_rest_elsewhere(mock_server):
    narrow = mock_server(latency=0.05)
    wide = mock_server(latency=0.05)
    eps = [{"url": narrow.url, "weight": 10, "max_concurrency": 2}, wide.url]
    results, _ = run_rows([f"r{i}" for i in range(100)], eps, concurrency=20)
    assert narrow.state.max_in_flight <= 2
    assert len(results) == 100 and all(r.error is None for r in results.values())
    assert wide.counts["ok"] > narrow.counts["ok"]


def test_key_goes_to_its_endpoint_only(mock_server, monkeypatch):
    monkeypatch.setenv("KEY_A", "sk-aaaa")
    a, b = mock_server(), mock_server()
    run_rows([f"r{i}" for i in range(20)], [{"url": a.url, "api_key_env": "KEY_A"}, b.url])
    assert set(a.auth_seen) == {"Bearer sk-aaaa"}
    assert not b.auth_seen


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_api_flavours(mock_server, api):
    srv = mock_server()
    results, _ = run_rows(["hello"], [srv.url], api=api, system="be brief",
                          params={"temperature": 0.1})
    expected = "echo: hello" if api == "chat" else "echo: be brief\n\nhello"
    assert results[0].response == expected


def test_raw_api_keeps_the_response_json(mock_server):
    srv = mock_server()
    body = {"model": "m", "messages": [{"role": "user", "content": "yo"}]}
    results, _ = run_rows([(0, body, None)], [srv.url], api="raw")
    raw = results[0].response
    assert raw["choices"][0]["message"]["content"] == "echo: yo" and raw["model"] == "m"


@pytest.mark.parametrize("fault", ["badgzip", "badgzip_close"])
def test_a_body_that_says_gzip_but_is_not_is_a_retried_invalid_response(mock_server, fault):
    """Defect 4: zlib.error escaped the fast transport: a connection error, or a hang until
    the timeout when the body ended at connection close."""
    srv = mock_server(script=[fault])
    results, _ = run_rows(["a"], [srv.url], backoff_initial=0.01)
    assert results[0].response == "echo: a" and results[0].attempts == 2
    bad = mock_server(faults={fault: 1.0})
    results, _ = run_rows(["a"], [bad.url], max_attempts=2, backoff_initial=0.01, timeout=30)
    r = results[0]
    assert r.error_type == "invalid_response" and "gzip" in r.error  # not "timeout"


def test_a_result_that_cannot_be_stored_stops_the_run_loudly(mock_server):
    """Defect 5: an exception in on_result lost the row and the run ended 'normally'."""
    from llmframe import RunConfig, StoreError, stream_results
    from llmframe._runner import run_sync

    srv = mock_server()
    stored = []

    def store(r):
        if len(stored) == 10:
            raise OSError(28, "No space left on device")
        stored.append(r.index)

    async def main():
        async for _ in stream_results([(i, {"input": f"q{i}"}, None) for i in range(200)],
                                      RunConfig([srv.url], concurrency=4), on_result=store):
            pass

    with pytest.raises(StoreError, match="No space left on device") as info:
        run_sync(main)
    assert isinstance(info.value.__cause__, OSError)
    assert len(stored) == 10  # what was stored stays stored


def test_stop_counts_rows_waiting_out_their_backoff(mock_server):
    """Defect 6: stop() missed retries still waiting their backoff."""
    from llmframe import RunConfig, RunControl, RunStats, stream_results
    from llmframe._runner import run_sync

    srv = mock_server(faults={"500": 1.0})
    stats, control = RunStats(), RunControl()

    async def main():
        async def stop_when_all_wait():
            while stats.retries < 20:
                await asyncio.sleep(0.01)
            control.stop()

        watcher = asyncio.get_running_loop().create_task(stop_when_all_wait())
        rows = [(i, {"input": f"q{i}"}, None) for i in range(20)]
        async for _ in stream_results(rows, RunConfig([srv.url], backoff_initial=30,
                                                      max_attempts=3), stats, control):
            pass
        await watcher

    run_sync(main)
    assert stats.rows == 20 and stats.done == 0 and stats.unfinished == 20


def test_engine_without_sockets_through_a_mock_transport():
    """The transport seam: a MockTransport answers, so the engine runs with no network."""
    from llmframe._transport import TransportError
    from llmframe.testing import MockTransport

    calls = []

    def handler(body):
        calls.append(body)
        if len(calls) == 1:
            raise TransportError("protocol", "connection reset")
        return 200, {}, b'{"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}'

    results, _stats = run_rows(["a"], ["http://llm.invalid/v1"], backoff_initial=0.01,
                              transport=lambda url, headers: MockTransport(handler))
    assert results[0].response == "hi" and results[0].attempts == 2 and len(calls) == 2
