"""The mock server's provider mode over raw HTTP: rpm/tpm token buckets, 429s with
Retry-After, OpenAI and Anthropic rate-limit headers, a spent quota, usage from the prompt.

Nothing here asserts on wall-clock durations: numbers come from the server's headers and its
own clock (``state.admitted``), and every loop is bounded."""

from __future__ import annotations

import datetime as dt
import http.client
import math
import re
import time
from typing import Any

import orjson
import pytest

from llmframe.testing import MockServer, MockState
from llmframe.testing._provider import go_duration, rfc3339

CHAT = "/v1/chat/completions"
GO_DURATION = re.compile(r"^(?:(?:\d+h)?(?:\d+m)?\d+(?:\.\d{1,3})?s|\d+ms)$")
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


def _conn(srv: MockServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)


def _post(conn: http.client.HTTPConnection, doc: dict[str, Any],
          path: str = CHAT) -> tuple[int, http.client.HTTPMessage, Any]:
    conn.request("POST", path, body=orjson.dumps(doc), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.headers, orjson.loads(resp.read())


def _chat(prompt: str, **params: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], **params}


# "one two three": prompt 3 words + 4 (one message) + 3 = 10; answer "echo: one two three" = 5
ONE_TWO_THREE = _chat("one two three")
COST = 15


def _seconds_of_go(text: str) -> float:
    """A Go duration string as seconds (the subset the mock sends)."""
    if text.endswith("ms"):
        return int(text[:-2]) / 1000
    found = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?([\d.]+)s", text)
    assert found, text
    hours, minutes, secs = found.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs)


def _retry_after(headers: http.client.HTTPMessage) -> float:
    """Retry-After (seconds) after checking it agrees with retry-after-ms."""
    seconds = headers["Retry-After"]
    assert NUMBER.match(seconds), seconds
    ms = headers["retry-after-ms"]
    assert ms.isdigit() and int(ms) >= 1
    assert math.isclose(float(seconds) * 1000, int(ms), abs_tol=1e-6)
    return float(seconds)


