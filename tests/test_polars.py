"""df.llm.complete / pl.col(...).llm.complete against real local servers."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap

import polars as pl
import pytest

import llmframe

from conftest import ROOT, wait_until


@pytest.fixture
def two(mock_server):
    return [mock_server(latency=(0.0, 0.08), seed=3), mock_server(latency=(0.0, 0.002), seed=4)]


def test_rows_stay_aligned_under_uneven_latency(two):
    prompts = [f"prompt number {i}" for i in range(500)]
    df = pl.DataFrame({"p": prompts, "k": range(500)})
    out = df.llm.complete("p", endpoints=[s.url for s in two], concurrency=50, progress=False)
    assert out.columns == ["p", "k", "response", "error"]
    assert out.schema["response"] == pl.String and out.schema["error"] == pl.String
    assert out["response"].to_list() == [f"echo: {p}" for p in prompts]
    assert out["error"].null_count() == 500
    assert out["k"].to_list() == list(range(500))


def test_expression_column_nulls_and_metadata(two):
    df = pl.DataFrame({"t": ["cat", None, "dog"]})
    out = df.llm.complete(pl.format("Describe {}", pl.col("t")), endpoints=[two[0].url],
                          metadata=True, progress=False, output="ans", error="err")
    assert out["ans"].to_list() == ["echo: Describe cat", None, "echo: Describe dog"]
    assert out["err"].to_list() == [None, None, None]
    assert out["attempts"].to_list() == [1, None, 1]
    assert out["endpoint"].to_list() == [two[0].url, None, two[0].url]
    assert out["latency_ms"][0] > 0 and out["prompt_tokens"].to_list() == [9, None, 9]
    assert two[0].counts["requests"] == 2  # the null row sent nothing


def test_failed_rows_fill_the_error_column(mock_server):
    srv = mock_server(faults={"500": 1.0})
    out = pl.DataFrame({"p": ["a", "b"]}).llm.complete(
        "p", endpoints=srv.url, max_attempts=2, progress=False)
    assert out["response"].to_list() == [None, None]
    assert all("HTTP 500" in e and "after 2 attempts" in e for e in out["error"])


def test_empty_frame(two):
    df = pl.DataFrame({"p": []}, schema={"p": pl.String})
    out = df.llm.complete("p", endpoints=[two[0].url], progress=False)
    assert out.height == 0 and out.columns == ["p", "response", "error"]
    assert two[0].counts["requests"] == 0


def test_chunking_keeps_alignment_and_one_rate_limit(mock_server):
    srv = mock_server()
    srv.state.record_arrivals = True
    df = pl.DataFrame({"p": [f"r{i}" for i in range(230)]})
    out = df.llm.complete("p", endpoints=srv.url, chunk_size=7, rps=100, progress=False)
    assert out["response"].to_list() == [f"echo: r{i}" for i in range(230)]
    arrivals = sorted(srv.state.arrivals)
    # one pacer across all chunks: 230 requests at 100/s take more than 2 s in total
    assert arrivals[-1] - arrivals[0] >= 2.0


@pytest.mark.parametrize("lazy", [False, True])
def test_expression_namespace_in_select_with_columns_and_lazy(two, lazy):
    df = pl.DataFrame({"p": ["x", None, "y"], "n": [1, 2, 3]})
    frame = df.lazy() if lazy else df
    expr = pl.col("p").llm.complete(endpoints=[s.url for s in two], progress=False)
    out = frame.with_columns(r=expr)
    out = out.collect() if lazy else out
    assert out.schema["r"] == pl.Struct({"response": pl.String, "error": pl.String})
    assert out["r"].struct.field("response").to_list() == ["echo: x", None, "echo: y"]
    selected = frame.select(expr.struct.field("response"))
    selected = selected.collect() if lazy else selected
    assert selected["response"].to_list() == ["echo: x", None, "echo: y"]


def test_building_the_expression_sends_nothing(mock_server):
    srv = mock_server()
    expr = pl.col("p").llm.complete(endpoints=srv.url, progress=False)
    lf = pl.LazyFrame({"p": ["a"]}).with_columns(r=expr)
    assert lf.collect_schema()["r"] == pl.Struct({"response": pl.String, "error": pl.String})
    lf.explain()
    assert srv.counts["requests"] == 0


def test_bad_config_and_columns_fail_before_sending(mock_server):
    srv = mock_server()
    df = pl.DataFrame({"p": ["a"], "n": [1]})
    with pytest.raises(llmframe.ConfigError, match="column 'q' not found"):
        df.llm.complete("q", endpoints=srv.url)
    with pytest.raises(llmframe.ConfigError, match="must be String, got Int64"):
        df.llm.complete("n", endpoints=srv.url)
    with pytest.raises(llmframe.ConfigError, match="weight must be > 0"):
        df.llm.complete("p", endpoints=[{"url": srv.url, "weight": 0}])
    with pytest.raises(llmframe.ConfigError, match="chunk_size"):
        df.llm.complete("p", endpoints=srv.url, chunk_size=0)
    assert srv.counts["requests"] == 0


def test_acomplete_on_the_callers_loop(two):
    df = pl.DataFrame({"p": ["a", "b"]})

    async def main():
        return await df.llm.acomplete("p", endpoints=[two[0].url], progress=False)

    out = asyncio.run(main())
    assert out["response"].to_list() == ["echo: a", "echo: b"]


def test_sync_call_inside_a_running_loop_and_repeated_calls(two):
    df = pl.DataFrame({"p": ["a"]})

    async def main():  # what a notebook cell is: sync code while a loop runs
        first = df.llm.complete("p", endpoints=[two[0].url], progress=False)
        second = df.llm.complete("p", endpoints=[two[1].url], progress=False)
        return first, second

    first, second = asyncio.run(main())
    assert first["response"][0] == second["response"][0] == "echo: a"


def test_file_round_trip_equals_the_cli(tmp_path, mock_server):
    srv = mock_server(latency=(0, 0.01))
    req = tmp_path / "r.jsonl"
    lines = [json.dumps({"input": f"question {i}", "id": i, "tag": "t" if i % 2 else "u"})
             for i in range(40)]
    lines[5] = "not json"
    lines[9] = json.dumps({"input": 12, "id": 9})
    lines[11] = "[1]"
    lines[13] = json.dumps({"prompt": "wrong", "id": 13})
    req.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "llmframe", "run", req, "-e", srv.url,
                           "--save", tmp_path / "cli.save.jsonl", "--errors",
                           tmp_path / "cli.errors.jsonl"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr

    with pytest.warns(UserWarning, match="4 line"):
        df = llmframe.read_jsonl(req)
    assert df["index"].to_list() == list(range(40))
    out = df.llm.complete("input", endpoints=srv.url, metadata=True, progress=False)
    assert llmframe.write_results(out, tmp_path / "py.save.jsonl",
                                  tmp_path / "py.errors.jsonl") == (36, 4)

    def load(name, drop=("latency_ms",)):
        rows = [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
        return sorted(({k: v for k, v in r.items() if k not in drop} for r in rows),
                      key=lambda r: r["index"])

    assert load("py.save.jsonl") == load("cli.save.jsonl")
    assert load("py.errors.jsonl") == load("cli.errors.jsonl")
    assert len(load("py.save.jsonl")) == 36


INTERRUPT_SCRIPT = textwrap.dedent("""
    import sys
    import polars as pl, llmframe
    url, rows, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    df = pl.DataFrame({"p": [f"r{i}" for i in range(rows)]})
    try:
        df.llm.complete("p", endpoints=url, concurrency=window, timeout=600, progress=False)
    except llmframe.Interrupted as exc:
        part = exc.partial
        assert part.equals(llmframe.recover())
        answered = part["response"].drop_nulls().len()
        cut = part["error"].str.contains("interrupted").sum()
        print(f"interrupted {answered} {cut} {part.height}", flush=True)
    else:
        print("finished without an interrupt", flush=True)
