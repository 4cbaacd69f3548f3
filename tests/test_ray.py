"""llmframe on Ray Data: a real two-node cluster on 127.0.0.1 (ray.cluster_utils.Cluster,
a head and one worker node with 1 CPU each, as small nodes are) against the project's
test server. Skipped, with the reason, when Ray is not installed (``llmframe[ray]``)."""

import statistics
from pathlib import Path

import polars as pl
import pytest

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]"')
pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install "ray[data]"')

import llmframe.ray  # noqa: E402
from llmframe import ConfigError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Ray Data starts sending blocks to the first actor that is up; on a busy machine the
    # worker node's actor can come up after a short job is over (CI saw every row on one
    # node). Tests that check where rows ran wait for the whole pool first.
    context.wait_for_min_actors_s = 120
    yield c
    ray.shutdown()
    c.shutdown()


def test_polars_in_polars_out_on_both_nodes_every_row_once_and_aligned(cluster, mock_server):
    srv = mock_server(latency=0.02)
    n = 1200
    df = pl.DataFrame({"q": [f"p{i}" for i in range(n)], "id": range(n)})
    df = df.with_columns(pl.when(pl.col("id") == 7).then(None).otherwise(pl.col("q"))
                         .alias("q"))
    out = llmframe.ray.complete(df, "q", endpoints=[srv.url], actors=2, batch_size=50,
                                metadata=True)
    assert out.columns[:2] == ["q", "id"] and out["id"].to_list() == list(range(n))
    expected = [None if i == 7 else f"echo: p{i}" for i in range(n)]
    assert out["response"].to_list() == expected
    assert out["error"].null_count() == n
    assert out["node"].drop_nulls().n_unique() == 2  # rows ran on both nodes
    assert srv.counts["requests"] == n - 1  # each row sent once (the null row: never)


def test_the_global_rps_holds_at_the_servers_clock(cluster, mock_server):
    srv = mock_server(latency=0.05)
    rps, n = 200, 1400
    df = pl.DataFrame({"q": [f"r{i}" for i in range(n)]})
    out = llmframe.ray.complete(df, "q", endpoints=[srv.url], rps=rps, actors=2,
                                batch_size=40)
    assert out["error"].null_count() == n
    per_second = srv.state.per_second
    seconds = sorted(per_second)
    counts = [per_second.get(s, 0) for s in range(seconds[0], seconds[-1] + 1)]
    assert max(counts) <= rps, counts  # never more than rps in any second
    assert statistics.median(counts[1:-1]) >= 0.75 * rps, counts  # and near it


def test_an_endpoint_one_actor_finds_out_is_out_for_the_others(cluster, mock_server):
    # A's first answer: a 429 asking for a day (a spent quota). The actor that gets it
    # takes A out; through the hub the other actor does too, within ~0.1 s, so A sees
    # few requests after it (alone, the other actor would send it half its rows)
    a = mock_server(script=["429"], retry_after=86400)
    b = mock_server()
    n, rps = 1000, 400
    df = pl.DataFrame({"q": [f"o{i}" for i in range(n)]})
    out = llmframe.ray.complete(df, "q", endpoints=[a.url, b.url], rps=rps, actors=2,
                                batch_size=50, max_retry_after=60)
    assert out["error"].null_count() == n
    assert out["response"].to_list() == [f"echo: o{i}" for i in range(n)]
    assert a.counts["requests"] <= 0.1 * n, (a.counts, b.counts)


def test_the_budget_is_for_the_whole_job_and_a_rerun_sends_the_rest(cluster, mock_server,
                                                                      tmp_path):
    # $0.001 a token; a request bills 9 + 4 tokens ($0.013), reserves at most $0.027
    srv = mock_server(latency=0.01)
    ep = {"url": srv.url, "price_in": 1000, "price_out": 1000}
    n, budget = 300, 1.0
    df = pl.DataFrame({"q": [f"q {i:03}" for i in range(n)]})
    options = {"endpoints": [ep], "actors": 2, "batch_size": 20, "output": tmp_path / "o",
               "params": {"max_tokens": 10}, "metadata": True}
    with pytest.raises(llmframe.BudgetReached, match="stopped by the budget") as info:
        llmframe.ray.complete(df, "q", budget=budget, **options)
    partial = info.value.partial
    answered = partial.filter(pl.col("error").is_null())
    spent = answered["cost_usd"].sum()
    # both actors together stay within the one budget (each alone would have had it all),
    # and stop near it: what the actors held when the purse ran dry is all that is left
    assert budget - 0.1 < spent <= budget and info.value.spent == pytest.approx(spent)
    assert srv.counts["requests"] == answered.height
    assert info.value.not_sent == n - answered.height > 0
    assert set(partial["error"].drop_nulls()) == {"not sent: stopped by the budget"}
    assert partial["q"].to_list() == df["q"].to_list()  # aligned
    # the budget is for the job: the same budget again sends nothing more
    with pytest.raises(llmframe.BudgetReached):
        llmframe.ray.complete(df, "q", budget=budget, **options)
    assert srv.counts["requests"] == answered.height
    out = llmframe.ray.complete(df, "q", budget=10.0, **options)  # sends only the rest
    assert out["error"].null_count() == n and srv.counts["requests"] == n
    assert out["response"].to_list() == [f"echo: q {i:03}" for i in range(n)]


