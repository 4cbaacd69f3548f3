"""Nothing lost: kill -9 then --resume, SIGINT/SIGTERM, existing outputs, --retry-errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

LLMFRAME = [sys.executable, "-m", "llmframe"]


@pytest.fixture
def endpoint():
    """A mock endpoint in its own process (so killing the client leaves it running)."""
    procs = []

    def start(*args):
        proc = subprocess.Popen([*LLMFRAME, "serve-mock", "--port", "0", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        return re.search(r"(http://\S+)", proc.stdout.readline()).group(1)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def requests_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"input": f"row {i}", "n": i}) + "\n" for i in range(n)))
    return path


def indices(path: Path) -> list[int]:
    return [json.loads(line)["index"] for line in path.read_text().splitlines() if line]


def start_run(*args):
    return subprocess.Popen([*LLMFRAME, "run", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_then_resume_gives_every_row_exactly_once(tmp_path, endpoint, workers):
    url = endpoint("--latency", "0.05,0.6")
    n = 1500
    req = requests_file(tmp_path / "r.jsonl", n)
    save, errors = tmp_path / "r.save.jsonl", tmp_path / "r.errors.jsonl"
    args = [req, "-e", url, "--rps", 500, "--workers", workers]
    proc = start_run(*args)
    time.sleep(2.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    time.sleep(1.0)  # orphaned workers notice their parent is gone and stop
    partial = indices(save)
    assert 0 < len(partial) < n
    with save.open("ab") as f:  # a torn last line, as a crash mid-write leaves
        f.write(b'{"index": 99999, "input": "tor')
    again = subprocess.run([*LLMFRAME, "run", *map(str, args)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites silently
    resumed = subprocess.run([*LLMFRAME, "run", *map(str, args), "--resume"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "torn line" in resumed.stderr
    final = indices(save)
    assert sorted(final) == list(range(n))  # every row exactly once
    assert errors.read_text() == ""
    assert f"done: {n - len(partial):,} of {n - len(partial):,} rows" in resumed.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_gracefully_flushes_and_resume_finishes(tmp_path, endpoint, sig, code):
    url = endpoint("--latency", "0.5")
    n = 2000
    req = requests_file(tmp_path / "r.jsonl", n)
    save = tmp_path / "r.save.jsonl"
    proc = start_run(req, "-e", url, "--rps", 200, "--grace", 3)
    time.sleep(2.0)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert time.monotonic() - sent < 8
    assert "interrupted after" in err and "--resume" in err
    first = indices(save)
    # the requests in flight at the signal were allowed to finish within the grace period
    stated = int(re.search(r"([\d,]+) ok", err).group(1).replace(",", ""))
    assert len(first) == stated > 0
    resumed = subprocess.run([*LLMFRAME, "run", req, "-e", url, "--rps", "1000", "--resume"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(indices(save)) == list(range(n))


def test_overwrite_and_refusal(tmp_path, endpoint):
    url = endpoint()
    req = requests_file(tmp_path / "r.jsonl", 5)
    save = tmp_path / "out.jsonl"
    save.write_text('{"index": 0, "response": "precious"}\n')
    refused = subprocess.run([*LLMFRAME, "run", req, "-e", url, "--save", save],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert str(save) in refused.stderr and "--overwrite" in refused.stderr
    assert "precious" in save.read_text()
    replaced = subprocess.run([*LLMFRAME, "run", req, "-e", url, "--save", save, "--overwrite"],
                              capture_output=True, text=True, timeout=60)
    assert replaced.returncode == 0
    assert sorted(indices(save)) == list(range(5)) and "precious" not in save.read_text()


def test_retry_errors_sends_failed_rows_again(tmp_path, endpoint):
    broken = endpoint("--fault", "500=1.0")
    healthy = endpoint()
    n = 30
    req = requests_file(tmp_path / "r.jsonl", n)
    save, errors = tmp_path / "r.save.jsonl", tmp_path / "r.errors.jsonl"
    first = subprocess.run([*LLMFRAME, "run", req, "-e", broken, "--max-attempts", "1"],
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 1 and len(indices(errors)) == n
    second = subprocess.run([*LLMFRAME, "run", req, "-e", healthy, "--retry-errors"],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert sorted(indices(save)) == list(range(n))
    assert errors.read_text() == ""
    assert len(indices(tmp_path / "r.errors.jsonl.prev")) == n  # the old errors are kept
