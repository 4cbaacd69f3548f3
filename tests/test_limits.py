"""Paid providers end to end: token limits, rate-limit headers, spent quota, usage, cost,
budget and dry run — llmframe against the mock server's provider mode on 127.0.0.1."""

from __future__ import annotations

import polars as pl
import pytest
from test_cli import read_jsonl, run_cli, write_requests

import llmframe

from conftest import run_rows


def _rate(admitted: list[tuple[float, int]]) -> float:
    """Tokens per second the server admitted over the second half of the run (its clock)."""
    half = admitted[len(admitted) // 2:]
    span = half[-1][0] - half[0][0]
    return sum(tokens for _, tokens in half[1:]) / span


def _max_window(admitted: list[tuple[float, int]], seconds: float = 1.0) -> int:
    """The most tokens the server admitted in any ``seconds`` (its clock)."""
    best, start, total = 0, 0, 0
    for t, tokens in admitted:
        total += tokens
        while admitted[start][0] <= t - seconds:
            total -= admitted[start][1]
            start += 1
        best = max(best, total)
    return best


def test_a_run_at_the_token_limit_sees_no_429_and_uses_the_limit(mock_server):
    tpm = 60_000  # 1,000 tokens/s; the server's bucket holds 1 s worth
    srv = mock_server(tpm=tpm, window=1.0, latency=0.05)
    srv.state.record_arrivals = True
    texts = [f"question number {i} about a long enough topic" for i in range(200)]
    results, stats = run_rows(texts, [{"url": srv.url, "tpm": tpm}], concurrency=64)
    assert all(r.ok for r in results.values()), next(r.error for r in results.values()
                                                     if not r.ok)
    assert srv.counts["429"] == 0
    per_request = results[0].prompt_tokens + results[0].completion_tokens
    admitted = srv.state.admitted
    assert len(admitted) == 200
    # smooth: no second sees more than tpm/60 plus one request's worth (+1% burst)
    assert _max_window(admitted) <= tpm / 60 * 1.01 + per_request + 1
    # and the limit is used, not wasted (the server's own clock)
    assert _rate(admitted) >= 0.8 * tpm / 60
    assert stats.prompt_tokens == sum(r.prompt_tokens for r in results.values())


def test_without_a_token_limit_the_same_run_is_refused(mock_server):
    """The control: the limit above is what kept the run clean."""
    srv = mock_server(tpm=60_000, window=1.0, latency=0.05)
    texts = [f"question number {i} about a long enough topic" for i in range(200)]
    run_rows(texts, [srv.url], concurrency=64, max_attempts=10,
             max_retry_after=5)
    assert srv.counts["429"] > 0


@pytest.mark.parametrize("style", ["openai", "anthropic"])
def test_limits_are_learned_from_the_headers(mock_server, style):
    srv = mock_server(rpm=1200, tpm=60_000, window=1.0, latency=0.02,
                      ratelimit_headers=style)
    srv.state.record_arrivals = True
    results, stats = run_rows([f"q {i}" for i in range(80)], [srv.url], concurrency=4)
    assert all(r.ok for r in results.values())
    assert srv.counts["429"] == 0
    assert stats.endpoints[0].note == "learned rpm 1,200, tpm 60,000 from its headers"
    # paced at 20 requests/s once learned: no second sees more than 20 + the first burst
    arrivals = [t for t, _ in srv.state.admitted]
    assert max(sum(1 for t in arrivals if s <= t < s + 1) for s in arrivals) <= 20 + 4


def test_remaining_zero_holds_the_endpoint_until_the_reset(mock_server):
    """The user set a wrong (too high) rpm: the headers still prevent a 429 storm."""
    srv = mock_server(rpm=1200, window=1.0, latency=0.01)  # 20 per second, bucket of 20
    results, _ = run_rows([f"q {i}" for i in range(60)], [{"url": srv.url, "rpm": 60_000}],
                          concurrency=1)
    assert all(r.ok for r in results.values())
    assert srv.counts["429"] == 0


def test_a_spent_quota_is_not_retried_and_ends_the_run_at_once(mock_server, tmp_path):
    srv = mock_server(quota=40, latency=0.01)
    req = write_requests(tmp_path / "r.jsonl", [{"input": f"q {i}"} for i in range(400)])
    proc = run_cli("run", req, "-e", srv.url, "--max-attempts", 5)
    assert proc.returncode == 1, proc.stderr
    refused = srv.counts["insufficient_quota"]
    assert 1 <= refused <= 40, refused  # only what was in flight when it ran out
    assert srv.counts["requests"] == 40 + refused
    saved = read_jsonl(tmp_path / "r.save.jsonl")
    errors = read_jsonl(tmp_path / "r.errors.jsonl")
    assert len(saved) == 40 and len(errors) == 360
    assert all("quota" in e["error"] for e in errors)
    assert {e["error_type"] for e in errors} <= {"quota_exceeded", "unavailable"}
    assert "out: quota spent" in proc.stderr


def test_a_spent_quota_sends_the_rows_to_the_other_endpoint(mock_server):
    spent = mock_server(quota=10, latency=0.01)
    good = mock_server(latency=0.01)
    results, stats = run_rows([f"q {i}" for i in range(200)], [spent.url, good.url],
                              max_attempts=1, rps=200)
    assert all(r.ok for r in results.values()), next(r.error for r in results.values()
                                                     if not r.ok)
    # refused: only what was in flight to it when its quota ran out (about 1 at this pace)
    assert spent.counts["ok"] == 10 and spent.counts["insufficient_quota"] <= 5
    assert stats.endpoints[0].note == "out: quota spent"


def test_usage_and_cost_per_row_in_files_and_frames(mock_server, tmp_path):
    srv = mock_server()
    spec = f"url={srv.url},price_in=2.5,price_out=10"
    req = write_requests(tmp_path / "r.jsonl", [{"input": "hello there"}])
    proc = run_cli("run", req, "-e", spec)
    assert proc.returncode == 0, proc.stderr
    line = read_jsonl(tmp_path / "r.save.jsonl")[0]
    assert line["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "cached_tokens": 0,
                             "reasoning_tokens": 0}
    assert line["cost_usd"] == pytest.approx((9 * 2.5 + 4 * 10) / 1e6)
    assert "tokens 9 in + 4 out, $0.0001 spent" in proc.stderr
    df = pl.DataFrame({"p": ["hello there", None]})
    out = df.llm.complete("p", endpoints=[{"url": srv.url, "price_in": 2.5, "price_out": 10}],
                          metadata=True, progress=False)
    assert out["cost_usd"][0] == pytest.approx(line["cost_usd"])
    assert out["cached_tokens"].to_list() == [0, None]
    assert out["completion_tokens"].to_list() == [4, None]


def test_a_budget_stops_within_one_request_and_resume_sends_the_rest(mock_server, tmp_path):
    srv = mock_server(latency=0.01)
    # $0.001 per token; a request is 9 + 4 tokens, at most 10 + 7 + 10 reserved
    spec = f"url={srv.url},price_in=1000,price_out=1000"
    req = write_requests(tmp_path / "r.jsonl", [{"input": f"q {i}"} for i in range(100)])
    proc = run_cli("run", req, "-e", spec, "--budget", "0.5", "--max-tokens", 10)
    assert proc.returncode == 3, proc.stderr
    saved = read_jsonl(tmp_path / "r.save.jsonl")
    spent = sum(x["cost_usd"] for x in saved)
    worst = (10 + 7 + 10) * 1000 / 1e6
    assert 0.5 - worst < spent <= 0.5
    assert srv.counts["requests"] == len(saved)
    assert (f"stopped by the budget: {100 - len(saved)} rows not sent; rerun with --resume "
            "and a larger --budget") in proc.stderr
    # the budget is for the whole job: the same budget again sends nothing more
    sent = srv.counts["requests"]
    proc = run_cli("run", req, "-e", spec, "--budget", "0.5", "--max-tokens", 10, "--resume")
    assert proc.returncode == 3 and srv.counts["requests"] == sent, proc.stderr
    assert "already spent by the answers in r.save.jsonl" in proc.stderr
    # a dry run of the resumed run prices only the rest
    proc = run_cli("run", req, "-e", spec, "--budget", "5", "--max-tokens", 10, "--resume",
                   "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"dry run: {100 - len(saved)} rows to send" in proc.stdout
    assert f"resuming: {len(saved)} rows already have a result" in proc.stdout
    proc = run_cli("run", req, "-e", spec, "--budget", "5", "--max-tokens", 10, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert srv.counts["requests"] == 100
    assert sorted(x["index"] for x in read_jsonl(tmp_path / "r.save.jsonl")) == list(range(100))


def test_a_budget_in_polars_raises_with_the_partial_frame(mock_server):
    srv = mock_server()
    df = pl.DataFrame({"p": [f"q {i}" for i in range(50)]})
    ep = {"url": srv.url, "price_in": 1000, "price_out": 1000}
    with pytest.raises(llmframe.BudgetReached, match="stopped by the budget") as info:
        df.llm.complete("p", endpoints=[ep], budget=0.2, params={"max_tokens": 10},
                        progress=False)
    partial = info.value.partial
    answered = partial.filter(pl.col("error").is_null())
    assert 0 < answered.height < 50 and info.value.not_sent == 50 - answered.height
    assert set(partial.filter(pl.col("error").is_not_null())["error"]) == {
        "not sent: stopped by the budget"}
    assert llmframe.recover() is partial


def test_a_budget_needs_prices_and_fails_before_sending(mock_server, tmp_path):
    srv = mock_server()
    req = write_requests(tmp_path / "r.jsonl", [{"input": "x"}])
    proc = run_cli("run", req, "-e", srv.url, "--budget", "1")
    assert proc.returncode == 2 and "price_in and price_out" in proc.stderr
    assert srv.counts["requests"] == 0


def test_dry_run_sends_and_writes_nothing(mock_server, tmp_path):
    srv = mock_server()
    lines = [{"input": "hello there"}, {"input": 5}, "not json",
             {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}]
    req = write_requests(tmp_path / "r.jsonl", lines)
    spec = f"url={srv.url},price_in=1,price_out=2,rpm=60"
    proc = run_cli("run", req, "-e", spec, "--dry-run", "--max-tokens", 100)
    assert proc.returncode == 0, proc.stderr
    assert srv.counts["requests"] == 0 and sorted(p.name for p in tmp_path.iterdir()) == [
        "r.jsonl"]
    out = proc.stdout
    assert "2 rows to send, 2 invalid" in out
    assert 'r.jsonl line 2: "input" must be a string' in out and "r.jsonl line 3" in out
    assert "up to 200 out" in out and "time: at least 2.0 s" in out


def test_token_limits_survive_hostile_message_contents(mock_server):
    srv = mock_server()
    odd = [
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url"}, None, 3]}]},
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"function": {"name": "f", "arguments": {"x": [1, 2]}}}]},
            {"role": "tool", "content": [{"text": 7}]}, {"role": "user", "content": "go"}]},
    ]
    rows = [(i, payload, None) for i, payload in enumerate(odd)]
    results, _ = run_rows(rows, [{"url": srv.url, "tpm": 100_000}], tpm=100_000)
    assert len(results) == 3 and all(r.ok for r in results.values())