def test_rpm_limit_answers_429_with_retry_after_and_the_headers_count_down(mock_server):
    srv = mock_server(rpm=6, window=30)  # a bucket of 3 requests, one back every 10 s
    conn = _conn(srv)
    remaining = []
    for _ in range(3):
        status, headers, doc = _post(conn, ONE_TWO_THREE)
        assert status == 200
        assert doc["choices"][0]["message"]["content"] == "echo: one two three"
        assert headers["x-ratelimit-limit-requests"] == "6"
        assert GO_DURATION.match(headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in headers  # no tpm: no token headers
        remaining.append(headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    status, headers, doc = _post(conn, ONE_TWO_THREE)
    conn.close()
    assert status == 429
    assert 0 < _retry_after(headers) <= 10.001  # one request refills in 10 s
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert doc["error"]["type"] == "requests"
    assert doc["error"]["code"] == "rate_limit_exceeded"
    assert doc["error"]["message"].startswith("Rate limit reached for requests")
    assert srv.counts["ok"] == 3
    assert srv.counts["429"] == 1
    assert srv.counts["429_requests"] == 1
    assert srv.counts["429_tokens"] == 0


def test_waiting_retry_after_is_enough(mock_server):
    srv = mock_server(rpm=600, window=0.2)  # 2 requests deep, 10 per second
    conn = _conn(srv)
    refused = []
    for _ in range(50):  # at 10/s the bucket empties long before 50 quick requests
        status, headers, _ = _post(conn, ONE_TWO_THREE)
        if status == 429:
            refused.append(_retry_after(headers))
            break
    assert refused, "the rpm limit never refused a request"
    assert 0 < refused[0] <= 0.101
    for _ in range(5):
        time.sleep(refused[-1])
        status, headers, _ = _post(conn, ONE_TWO_THREE)
        if status == 200:  # by the server's clock this came at least Retry-After later
            break
        refused.append(_retry_after(headers))
    conn.close()
    assert status == 200, refused
    assert len(refused) == 1


def test_tpm_limit_counts_the_answers_usage(mock_server):
    srv = mock_server(tpm=6, window=600)  # 60 tokens deep, 0.1 token back per second
    conn = _conn(srv)
    remaining = []
    for _ in range(4):
        status, headers, doc = _post(conn, ONE_TWO_THREE)
        assert status == 200
        assert doc["usage"]["total_tokens"] == COST
        assert headers["x-ratelimit-limit-tokens"] == "6"
        reset = headers["x-ratelimit-reset-tokens"]
        assert GO_DURATION.match(reset)
        assert 0 < _seconds_of_go(reset) <= 600
        assert "x-ratelimit-limit-requests" not in headers
        remaining.append(headers["x-ratelimit-remaining-tokens"])
    assert remaining == ["45", "30", "15", "0"]
    status, headers, doc = _post(conn, ONE_TWO_THREE)
    assert status == 429
    assert 0 < _retry_after(headers) <= 150.001  # 15 tokens at 0.1 per second
    assert doc["error"]["type"] == "tokens"
    assert doc["error"]["code"] == "rate_limit_exceeded"
    assert doc["error"]["message"].startswith("Rate limit reached for tokens")
    # a request larger than the whole bucket can never pass: no Retry-After
    status, headers, doc = _post(conn, _chat(" ".join(["word"] * 80)))
    conn.close()
    assert status == 429
    assert "Retry-After" not in headers
    assert doc["error"]["type"] == "tokens"
    assert doc["error"]["message"].startswith("Request too large for tokens")
    assert srv.counts["429_tokens"] == 2
    assert srv.counts["too_large"] == 1
    assert srv.counts["429"] == 2
    assert sum(srv.state.tokens_by_second.values()) == 4 * COST


def test_no_window_admits_more_than_the_bucket_plus_its_refill(mock_server):
    srv = mock_server(tpm=30000, window=0.1)  # 50 tokens deep, 500 back per second
    srv.state.record_arrivals = True
    conn = _conn(srv)
    for _ in range(300):  # bounded: 40 answers need ~1 s of refill
        status, headers, _ = _post(conn, ONE_TWO_THREE)
        if status == 429:
            time.sleep(_retry_after(headers))
        elif srv.counts["ok"] >= 40:
            break
    conn.close()
    assert srv.counts["ok"] == 40
    assert srv.counts["429_tokens"] > 0
    admitted = srv.state.admitted  # (arrival by the server's clock, tokens)
    assert len(admitted) == 40
    assert {tokens for _, tokens in admitted} == {COST}
    assert sum(srv.state.tokens_by_second.values()) == 40 * COST
    for span, most in ((0.1, 50 + 50), (1.0, 50 + 500)):
        for start, _ in admitted:
            seen = sum(n for t, n in admitted if start <= t < start + span)
            assert seen <= most + 1e-3, (span, start, seen)


def test_openai_header_format(mock_server):
    srv = mock_server(rpm=90.5, tpm=100000, ratelimit_headers="openai")
    conn = _conn(srv)
    status, headers, _ = _post(conn, ONE_TWO_THREE)
    conn.close()
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "90.5"
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert headers["x-ratelimit-remaining-requests"] == "89"
    assert headers["x-ratelimit-remaining-tokens"] == str(100000 - COST)
    for kind in ("requests", "tokens"):
        reset = headers[f"x-ratelimit-reset-{kind}"]
        assert GO_DURATION.match(reset), reset
        assert 0 < _seconds_of_go(reset) <= 1
    assert not [k for k in headers if k.lower().startswith("anthropic-")]


def test_anthropic_header_format(mock_server):
    srv = mock_server(rpm=6, tpm=600, window=30, ratelimit_headers="anthropic")
    srv.state.record_arrivals = True
    conn = _conn(srv)
    status, headers, _ = _post(conn, ONE_TWO_THREE)
    conn.close()
    assert status == 200
    assert headers["anthropic-ratelimit-requests-limit"] == "6"
    assert headers["anthropic-ratelimit-requests-remaining"] == "2"
    assert headers["anthropic-ratelimit-tokens-limit"] == "600"
    assert headers["anthropic-ratelimit-tokens-remaining"] == str(300 - COST)
    arrival = srv.state.arrivals[0]  # the server's clock
    for kind, refill in (("requests", 10.0), ("tokens", COST / 10)):
        reset = headers[f"anthropic-ratelimit-{kind}-reset"]
        assert RFC3339_MS.match(reset), reset
        when = dt.datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp()
        assert arrival < when <= arrival + refill + 0.002, kind
    assert not [k for k in headers if k.lower().startswith("x-ratelimit-")]


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.012, "12ms"), (1, "1s"), (360, "6m0s"), (90.5, "1m30.5s"),
    (3725, "1h2m5s"), (0.0001, "1ms")])
def test_go_durations(seconds, text):
    assert go_duration(seconds) == text
    assert GO_DURATION.match(text)


def test_rfc3339_is_utc_with_milliseconds():
    when = dt.datetime(2026, 11, 29, 10, 0, 30, 250000, tzinfo=dt.timezone.utc).timestamp()
    assert rfc3339(when) == "2026-11-29T10:00:30.250Z"