def test_the_global_tpm_holds_at_the_servers_clock(cluster, mock_server):
    # the server counts the tokens it admits each second (its own limit is far above)
    tpm, n = 60_000, 400
    srv = mock_server(latency=0.02, tpm=20 * tpm, window=1.0)
    df = pl.DataFrame({"q": [f"t{i:03}" for i in range(n)]})
    out = llmframe.ray.complete(df, "q", endpoints=[srv.url], tpm=tpm, actors=2,
                                batch_size=20, params={"max_tokens": 10})
    assert out["error"].null_count() == n
    per_second = srv.state.tokens_by_second
    seconds = sorted(per_second)
    counts = [per_second.get(s, 0) for s in range(seconds[0], seconds[-1] + 1)]
    assert len(counts) >= 3, counts
    assert max(counts) <= tpm / 60 * 1.1, counts  # the job's tokens a second, not 2x
    assert statistics.median(counts[1:-1]) >= 0.6 * tpm / 60, counts


def test_an_autoscaling_pool_keeps_the_job_limits(cluster, mock_server):
    srv = mock_server(latency=0.05)
    rps, n = 150, 450
    df = pl.DataFrame({"q": [f"s{i}" for i in range(n)]})
    out = llmframe.ray.complete(df, "q", endpoints=[srv.url], rps=rps, actors=(1, 3),
                                batch_size=15)
    assert out["response"].to_list() == [f"echo: s{i}" for i in range(n)]
    per_second = srv.state.per_second
    assert max(per_second.values()) <= rps, per_second
    for bad in [(3, 1), (0, 2), (1, 2, 3), "2", 2.0, True]:
        with pytest.raises(ConfigError, match="actors must be"):
            llmframe.ray.complete(df, "q", endpoints=[srv.url], actors=bad)


def test_the_response_cache_answers_a_rerun_without_sending(cluster, mock_server, tmp_path):
    srv = mock_server()
    n = 200
    df = pl.DataFrame({"q": [f"c{i % 150}" for i in range(n)]})  # 50 repeat a prompt
    options = {"endpoints": [srv.url], "actors": 2, "batch_size": 25, "metadata": True,
               "cache": tmp_path / "cache.sqlite3"}
    first = llmframe.ray.complete(df, "q", **options)
    assert first["response"].to_list() == [f"echo: c{i % 150}" for i in range(n)]
    assert 150 <= srv.counts["requests"] <= n
    sent = srv.counts["requests"]
    again = llmframe.ray.complete(df, "q", **options)
    assert srv.counts["requests"] == sent  # every answer from the cache
    assert again["response"].to_list() == first["response"].to_list()
    assert again["cached"].all()


def test_a_dataset_in_gives_a_lazy_dataset_out(cluster, mock_server):
    srv = mock_server()
    ds = ray.data.from_items([{"q": f"d{i}", "k": i} for i in range(300)])
    lazy = llmframe.ray.complete(ds, "q", endpoints=[srv.url], actors=2, batch_size=50)
    assert srv.counts["requests"] == 0  # nothing sent until it is consumed
    rows = sorted(lazy.take_all(), key=lambda r: r["k"])
    assert [r["response"] for r in rows] == [f"echo: d{i}" for i in range(300)]
    assert all(r["error"] is None for r in rows) and srv.counts["requests"] == 300