@pytest.mark.timeout(60)
def test_a_global_tpm_with_a_large_max_tokens_does_not_stall(mock_server):
    """The first reservation (25,000 tokens) is far above what answers use: the answer's
    usage gives it back at once, the run does not wait out the whole debt."""
    srv = mock_server(tpm=30_000, window=2.0, latency=0.01)
    results, _ = run_rows([f"q {i}" for i in range(30)], [srv.url], tpm=30_000,
                          params={"max_tokens": 25_000})
    assert all(r.ok for r in results.values()) and srv.counts["429"] == 0


def test_prices_go_together():
    with pytest.raises(llmframe.ConfigError, match="price_in and price_out together"):
        llmframe.Endpoint("http://127.0.0.1:9/v1", price_in=1.0)


def test_the_polars_path_at_the_token_limit_sees_no_429(mock_server):
    srv = mock_server(tpm=30_000, window=1.0, latency=0.02)
    df = pl.DataFrame({"p": [f"question {i} on a topic" for i in range(60)]})
    out = df.llm.complete("p", endpoints=[{"url": srv.url, "tpm": 30_000, "price_in": 1,
                                           "price_out": 2}], metadata=True, progress=False)
    assert out["error"].null_count() == 60 and srv.counts["429"] == 0
    assert out["cost_usd"].null_count() == 0


def test_limits_and_prices_in_the_toml_endpoints_file(mock_server, tmp_path):
    srv = mock_server(tpm=30_000, window=1.0)
    toml = tmp_path / "endpoints.toml"
    toml.write_text(f'[[endpoints]]\nurl = "{srv.url}"\ntpm = 30000\nrpm = 600\n'
                    "price_in = 2.5\nprice_out = 10\n")
    req = write_requests(tmp_path / "r.jsonl", [{"input": f"q {i}"} for i in range(20)])
    proc = run_cli("run", req, "--endpoints-file", toml)
    assert proc.returncode == 0, proc.stderr
    lines = read_jsonl(tmp_path / "r.save.jsonl")
    assert all(x["cost_usd"] > 0 for x in lines) and srv.counts["429"] == 0
    assert "$" in proc.stderr and "spent" in proc.stderr
