"""Input fields named like llmframe's own never collide (defect 3), and the file/frame
layouts stay consistent through resume, retry-errors, read_jsonl and write_results."""

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

import llmframe
from llmframe._results import Result

COLLIDING = {"index": "row-7", "status": "draft", "error": "none yet", "endpoint": "mine",
             "attempts": [1, 2], "id": 7, "request": "theirs", "response": "old",
             "latency_ms": "?", "usage": {"x": 1}, "input": "the prompt"}


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_no_input_field_is_lost_or_changed(tmp_path, mock_server):
    srv = mock_server(script=[None, "500"])  # the second request fails permanently below
    req = tmp_path / "r.jsonl"
    rows = [dict(COLLIDING, input=f"q{i}", id=i) for i in range(20)]
    rows[3] = {**COLLIDING, "input": 12}  # an invalid row keeps its fields too
    req.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "llmframe", "run", req, "-e", srv.url,
                           "--max-attempts", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    out = lines(tmp_path / "r.save.jsonl") + lines(tmp_path / "r.errors.jsonl")
    assert sorted(x["index"] for x in out) == list(range(20))  # the line number, always
    for x in out:
        assert x["request"] == rows[x["index"]]  # verbatim, every field
    errors = lines(tmp_path / "r.errors.jsonl")
    assert {e["index"] for e in errors} >= {1, 3}
    assert all(e["input"] == rows[e["index"]]["input"] for e in errors)


