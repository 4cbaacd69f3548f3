"""The response cache end to end: free reruns through the polars calls and the CLI, what is
and is not stored, shared by processes and threads, and a kill -9 mid-run."""

import json
import re
import signal
import subprocess
import threading

import polars as pl
import pytest
from test_cli import LLMFRAME, read_jsonl, run_cli, write_requests
from test_structured import CITY, expected

from llmframe import BudgetReached, ConfigError

from conftest import run_rows, wait_until


def test_a_second_identical_run_sends_nothing_and_gives_the_same_answers(
        tmp_path, mock_server):
    srv = mock_server(latency=0.002)
    cache = tmp_path / "c.sqlite3"
    df = pl.DataFrame({"p": [f"prompt {i}" for i in range(300)] + [None]})
    first = df.llm.complete("p", endpoints=[srv.url], cache=cache, metadata=True,
                            progress=False)
    assert srv.counts["requests"] == 300 and not first["cached"].any()
    second = df.llm.complete("p", endpoints=[srv.url], cache=cache, metadata=True,
                             progress=False)
    assert srv.counts["requests"] == 300  # none sent
    assert second["response"].to_list() == first["response"].to_list()
    assert second["cached"].to_list() == [True] * 300 + [None]
    assert second["attempts"].to_list()[:3] == [0, 0, 0]
    # a changed parameter sends them all again
    df.llm.complete("p", endpoints=[srv.url], cache=cache, progress=False,
                    params={"temperature": 0.5})
    assert srv.counts["requests"] == 600
    df.llm.complete("p", endpoints=[srv.url], cache=cache, progress=False,
                    system="be brief")
    assert srv.counts["requests"] == 900


def test_the_key_leaves_out_the_endpoint_so_balanced_endpoints_share(tmp_path, mock_server):
    a, b = mock_server(), mock_server()
    cache = tmp_path / "c.sqlite3"
    rows = [f"r{i}" for i in range(50)]
    run_rows(rows, [a.url], cache=cache)
    results, stats = run_rows(rows, [b.url], cache=cache)
    assert b.counts["requests"] == 0 and stats.cached == 50
    assert all(r.cached and r.response == f"echo: r{r.index}" for r in results.values())
    # but the model is part of it
    run_rows(rows, [b.url], cache=cache, model="another-model")
    assert b.counts["requests"] == 50


def test_only_complete_successes_are_stored(tmp_path, mock_server):
    srv = mock_server(script=["500"] * 10)
    cache = tmp_path / "c.sqlite3"
    rows = [f"a few words {i}" for i in range(30)]
    results, _ = run_rows(rows, [srv.url], cache=cache, max_attempts=1, concurrency=1)
    assert sum(not r.ok for r in results.values()) == 10
    results, stats = run_rows(rows, [srv.url], cache=cache, max_attempts=1)
    assert stats.cached == 20 and srv.counts["requests"] == 40  # the 10 errors sent again
    # cut by max_tokens: not stored, unless asked
    cut = {"max_tokens": 2}
    run_rows(rows, [srv.url], cache=cache, params=cut)
    _, stats = run_rows(rows, [srv.url], cache=cache, params=cut)
    assert stats.cached == 0
    run_rows(rows, [srv.url], cache=cache, params=cut, cache_truncated=True)
    _, stats = run_rows(rows, [srv.url], cache=cache, params=cut, cache_truncated=True)
    assert stats.cached == 30
    # a run that did not ask for cut answers is not given them
    _, stats = run_rows(rows, [srv.url], cache=cache, params=cut)
    assert stats.cached == 0