def test_bad_input_fails_on_the_driver_before_anything_is_sent(cluster, mock_server):
    srv = mock_server()
    df = pl.DataFrame({"q": ["a"], "response": ["taken"]})
    with pytest.raises(ConfigError, match="response"):
        llmframe.ray.complete(df, "q", endpoints=[srv.url])
    with pytest.raises(ConfigError, match="not found"):
        llmframe.ray.complete(df, "nope", endpoints=[srv.url])
    with pytest.raises(ConfigError, match="actors must be"):
        llmframe.ray.complete(df.drop("response"), "q", endpoints=[srv.url], actors=0)
    with pytest.raises(ConfigError, match="rps"):
        llmframe.ray.complete(df.drop("response"), "q", endpoints=[srv.url], rps=-1)
    assert srv.counts["requests"] == 0


def test_an_actor_killed_mid_run_loses_nothing(cluster, mock_server):
    import os
    import signal
    import threading
    import time

    srv = mock_server(latency=0.2)
    n = 800
    df = pl.DataFrame({"q": [f"k{i}" for i in range(n)]})
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("out", llmframe.ray.complete(
        df, "q", endpoints=[srv.url], actors=2, batch_size=20, concurrency=40)))
    thread.start()
    deadline = time.monotonic() + 60
    while srv.counts["ok"] < n // 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
               if _title(p).startswith("ray::MapWorker")]
    assert workers, "no map actor alive to kill"
    os.kill(workers[0], signal.SIGKILL)  # a crash, mid-batch
    thread.join(240)
    out = box["out"]
    assert out["response"].to_list() == [f"echo: k{i}" for i in range(n)]
    assert out["error"].null_count() == n
    assert srv.counts["ok"] >= n  # the killed actor's batch was sent again (some rows twice)