def _wait_for_lines(path, n, proc, deadline=60.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    pytest.fail(f"{path} never reached {n} lines")


@pytest.mark.slow
def test_kill_9_and_resume_is_exact_with_colliding_fields(tmp_path, mock_server):
    """The outside finding: 3,000 such lines killed and resumed lost 511 rows, recorded 512
    twice and sent 1,024 again."""
    srv = mock_server(latency=(0.005, 0.05), seed=2)
    req = tmp_path / "r.jsonl"
    rows = [{"input": f"q{i}", "index": f"row-{i}", "status": "draft", "id": i}
            for i in range(3000)]
    req.write_text("".join(json.dumps(r) + "\n" for r in rows))
    save = tmp_path / "r.save.jsonl"
    cmd = [sys.executable, "-m", "llmframe", "run", str(req), "-e", srv.url, "--rps", "1000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    _wait_for_lines(save, 1000, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    before = {x["index"] for x in lines(save) if isinstance(x, dict)}
    sent_before = srv.counts["requests"]
    again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    final = lines(save)
    indices = [x["index"] for x in final]
    assert sorted(indices) == list(range(3000))  # every row exactly once
    for x in final:
        assert x["request"] == rows[x["index"]]
    # rows already on disk were not sent again
    assert srv.counts["requests"] - sent_before == 3000 - len(before)


def test_read_jsonl_and_write_results_keep_the_layout(tmp_path, mock_server):
    srv = mock_server()
    req = tmp_path / "r.jsonl"
    req.write_text(json.dumps(COLLIDING) + "\nnot json\n")
    with pytest.warns(UserWarning, match="1 line"):
        df = llmframe.read_jsonl(req)
    assert df.columns == ["index", "input", "request", "read_error", "raw_line"]
    assert json.loads(df["request"][0]) == COLLIDING
    out = df.llm.complete("input", endpoints=[srv.url], metadata=True, progress=False)
    assert llmframe.write_results(out, tmp_path / "s.jsonl", tmp_path / "e.jsonl") == (1, 1)
    assert lines(tmp_path / "s.jsonl")[0]["request"] == COLLIDING
    assert lines(tmp_path / "e.jsonl")[0]["input"] == "not json"


def test_read_jsonl_for_raw_mode_does_not_flag_bodies(tmp_path, mock_server):
    """Defect 7: lines meant for --api raw are request bodies, not chat rows."""
    req = tmp_path / "r.jsonl"
    # a body whose "input" is no chat prompt (as in the Responses API): fine for raw
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "input": [{"role": "user", "content": "hi"}]}
    req.write_text(json.dumps(body) + "\n")
    with pytest.warns(UserWarning):
        assert llmframe.read_jsonl(req)["read_error"][0] is not None  # not a chat row
    df = llmframe.read_jsonl(req, api="raw")
    assert df["read_error"][0] is None
    srv = mock_server()
    out = df.llm.complete("request", endpoints=[srv.url], api="raw", progress=False)
    answer = json.loads(out["response"][0])
    assert answer["choices"][0]["message"]["content"] == "echo: hi"


def test_write_results_keeps_an_answer_whose_content_was_null(tmp_path):
    """Defect 7: a successful answer with null content is a saved line, as in the CLI."""
    df = pl.DataFrame({"index": [0, 1], "input": ["a", None], "response": [None, None],
                       "error": [None, None], "attempts": [1, None]},
                      schema_overrides={"response": pl.String, "error": pl.String})
    assert llmframe.write_results(df, tmp_path / "s.jsonl", tmp_path / "e.jsonl") == (1, 0)
    saved = lines(tmp_path / "s.jsonl")[0]
    assert saved["index"] == 0 and saved["response"] is None and saved["request"] == {
        "input": "a"}


def test_frame_columns_the_call_would_add_are_refused_before_sending(mock_server):
    srv = mock_server()
    df = pl.DataFrame({"p": ["a"], "status": ["draft"]})
    with pytest.raises(llmframe.ConfigError, match="'status'"):
        df.llm.complete("p", endpoints=[srv.url], metadata=True, progress=False)
    assert srv.counts["requests"] == 0
    out = df.llm.complete("p", endpoints=[srv.url], progress=False)  # no metadata: fine
    assert out["status"].to_list() == ["draft"]


def test_result_payload_is_kept_verbatim_in_records():
    from llmframe._jsonl import error_record, success_record

    r = Result(7, dict(COLLIDING), response="x", attempts=1)
    assert success_record(r)["request"] == COLLIDING and success_record(r)["index"] == 7
    assert error_record(Result(7, dict(COLLIDING), error="e"))["index"] == 7


def test_integers_past_64_bits_come_back_unchanged(tmp_path, mock_server):
    srv = mock_server()
    req = tmp_path / "r.jsonl"
    line = '{"input": "q", "id": 123456789012345678901234567890, "n": -98765432109876543210}'
    req.write_text(line + "\n")
    proc = subprocess.run([sys.executable, "-m", "llmframe", "run", req, "-e", srv.url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    saved = (tmp_path / "r.save.jsonl").read_text()
    assert "123456789012345678901234567890" in saved and "-98765432109876543210" in saved
    assert json.loads(saved)["request"] == json.loads(line)


def test_bad_rows_name_the_file_and_line_and_messages_rows_are_not_dropped(tmp_path,
                                                                         mock_server):
    srv = mock_server()
    req = tmp_path / "r.jsonl"
    req.write_text(json.dumps({"input": 5}) + "\n" + json.dumps({"id": 1}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    subprocess.run([sys.executable, "-m", "llmframe", "run", req, "-e", srv.url],
                          capture_output=True, text=True, timeout=60)
    errors = {e["index"]: e["error"] for e in lines(tmp_path / "r.errors.jsonl")}
    assert errors[0].startswith("r.jsonl line 1: ") and errors[1].startswith("r.jsonl line 2: ")
    assert lines(tmp_path / "r.save.jsonl")[0]["index"] == 2  # the CLI answers messages rows
    with pytest.warns(UserWarning, match="3 line"):
        df = llmframe.read_jsonl(req)
    assert "messages" in df["read_error"][2]  # the frame path says so, never drops it
    out = df.llm.complete("input", endpoints=[srv.url], metadata=True, progress=False)
    assert llmframe.write_results(out, tmp_path / "s.jsonl", tmp_path / "e.jsonl") == (0, 3)


def test_raw_mode_round_trip_writes_the_response_object(tmp_path, mock_server):
    srv = mock_server()
    req = tmp_path / "r.jsonl"
    req.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "llmframe", "run", req, "-e", srv.url,
                           "--api", "raw"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cli = lines(tmp_path / "r.save.jsonl")[0]
    df = llmframe.read_jsonl(req, api="raw")
    out = df.llm.complete("request", endpoints=[srv.url], api="raw", metadata=True,
                          progress=False)
    llmframe.write_results(out, tmp_path / "s.jsonl", tmp_path / "e.jsonl", api="raw")
    py = lines(tmp_path / "s.jsonl")[0]
    assert isinstance(py["response"], dict)
    drop = ("latency_ms",)
    assert {k: v for k, v in py.items() if k not in drop} == {
        k: v for k, v in cli.items() if k not in drop}