def test_hits_are_free_no_rate_tokens_or_budget(tmp_path, mock_server):
    srv = mock_server()
    cache = tmp_path / "c.sqlite3"
    ep = {"url": srv.url, "price_in": 1000.0, "price_out": 1000.0}
    rows = [f"row {i}" for i in range(400)]
    _, stats = run_rows(rows, [ep], cache=cache)
    assert stats.cost_usd > 0.1
    # a budget that buys nothing and a rate that would take 400 s: all answered, free
    _results, stats = run_rows(rows, [ep], cache=cache, budget=1e-6, rps=1, tpm=10)
    assert stats.cached == 400 and stats.stopped_by is None
    assert stats.cost_usd is None and stats.endpoints[0].sent == 0
    assert srv.counts["requests"] == 400
    with pytest.raises(BudgetReached):  # the budget still binds the rows not cached
        pl.DataFrame({"p": ["new one", "row 1"]}).llm.complete(
            "p", endpoints=[ep], cache=cache, budget=1e-6, progress=False)


def test_structured_answers_are_cached_with_their_schema(tmp_path, mock_server):
    srv = mock_server()
    cache = tmp_path / "c.sqlite3"
    df = pl.DataFrame({"p": [f"c{i}" for i in range(20)]})
    df.llm.complete("p", endpoints=[srv.url], schema=CITY, cache=cache, progress=False)
    out = df.llm.complete("p", endpoints=[srv.url], schema=CITY, cache=cache,
                          progress=False, metadata=True)
    assert srv.counts["requests"] == 20 and out["cached"].all()
    assert out.schema["response"] == CITY
    assert out["response"].to_list() == [expected(f"c{i}") for i in range(20)]
    # another schema is another request
    other = pl.Struct({"city": pl.String})
    df.llm.complete("p", endpoints=[srv.url], schema=other, cache=cache, progress=False)
    assert srv.counts["requests"] == 40


def test_concurrent_notebook_calls_share_one_file(tmp_path, mock_server):
    srv = mock_server(latency=(0.0, 0.01))
    cache = tmp_path / "shared.sqlite3"
    failures, outs = [], {}

    def call(k: int) -> None:
        try:
            df = pl.DataFrame({"p": [f"prompt {i}" for i in range(k * 100, k * 100 + 600)]})
            outs[k] = df.llm.complete("p", endpoints=[srv.url], cache=cache, progress=False)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert all(out["error"].null_count() == 600 for out in outs.values())
    _, stats = run_rows([f"prompt {i}" for i in range(900)], [srv.url], cache=cache)
    assert stats.cached == 900


def test_cli_cache_flags_summary_and_cache_commands(tmp_path, mock_server):
    srv = mock_server()
    req = write_requests(tmp_path / "req.jsonl", [{"input": f"q{i}"} for i in range(100)])
    cache = tmp_path / "cache-dir"
    first = run_cli("run", req, "-e", srv.url, f"--cache={cache}")
    assert first.returncode == 0, first.stderr
    assert "cached 0" in first.stderr
    second = run_cli("run", req, "-e", srv.url, "--overwrite", "--cache", cache)
    assert second.returncode == 0, second.stderr
    assert "cached 100" in second.stderr and srv.counts["requests"] == 100
    lines = read_jsonl(tmp_path / "req.save.jsonl")
    assert all(line["cached"] is True for line in lines)
    assert sorted(line["response"] for line in lines) == sorted(f"echo: q{i}"
                                                                for i in range(100))
    # `--cache REQUESTS` still reads REQUESTS (the cache at its default place)
    env = {"LLMFRAME_CACHE_DIR": str(tmp_path / "default")}
    third = run_cli("run", "--overwrite", "-e", srv.url, "--cache", req, env=env)
    assert third.returncode == 0, third.stderr
    assert (tmp_path / "default").is_dir()
    # --no-cache wins over the environment
    fourth = run_cli("run", req, "--overwrite", "-e", srv.url, "--no-cache",
                     env={**env, "LLMFRAME_CACHE": "1"})
    assert fourth.returncode == 0 and "cached" not in fourth.stderr
    assert srv.counts["requests"] == 300
    info = run_cli("cache", "info", cache)
    assert info.returncode == 0, info.stderr
    assert re.search(r"entries\D*100\b", info.stdout), info.stdout
    cleared = run_cli("cache", "clear", cache)
    assert cleared.returncode == 0 and "100" in cleared.stdout
    assert re.search(r"entries\D*0\b", run_cli("cache", "info", cache).stdout)


