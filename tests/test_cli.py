"""``llmframe run`` as a subprocess, against real local servers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LLMFRAME = [sys.executable, "-m", "llmframe"]


def run_cli(*args, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*LLMFRAME, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_requests(path: Path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


def test_original_flags_work_verbatim(tmp_path, mock_server):
    srv = mock_server(latency=0.01)
    req = write_requests(tmp_path / "req.jsonl",
                         [{"input": f"prompt {i}", "meta": i} for i in range(50)])
    out = tmp_path / "out.jsonl"
    proc = run_cli("run", "--requests_filepath", req, "--max_requests_per_second", 500,
                   "--max_attempts", 3, "--save_filepath", out, "--endpoint", srv.url)
    assert proc.returncode == 0, proc.stderr
    lines = read_jsonl(out)
    assert sorted(x["index"] for x in lines) == list(range(50))
    for x in lines:
        assert x["response"] == f"echo: prompt {x['index']}" and x["request"]["meta"] == x["index"]
        assert x["attempts"] == 1 and x["endpoint"] == srv.url and x["latency_ms"] >= 0
        assert x["usage"]["prompt_tokens"] == 9  # 2 words + 4 per message + 3
    assert "done: 50 of 50 rows" in proc.stderr
    errors = tmp_path / "req.errors.jsonl"  # next to the input by default
    assert errors.exists() and errors.read_text() == ""


def test_mock_runs_the_main_job_and_says_the_endpoints_are_local(tmp_path):
    req = write_requests(tmp_path / "r.jsonl", [{"input": f"p{i}"} for i in range(300)])
    proc = run_cli("run", req, "--mock", 3, "--mock-latency", "0.001,0.01")
    assert proc.returncode == 0, proc.stderr
    assert "local test endpoint" in proc.stderr
    saved = read_jsonl(tmp_path / "r.save.jsonl")
    assert len(saved) == 300
    shares = sorted(sum(1 for x in saved if x["endpoint"] == e)
                    for e in {x["endpoint"] for x in saved})
    assert shares == [50, 100, 150]  # weights 1..3


def test_bad_lines_become_error_lines_with_their_index(tmp_path, mock_server):
    srv = mock_server()
    req = tmp_path / "r.jsonl"
    req.write_bytes(b'{"input": "good"}\n'
                    b"not json\n"
                    b"\n"
                    b"[1, 2]\n"
                    b'{"input": 5, "id": "x"}\n'
                    b'{"prompt": "wrong key"}\n'
                    b'{"input": "caf\xff"}\n'
                    b'{"input": "also good"}\n')
    proc = run_cli("run", req, "-e", srv.url)
    assert proc.returncode == 1, proc.stderr
    errors = {x["index"]: x for x in read_jsonl(tmp_path / "r.errors.jsonl")}
    assert sorted(errors) == [1, 3, 4, 5, 6]
    assert "line 2: not valid JSON" in errors[1]["error"] and errors[1]["input"] == "not json"
    assert "expected a JSON object" in errors[3]["error"]
    assert errors[4]["request"]["id"] == "x" and "must be a string" in errors[4]["error"]
    assert 'missing "input"' in errors[5]["error"]
    assert "not valid UTF-8" in errors[6]["error"]
    saved = read_jsonl(tmp_path / "r.save.jsonl")
    assert sorted(x["index"] for x in saved) == [0, 7]
    assert "2 ok, 5 errors" in proc.stderr


def test_empty_file_is_a_clear_message_and_exit_0(tmp_path, mock_server):
    srv = mock_server()
    req = tmp_path / "empty.jsonl"
    req.write_text("\n\n")
    proc = run_cli("run", req, "-e", srv.url)
    assert proc.returncode == 0
    assert "no requests" in proc.stderr
    assert srv.counts["requests"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.jsonl", "-e", "http://127.0.0.1:9/v1"], "requests file not found"),
        (["run", "{req}", "-e", "localhost:8000"], "http:// or https://"),
        (["run", "{req}", "-e", "url=http://127.0.0.1:9/v1,weight=0"], "weight must be > 0"),
        (["run", "{req}", "-e", "http://127.0.0.1:9/v1", "--rps", "0"], "rps must be > 0"),
        (["run", "{req}"], "no endpoints"),
        (["run", "{req}", "-e", "url=http://127.0.0.1:9/v1,key_env=LLMF_UNSET"],
         "LLMF_UNSET is not set"),
        (["run", "{req}", "--endpoints-file", "nope.toml"], "endpoints file not found"),
        (["run"], "no requests file"),
    ],
)
def test_bad_config_fails_before_any_request_with_exit_2(tmp_path, args, message, mock_server):
    req = write_requests(tmp_path / "r.jsonl", [{"input": "x"}])
    proc = run_cli(*[a.replace("{req}", str(req)) for a in args])
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r.save.jsonl").exists()


def test_endpoints_file_and_key_from_env_never_printed(tmp_path, mock_server):
    a = mock_server(require_key="sk-live-abcdef123456", echo_auth=True)
    b = mock_server(faults={"500": 1.0}, echo_auth=True)
    toml = tmp_path / "endpoints.toml"
    toml.write_text(f'[[endpoints]]\nurl = "{a.url}"\nweight = 3\napi_key_env = "LLMF_KEY"\n\n'
                    f'[[endpoints]]\nurl = "{b.url}"\n')
    req = write_requests(tmp_path / "r.jsonl", [{"input": f"x{i}"} for i in range(40)])
    proc = run_cli("run", req, "--endpoints-file", toml, "--max-attempts", 1, "--progress",
                   env={"LLMF_KEY": "sk-live-abcdef123456"})
    assert proc.returncode == 1
    everything = proc.stdout + proc.stderr + (tmp_path / "r.save.jsonl").read_text() + (
        tmp_path / "r.errors.jsonl").read_text()
    assert "sk-live-abcdef123456" not in everything
    assert set(a.auth_seen) == {"Bearer sk-live-abcdef123456"}
    assert a.auth_seen["Bearer sk-live-abcdef123456"] >= 30  # 3:1, more once b cools down
    assert not b.auth_seen


def test_help_lists_the_options_and_exit_codes():
    proc = run_cli("run", "--help")
    assert proc.returncode == 0
    for flag in ("--requests_filepath", "--max_requests_per_second", "--max_attempts",
                 "--save_filepath", "--endpoint", "--mock", "--api", "Exit codes"):
        assert flag in proc.stdout


def test_serve_mock_command_serves_until_terminated(tmp_path):
    proc = subprocess.Popen([*LLMFRAME, "serve-mock", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        req = write_requests(tmp_path / "r.jsonl", [{"input": "ping"}])
        done = run_cli("run", req, "-e", url)
        assert done.returncode == 0, done.stderr
        assert read_jsonl(tmp_path / "r.save.jsonl")[0]["response"] == "echo: ping"
    finally:
        proc.terminate()
        proc.wait(10)