""")



def test_interrupt_stops_promptly_and_keeps_answered_rows(tmp_path, mock_server):
    # served from this process, so the test sees what reached the server: the first
    # `answered_first` requests are answered at once, every later one hangs (is never
    # answered)
    rows, answered_first, window = 400, 20, 50
    srv = mock_server(script=[None] * answered_first, faults={"hang": 1.0})
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT_SCRIPT)
    proc = subprocess.Popen([sys.executable, script, srv.url, str(rows), str(window)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # mid-run: every answer has been sent and the whole window is held by hanging
        # requests (timeout=600: none can time out), so the call cannot finish by itself
        wait_until(
            lambda: (srv.counts["ok"] >= answered_first and srv.counts["hang"] >= window)
            or proc.poll() is not None,
            lambda: f"{answered_first} answered and {window} hanging requests on the server; "
                    f"it has {dict(srv.counts)}")
        assert proc.poll() is None, "the script ended before it was interrupted"
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the script did not stop within 60 s of the interrupt")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    line = out.split()
    assert line[:1] == ["interrupted"], out
    answered, cut, height = map(int, line[1:])
    # every answer the server sent is kept; the hanging and never-sent rows are marked
    # "not answered: interrupted" (not timed out, not lost)
    assert (answered, cut, height) == (answered_first, rows - answered_first, rows)
    # stopped promptly: it returned while its requests still hung on the server (it waited
    # neither for answers that never come nor for attempts to time out) and sent nothing
    # after the interrupt: no further rows, no retries
    assert srv.counts["requests"] == answered_first + window, dict(srv.counts)
    assert srv.counts["hang"] == window, dict(srv.counts)


CHECKPOINT_SCRIPT = textwrap.dedent("""
    import sys
    import polars as pl, llmframe
    url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    df = pl.DataFrame({"p": [f"row {i}" if i % 10 else None for i in range(n)]})
    out = df.llm.complete("p", endpoints=url, rps=300, checkpoint=path, metadata=True,
                          progress=False)
    ok = out["response"].to_list() == [None if p is None else "echo: " + p for p in df["p"]]
    print("complete", ok, out["attempts"].is_not_null().sum(), flush=True)