@pytest.mark.slow
def test_workers_share_the_cache(tmp_path, mock_server):
    srv = mock_server(latency=0.001)
    req = write_requests(tmp_path / "req.jsonl", [{"input": f"w{i}"} for i in range(2000)])
    cache = tmp_path / "c.sqlite3"
    for _k in range(2):
        proc = run_cli("run", req, "-e", srv.url, "--workers", 2, f"--cache={cache}",
                       "--overwrite", "--rps", 5000)
        assert proc.returncode == 0, proc.stderr
    assert srv.counts["requests"] == 2000
    assert "cached 2,000" in proc.stderr


@pytest.mark.slow
def test_a_run_killed_mid_way_reruns_only_what_was_not_answered(tmp_path, mock_server):
    srv = mock_server(latency=(0.01, 0.05))
    n = 1500
    req = write_requests(tmp_path / "req.jsonl", [{"input": f"k{i}"} for i in range(n)])
    cache = tmp_path / "c.sqlite3"
    save = tmp_path / "req.save.jsonl"
    first = subprocess.Popen([*LLMFRAME, "run", str(req), "-e", srv.url, f"--cache={cache}",
                              "--rps", "300"], stderr=subprocess.DEVNULL)

    def saved() -> int:
        return save.read_bytes().count(b"\n") if save.exists() else 0

    try:
        wait_until(lambda: saved() > 600 or first.poll() is not None,
                   lambda: f"600 saved lines; {saved()}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert first.returncode == -signal.SIGKILL, "the run ended before it was killed"
    sent_before = srv.counts["requests"]
    assert sent_before < n
    # no --resume: the cache alone makes the rerun send only the rest
    second = run_cli("run", req, "-e", srv.url, f"--cache={cache}", "--overwrite",
                     "--rps", 2000)
    assert second.returncode == 0, second.stderr
    cached = int(re.search(r"cached ([\d,]+)", second.stderr).group(1).replace(",", ""))
    assert cached >= 300  # the answers stored up to a second before it died
    assert srv.counts["requests"] - sent_before == n - cached
    assert len(read_jsonl(save)) == n


def test_a_dry_run_counts_cached_rows_as_free(tmp_path, mock_server):
    srv = mock_server()
    cache = tmp_path / "c.sqlite3"
    rows = [{"input": f"d{i}"} for i in range(700)]
    run_rows([r["input"] for r in rows[:600]], [srv.url], cache=cache)
    req = write_requests(tmp_path / "req.jsonl", rows)
    ep = f"url={srv.url},price_in=1,price_out=1"
    proc = run_cli("run", req, "-e", ep, f"--cache={cache}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "dry run: 100 rows to send" in proc.stdout
    assert "cached: 600 more rows are answered by the response cache" in proc.stdout
    assert srv.counts["requests"] == 600  # the dry run sent nothing
    proc = run_cli("run", req, "-e", ep, "--dry-run")
    assert "dry run: 700 rows to send" in proc.stdout and "cached" not in proc.stdout


def test_duplicate_prompts_in_one_run_are_sent_once_and_get_one_answer(tmp_path, mock_server):
    a, b = mock_server(latency=0.01, name="A"), mock_server(latency=0.01, name="B")
    cache = tmp_path / "c.sqlite3"
    prompts = [f"p{i % 37}" for i in range(600)]
    df = pl.DataFrame({"p": prompts})
    first = df.llm.complete("p", endpoints=[a.url, b.url], cache=cache, progress=False,
                            metadata=True)
    assert a.counts["requests"] + b.counts["requests"] == 37
    assert first["cached"].sum() == 600 - 37  # answered by their twin's request
    again = df.llm.complete("p", endpoints=[a.url, b.url], cache=cache, progress=False)
    assert again["response"].to_list() == first["response"].to_list()
    assert a.counts["requests"] + b.counts["requests"] == 37


def test_a_failed_request_sends_its_duplicates_themselves(tmp_path, mock_server):
    srv = mock_server(script=["500"])
    results, stats = run_rows(["same"] * 5, [srv.url], cache=tmp_path / "c.sqlite3",
                              max_attempts=1, concurrency=1)
    assert sum(r.ok for r in results.values()) == 4 and stats.errors == 1


def test_what_is_not_a_complete_answer_is_not_stored(tmp_path):
    from llmframe.testing import MockTransport

    answers = {"filtered": ("content_filter", "x"), "empty": ("stop", None),
               "fine": ("stop", "ok")}

    def handler(body):
        prompt = json.loads(body)["messages"][-1]["content"]
        finish, content = answers[prompt]
        return 200, {}, json.dumps({"choices": [{"finish_reason": finish, "message": {
            "role": "assistant", "content": content}}]}).encode()

    transport = MockTransport(handler)
    for _ in range(2):
        run_rows(list(answers), ["http://127.0.0.1:9/v1"], cache=tmp_path / "c.sqlite3",
                 transport=lambda url, headers: transport)
    assert len(transport.requests) == 5  # only "fine" was answered from the cache


def test_equal_numbers_are_one_key_and_the_variable_is_checked(tmp_path, mock_server,
                                                               monkeypatch):
    srv = mock_server()
    cache = tmp_path / "c.sqlite3"
    run_rows(["a", "b"], [srv.url], cache=cache, params={"temperature": 1})
    _, stats = run_rows(["a", "b"], [srv.url], cache=cache, params={"temperature": 1.0})
    assert stats.cached == 2 and srv.counts["requests"] == 2
    monkeypatch.setenv("LLMFRAME_CACHE", "Y")
    with pytest.raises(ConfigError, match="LLMFRAME_CACHE"):
        run_rows(["a"], [srv.url])
    monkeypatch.setenv("LLMFRAME_CACHE", str(tmp_path / "env.sqlite3"))
    run_rows(["a"], [srv.url])
    assert (tmp_path / "env.sqlite3").exists()


def test_a_held_write_lock_does_not_stop_lookups(tmp_path, mock_server):
    import sqlite3

    srv = mock_server()
    cache = tmp_path / "c.sqlite3"
    run_rows([f"r{i}" for i in range(200)], [srv.url], cache=cache)
    holder = sqlite3.connect(cache, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for a while
    timer = threading.Timer(1.5, holder.rollback)
    timer.start()
    try:
        results, stats = run_rows([f"r{i}" for i in range(250)], [srv.url], cache=cache)
    finally:
        timer.join()
        holder.close()
    assert all(r.ok for r in results.values()) and stats.cached == 200
    _, stats = run_rows([f"r{i}" for i in range(250)], [srv.url], cache=cache)
    assert stats.cached == 250  # the new answers were written once the lock was free


def test_a_lock_held_past_the_end_costs_the_answers_not_a_hang(tmp_path, mock_server):
    import asyncio
    import sqlite3

    from llmframe._cache import CacheClient

    cache = tmp_path / "c.sqlite3"
    run_rows(["x"], [mock_server().url], cache=cache)
    holder = sqlite3.connect(cache, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    async def main() -> None:
        client = CacheClient(cache, timeout=0.05)
        await client.open()
        client.store(b"k" * 16, b"[1, null]")
        await client.close()

    try:
        with pytest.raises(Exception, match="locked"):
            asyncio.run(main())
    finally:
        holder.close()


def test_closing_the_stream_early_stores_what_was_answered(tmp_path, mock_server):
    import asyncio

    from llmframe import RunConfig, stream_results
    from llmframe._cache import open_info

    srv = mock_server(latency=(0.0, 0.02))
    cache = tmp_path / "c.sqlite3"
    rows = [(i, {"input": f"s{i}"}, None) for i in range(2000)]

    async def main() -> int:
        got = 0
        stream = stream_results(rows, RunConfig([srv.url], cache=cache, rps=2000))
        async for batch in stream:
            got += sum(r.ok for r in batch)
            if got >= 300:
                break
        await stream.aclose()
        return got

    got = asyncio.run(main())
    assert open_info(cache).entries >= got