def test_quota_spent_answers_insufficient_quota_without_retry_after(mock_server):
    srv = mock_server(quota=3)
    conn = _conn(srv)
    for _ in range(3):
        assert _post(conn, ONE_TWO_THREE)[0] == 200
    for _ in range(2):
        status, headers, doc = _post(conn, ONE_TWO_THREE)
        assert status == 429
        assert "Retry-After" not in headers
        assert "retry-after-ms" not in headers
        assert doc == {"error": {
            "message": "You exceeded your current quota, please check your plan and billing "
                       "details.",
            "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
    conn.request("GET", "/v1/_stats")
    stats = orjson.loads(conn.getresponse().read())
    conn.close()
    assert srv.counts["ok"] == 3
    assert srv.counts["insufficient_quota"] == 2
    assert srv.counts["429"] == 2
    assert stats["counts"]["insufficient_quota"] == 2
    assert stats["provider"]["quota_left"] == 0


def test_stats_show_the_provider_counters(mock_server):
    srv = mock_server(rpm=6, tpm=600, window=10)  # one request deep
    conn = _conn(srv)
    assert _post(conn, ONE_TWO_THREE)[0] == 200
    assert _post(conn, ONE_TWO_THREE)[0] == 429
    conn.request("GET", "/v1/_stats")
    stats = orjson.loads(conn.getresponse().read())
    conn.close()
    assert stats["counts"]["429_requests"] == 1
    assert stats["provider"]["requests"]["per_minute"] == 6
    assert stats["provider"]["requests"]["remaining"] == 0
    assert stats["provider"]["tokens"]["bucket"] == 100
    assert sum(stats["provider"]["tokens_by_second"].values()) == COST


def test_usage_is_counted_from_the_request(mock_server):
    srv = mock_server()
    conn = _conn(srv)
    two = {"messages": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "Hello, world!"}]}
    status, _, doc = _post(conn, two)
    assert status == 200
    # messages: "be brief" 2 + "Hello, world!" 4 + 4 per message + 3; answer "echo: Hello, world!"
    assert doc["usage"] == {"prompt_tokens": 17, "completion_tokens": 6, "total_tokens": 23,
                            "prompt_tokens_details": {"cached_tokens": 0},
                            "completion_tokens_details": {"reasoning_tokens": 0}}
    assert doc["choices"][0]["finish_reason"] == "stop"
    parts = {"messages": [{"role": "user",
                           "content": [{"type": "text", "text": "Hello, world!"}]}]}
    assert _post(conn, parts)[2]["usage"]["prompt_tokens"] == 4 + 4 + 3
    status, _, doc = _post(conn, {"prompt": "Say hi"}, "/v1/completions")
    assert status == 200
    assert doc["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    conn.close()


def test_max_tokens_caps_the_answer_with_finish_reason_length(mock_server):
    srv = mock_server()
    conn = _conn(srv)
    status, _, doc = _post(conn, _chat("Hello, world!", max_tokens=3))
    assert status == 200
    assert doc["choices"][0]["message"]["content"] == "echo: Hello"
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 3
    assert doc["usage"]["total_tokens"] == 11 + 3
    doc = _post(conn, _chat("Hello, world!", max_completion_tokens=2, max_tokens=50))[2]
    assert doc["choices"][0]["message"]["content"] == "echo:"
    assert doc["usage"]["completion_tokens"] == 2
    doc = _post(conn, _chat("Hello, world!", max_tokens=6))[2]  # exactly enough
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["choices"][0]["message"]["content"] == "echo: Hello, world!"
    doc = _post(conn, {"prompt": "Say hi", "max_tokens": 1}, "/v1/completions")[2]
    assert doc["choices"][0]["text"] == "echo"
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 1
    status, _, doc = _post(conn, _chat("x", max_tokens=-1))
    conn.close()
    assert status == 400
    assert "max_tokens" in doc["error"]["message"]


def test_a_capped_answer_costs_its_capped_usage(mock_server):
    srv = mock_server(tpm=6, window=600)
    conn = _conn(srv)
    status, headers, doc = _post(conn, _chat("one two three", max_tokens=1))
    conn.close()
    assert status == 200
    assert doc["usage"]["total_tokens"] == 10 + 1
    assert headers["x-ratelimit-remaining-tokens"] == str(60 - 11)


def test_defaults_send_no_rate_limit_headers(mock_server):
    srv = mock_server()
    srv.state.record_arrivals = True
    conn = _conn(srv)
    for _ in range(5):
        status, headers, _ = _post(conn, ONE_TWO_THREE)
        assert status == 200
        assert not [k for k in headers if "ratelimit" in k.lower() or "retry" in k.lower()]
    conn.request("GET", "/v1/_stats")
    stats = orjson.loads(conn.getresponse().read())
    conn.close()
    assert "provider" not in stats
    assert srv.state.provider is False
    assert srv.state.limits is None
    assert srv.counts == {"requests": 5, "ok": 5}
    assert [n for _, n in srv.state.admitted] == [COST] * 5  # recorded when asked
    assert not srv.state.tokens_by_second


@pytest.mark.parametrize(("options", "problem"), [
    ({"rpm": 0.5}, "rpm"), ({"tpm": 60, "window": 0.5}, "tpm"), ({"window": 0}, "window"),
    ({"quota": -1}, "quota"), ({"rpm": 60, "ratelimit_headers": "azure"}, "ratelimit_headers"),
    ({"ratelimit_headers": "openai"}, "needs rpm"),
])
def test_provider_options_are_validated(options, problem):
    with pytest.raises(ValueError, match=problem):
        MockState(**options)