def _title(cmdline: Path) -> str:
    try:
        return cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_output_dir_keeps_results_per_block_and_a_rerun_after_a_driver_crash_sends_the_rest(
        cluster, mock_server, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    srv = mock_server(latency=0.3)
    n = 600
    out_dir = tmp_path / "results"
    script = (
        "import polars as pl, ray, llmframe.ray\n"
        f"ray.init(address={cluster.address!r}, logging_level='ERROR', log_to_driver=False)\n"
        f"df = pl.DataFrame({{'q': [f'c{{i}}' for i in range({n})]}})\n"
        f"llmframe.ray.complete(df, 'q', endpoints=[{srv.url!r}], output={str(out_dir)!r},\n"
        "                      actors=2, batch_size=25, concurrency=20)\n")
    driver = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while len(list(out_dir.glob("part-*.parquet"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(out_dir.glob("part-*.parquet")), "no block was written"
    finally:
        driver.send_signal(signal.SIGKILL)  # the driver crashes mid-run
        driver.wait(30)
    kept = pl.read_parquet(str(out_dir / "part-*.parquet"))
    sent_before = srv.counts["requests"]
    time.sleep(1.0)  # the killed driver's actors stop with it
    sent_before = srv.counts["requests"]
    df = pl.DataFrame({"q": [f"c{i}" for i in range(n)]})
    out = llmframe.ray.complete(df, "q", endpoints=[srv.url], output=out_dir, actors=2,
                                batch_size=25)
    assert out["response"].to_list() == [f"echo: c{i}" for i in range(n)]
    assert out["error"].null_count() == n
    resent = srv.counts["requests"] - sent_before
    assert resent == n - kept["__llmframe_row"].n_unique()  # only the rows without a result
    # and a third run sends nothing at all
    again = llmframe.ray.complete(df, "q", endpoints=[srv.url], output=out_dir)
    assert again.equals(out) and srv.counts["requests"] - sent_before == resent


def test_cli_ray_writes_the_same_files_and_resumes(cluster, mock_server, tmp_path):
    import json

    from test_cli import read_jsonl, run_cli

    srv = mock_server()
    lines = [json.dumps({"input": f"f{i}", "id": i}) for i in range(150)]
    lines[9] = "{not json"
    req = tmp_path / "req.jsonl"
    req.write_text("\n".join(lines) + "\n")
    proc = run_cli("run", req, "-e", srv.url, "--ray", cluster.address, "--rps", "400",
                   timeout=240)
    assert proc.returncode == 1, proc.stderr  # the bad line is an error row
    saved = read_jsonl(tmp_path / "req.save.jsonl")
    assert sorted(s["response"] for s in saved) == sorted(f"echo: f{i}" for i in range(150)
                                                          if i != 9)
    errors = read_jsonl(tmp_path / "req.errors.jsonl")
    assert len(errors) == 1 and "line 10" in errors[0]["error"]
    assert "done on Ray" in proc.stderr and srv.counts["requests"] == 149
    # outputs exist: refused without a mode; --resume sends nothing more
    proc = run_cli("run", req, "-e", srv.url, "--ray", cluster.address, timeout=240)
    assert proc.returncode == 2 and "--resume" in proc.stderr
    proc = run_cli("run", req, "-e", srv.url, "--ray", cluster.address, "--resume",
                   timeout=240)
    assert proc.returncode == 1 and srv.counts["requests"] == 149
    assert len(read_jsonl(tmp_path / "req.save.jsonl")) == 149


def test_cli_ray_budget_stops_with_exit_3_and_resume_sends_the_rest(cluster, mock_server,
                                                                     tmp_path):
    import json

    from test_cli import read_jsonl, run_cli

    srv = mock_server()
    req = tmp_path / "req.jsonl"
    req.write_text("".join(json.dumps({"input": f"b{i}"}) + "\n" for i in range(120)))
    spec = f"url={srv.url},price_in=1000,price_out=1000"
    args = ("run", req, "-e", spec, "--ray", cluster.address, "--max-tokens", "10",
            "--workers", "3")
    proc = run_cli(*args, "--budget", "0.5", timeout=240)
    assert proc.returncode == 3, proc.stderr
    saved = read_jsonl(tmp_path / "req.save.jsonl")
    assert 0.4 < sum(x["cost_usd"] for x in saved) <= 0.5
    assert srv.counts["requests"] == len(saved) < 120
    assert not (tmp_path / "req.errors.jsonl").read_text()  # unsent rows are not errors
    assert f"{120 - len(saved)} rows not sent; rerun with --resume" in proc.stderr
    assert "3 actors on" in proc.stderr
    proc = run_cli(*args, "--budget", "5", "--resume", timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert srv.counts["requests"] == 120
    assert sorted(x["response"] for x in read_jsonl(tmp_path / "req.save.jsonl")) == sorted(
        f"echo: b{i}" for i in range(120))


def test_retry_errors_sends_again_only_the_rows_that_ended_as_errors(cluster, mock_server,
                                                                     tmp_path):
    import json

    from test_cli import read_jsonl, run_cli

    srv = mock_server(script=["500"] * 3)  # three rows fail (one attempt each)
    req = tmp_path / "req.jsonl"
    req.write_text("".join(json.dumps({"input": f"e{i}"}) + "\n" for i in range(60)))
    args = ("run", req, "-e", srv.url, "--ray", cluster.address, "--max-attempts", "1")
    proc = run_cli(*args, timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert len(read_jsonl(tmp_path / "req.errors.jsonl")) == 3
    proc = run_cli(*args, "--retry-errors", timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert srv.counts["requests"] == 63  # the three again, nothing else
    assert sorted(x["response"] for x in read_jsonl(tmp_path / "req.save.jsonl")) == sorted(
        f"echo: e{i}" for i in range(60))
    assert not read_jsonl(tmp_path / "req.errors.jsonl")
    assert len(read_jsonl(tmp_path / "req.errors.jsonl.prev")) == 3


def test_dataset_ids_that_do_not_name_one_row_are_refused_on_a_rerun(cluster, mock_server,
                                                                   tmp_path):
    srv = mock_server()
    for ids, match in (([1, None, 3, None], "null id"), ([1, 2, 2, 3], "id 2 names")):
        items = [{"q": f"x{i}", "k": k} for i, k in enumerate(ids)]
        out_dir = tmp_path / str(len(match))
        llmframe.ray.complete(ray.data.from_items(items), "q", endpoints=[srv.url],
                              output=out_dir, id_column="k").materialize()
        with pytest.raises(ConfigError, match=match):
            llmframe.ray.complete(ray.data.from_items(items), "q", endpoints=[srv.url],
                                  output=out_dir, id_column="k")


def test_cli_ray_killed_mid_run_resumes_with_each_line_answered_once(cluster, mock_server,
                                                                     tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_cli import read_jsonl, run_cli

    srv = mock_server(latency=0.1)
    n = 900
    req = tmp_path / "req.jsonl"
    req.write_text("".join(json.dumps({"input": f"k{i}"}) + "\n" for i in range(n)))
    args = ["run", str(req), "-e", srv.url, "--ray", cluster.address, "--rps", "300"]
    proc = subprocess.Popen([sys.executable, "-m", "llmframe", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "req.save.jsonl.ray"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-run
    proc.wait(10)
    sent = srv.counts["requests"]
    assert 0 < sent < n, sent
    time.sleep(1.5)  # the killed driver's actors go with it
    proc = run_cli(*args, "--resume", timeout=240)
    assert proc.returncode == 0, proc.stderr
    saved = read_jsonl(tmp_path / "req.save.jsonl")
    assert sorted(x["index"] for x in saved) == list(range(n))  # each line once
    assert srv.counts["requests"] < 2 * n


def test_review_fixes_reruns_that_do_not_match_and_bad_inputs(cluster, mock_server, tmp_path):
    srv = mock_server()
    url = [srv.url]
    out_dir = tmp_path / "d"
    df = pl.DataFrame({"q": [f"a{i}" for i in range(30)]})
    first = llmframe.ray.complete(df, "q", endpoints=url, output=out_dir, batch_size=10)
    assert first["response"].to_list() == [f"echo: a{i}" for i in range(30)]
    sent = srv.counts["requests"]
    for other, says in [
        (pl.DataFrame({"q": [f"b{i}" for i in range(30)]}), "other prompts"),
        (df.head(10), "another frame"),
    ]:
        with pytest.raises(ConfigError, match=says):
            llmframe.ray.complete(other, "q", endpoints=url, output=out_dir)
    with pytest.raises(ConfigError, match="other options"):
        llmframe.ray.complete(df, "q", endpoints=url, output=out_dir, metadata=True)
    # the same frame with a new column: that column is the output's, the answers are kept
    again = llmframe.ray.complete(df.with_columns(j=pl.lit(1)), "q", endpoints=url,
                                  output=out_dir)
    assert again.columns == ["q", "j", "response", "error"] and srv.counts["requests"] == sent
    assert again["response"].to_list() == first["response"].to_list()
    empty = llmframe.ray.complete(df.clear(), "q", endpoints=url)
    assert empty.columns == ["q", "response", "error"] and empty.height == 0
    for kwargs, says in [({"response_column": "x", "error_column": "x"}, "both"),
                         ({"budget": 1.0}, "budget")]:
        with pytest.raises(ConfigError, match=says):
            llmframe.ray.complete(df, "q", endpoints=url, **kwargs)
    with pytest.raises(ConfigError, match="node"):
        llmframe.ray.complete(df.with_columns(node=pl.lit("x")), "q", endpoints=url,
                              metadata=True)
    for data, says in [(df.lazy(), "collect"), ([1, 2], "DataFrame or a ray.data.Dataset")]:
        with pytest.raises(ConfigError, match=says):
            llmframe.ray.complete(data, "q", endpoints=url)
    ds = ray.data.from_items([{"q": f"d{i}", "k": i % 3} for i in range(9)])
    with pytest.raises(ConfigError, match="'nope' not found"):
        llmframe.ray.complete(ds, "q", endpoints=url, output=tmp_path / "e", id_column="nope")
    with pytest.raises(ConfigError, match="must hold strings"):
        llmframe.ray.complete(ds, "k", endpoints=url)


def test_outside_review_a_lazy_dataset_is_not_run_before_it_is_consumed(cluster, mock_server,
                                                                       tmp_path):
    srv = mock_server()
    ds = ray.data.from_items([{"q": f"l{i}", "k": i} for i in range(60)])
    # (user stages ask for a fraction of a CPU too: 1-CPU nodes hold two stages' actors)
    unknown = ds.map_batches(lambda b: b, batch_format="pyarrow", num_cpus=0.1)  # no schema
    first = llmframe.ray.complete(unknown, "q", endpoints=[srv.url], actors=2)
    second = llmframe.ray.complete(
        first.map_batches(lambda b: b, batch_format="pyarrow", num_cpus=0.1), "response",
        endpoints=[srv.url], response_column="again", error_column="error2")
    assert srv.counts["requests"] == 0  # building the chain sends nothing
    rows = sorted(second.take_all(), key=lambda r: r["k"])
    assert [r["again"] for r in rows] == [f"echo: echo: l{i}" for i in range(60)]
    assert srv.counts["requests"] == 120  # each stage once
    # a rerun over output=DIR keeps the input's rows (a subset, a new column) and
    # refuses stored results made for other prompts
    out_dir = tmp_path / "o"
    llmframe.ray.complete(ds, "q", endpoints=[srv.url], output=out_dir,
                          id_column="k").materialize()
    sent = srv.counts["requests"]
    subset = ds.map_batches(  # a subset, with a new column (on 1-CPU nodes: a fraction)
        lambda b: pl.from_arrow(b).filter(pl.col("k") < 30).with_columns(
            extra=pl.col("k") * 2).to_arrow(), batch_format="pyarrow", num_cpus=0.1)
    rows = llmframe.ray.complete(subset, "q", endpoints=[srv.url], output=out_dir,
                                 id_column="k").take_all()
    assert sorted(r["k"] for r in rows) == list(range(30)) and srv.counts["requests"] == sent
    assert all(r["extra"] == 2 * r["k"] and r["response"] == f"echo: l{r['k']}" for r in rows)
    other = ray.data.from_items([{"q": f"new{i}", "k": i} for i in range(60)])
    with pytest.raises(Exception, match="another prompt"):  # raised in an actor: Ray wraps it
        llmframe.ray.complete(other, "q", endpoints=[srv.url], output=out_dir,
                              id_column="k").take_all()
    # a failed call writes nothing to its directory: the corrected call runs
    typo_dir = tmp_path / "t"
    with pytest.raises(ConfigError, match="not found"):
        llmframe.ray.complete(ds, "qq", endpoints=[srv.url], output=typo_dir, id_column="k")
    assert len(llmframe.ray.complete(ds, "q", endpoints=[srv.url], output=typo_dir,
                                     id_column="k").take_all()) == 60


def test_outside_review_limits_names_and_keys(cluster, mock_server, monkeypatch):
    srv = mock_server(latency=0.2, require_key="sk-test-cluster-key")
    df = pl.DataFrame({"q": [f"c{i}" for i in range(80)]})
    # the key is in the driver's environment only: the actors get it from the job
    monkeypatch.setenv("LLMFRAME_RAY_TEST_KEY", "sk-test-cluster-key")
    ep = {"url": srv.url, "api_key_env": "LLMFRAME_RAY_TEST_KEY"}
    out = llmframe.ray.complete(df, "q", endpoints=[ep], concurrency=4, actors=2,
                                batch_size=10, metadata=True)
    assert out["error"].null_count() == 80
    assert srv.state.max_in_flight <= 4  # the job's concurrency, not 2 x ceil
    assert "sk-test" not in str(out.to_dicts())
    for kwargs, match in (({"concurrency": 1, "actors": 3}, "concurrency=1 cannot be"),
                          ({"response_column": "node", "metadata": True}, "makes itself"),
                          ({"error_column": "__llmframe_cost"}, "makes itself")):
        with pytest.raises(ConfigError, match=match):
            llmframe.ray.complete(df, "q", endpoints=[srv.url], **kwargs)
    tight = {"url": srv.url, "max_concurrency": 2}
    with pytest.raises(ConfigError, match="max_concurrency=2 cannot be"):
        llmframe.ray.complete(df, "q", endpoints=[tight], actors=4)


def test_an_actor_with_rows_left_uses_the_whole_jobs_limits(cluster, mock_server):
    # one batch: one actor has rows, the other none (the tail of a job, where one actor
    # has finished). It may have the job's whole concurrency in flight and send at the
    # whole rate learned from the provider's headers, not half of each
    srv = mock_server(latency=0.1)
    df = pl.DataFrame({"q": [f"t{i}" for i in range(300)]})
    out = llmframe.ray.complete(df, "q", endpoints=[srv.url], concurrency=8, actors=2,
                                batch_size=300)
    assert out["error"].null_count() == 300
    assert srv.state.max_in_flight == 8  # a fixed half: 4
    provider = mock_server(latency=0.02, rpm=12_000, window=1)  # 200/s, said in headers
    df = pl.DataFrame({"q": [f"u{i}" for i in range(1000)]})
    out = llmframe.ray.complete(df, "q", endpoints=[provider.url], actors=2,
                                batch_size=1000, max_attempts=20)
    assert out["error"].null_count() == 1000
    per_second = provider.state.per_second
    seconds = sorted(per_second)
    counts = [per_second.get(s, 0) for s in range(seconds[0], seconds[-1] + 1)]
    assert statistics.median(counts[1:-1]) >= 150, counts  # a fixed half: 100/s