""")


def test_checkpoint_survives_a_killed_kernel(tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "llmframe", "serve-mock", "--port", "0",
                               "--latency", "0.05,0.4"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        script = tmp_path / "ckpt.py"
        script.write_text(CHECKPOINT_SCRIPT)
        ckpt = tmp_path / "run.ckpt.jsonl"
        n = 1500
        first = subprocess.Popen([sys.executable, script, url, ckpt, str(n)], cwd=ROOT)
        # kill it mid-run, once some finished rows are on disk (a header line + at least
        # `some` rows; at rps=300 the 1350 prompts take 4.5 s or more to send)
        some = 100

        def lines() -> int:
            return ckpt.read_bytes().count(b"\n") if ckpt.exists() else 0

        try:
            wait_until(lambda: lines() > some or first.poll() is not None,
                        lambda: f"{some} rows in {ckpt}; it has {max(lines() - 1, 0)}")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        assert first.returncode == -signal.SIGKILL, "the run ended before it was killed"
        saved = ckpt.read_text().splitlines()
        assert some <= len(saved) - 1 < n  # the header + the finished rows, not all of them
        with ckpt.open("a") as f:
            f.write('{"index": 3, "resp')  # torn by the crash
        second = subprocess.run([sys.executable, script, url, ckpt, str(n)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert second.stdout.split() == ["complete", "True", str(n - n // 10)]
        # a different frame cannot reuse the checkpoint
        with pytest.raises(llmframe.ConfigError, match="different input"):
            pl.DataFrame({"p": ["other"]}).llm.complete("p", endpoints=url, checkpoint=ckpt)
    finally:
        server.terminate()
        server.wait(10)
