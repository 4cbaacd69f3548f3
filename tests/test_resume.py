"""Nothing lost: kill -9 then --resume, SIGINT/SIGTERM, existing outputs, --retry-errors."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, wait_until

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



def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_for_results(path: Path, n: int, proc: subprocess.Popen) -> None:
    """Wait until ``path`` holds ``n`` result lines while ``proc`` is still running."""
    wait_until(lambda: complete_lines(path) >= n or proc.poll() is not None,
               lambda: f"{n} result lines in {path}; it has {complete_lines(path)}")
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it was stopped"


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped; nobody may have reaped it yet


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_then_resume_gives_every_row_exactly_once(tmp_path, endpoint, workers):
    url = endpoint("--latency", "0.05,0.6")
    n = 1500
    req = requests_file(tmp_path / "r.jsonl", n)
    save, errors = tmp_path / "r.save.jsonl", tmp_path / "r.errors.jsonl"
    args = [req, "-e", url, "--rps", 500, "--workers", workers]
    if workers > 1 and not Path("/proc").is_dir():
        pytest.skip("finding the worker processes needs /proc")
    proc = start_run(*args)
    some = 100  # at --rps 500 the 1500 rows take 3 s or more: kill it well before the end
    try:
        wait_for_results(save, some, proc)
        helpers = children(proc.pid)  # the workers (and multiprocessing's resource tracker)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(helpers) >= (workers if workers > 1 else 0), helpers
    # orphaned workers notice their parent is gone, flush and stop: only then is the run over
    wait_until(lambda: not any(running(pid) for pid in helpers),
               lambda: f"the orphaned workers to stop; still running: "
                       f"{[pid for pid in helpers if running(pid)]}")
    proc.communicate(timeout=60)
    partial = indices(save)
    assert some <= len(partial) < n
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
def test_signal_stops_gracefully_flushes_and_resume_finishes(tmp_path, mock_server, sig,
                                                            code):
    srv = mock_server(latency=0.5)  # served from this process: the test sees what reached it
    url = srv.url
    n = 2000
    req = requests_file(tmp_path / "r.jsonl", n)
    save, errors = tmp_path / "r.save.jsonl", tmp_path / "r.errors.jsonl"
    proc = start_run(req, "-e", url, "--rps", 200, "--grace", 3)
    some = 50  # at --rps 200 the 2000 rows take 10 s or more: stop it well before the end
    try:
        wait_for_results(save, some, proc)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the run did not stop within 60 s of the signal")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == code, err
    assert "interrupted after" in err and "--resume" in err
    first = indices(save)
    stated = int(re.search(r"([\d,]+) ok", err).group(1).replace(",", ""))
    assert len(first) == stated and some <= len(first) < n
    # it stopped taking rows, and the requests in flight at the signal were allowed to
    # finish within the grace period: every request the server got was answered and saved,
    # none was cut off or failed
    assert srv.counts["requests"] == srv.counts["ok"] == len(first), dict(srv.counts)
    assert errors.read_text() == ""
    resumed = subprocess.run([*LLMFRAME, "run", req, "-e", url, "--rps", "1000", "--resume"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(indices(save)) == list(range(n))
    # the resumed run sent only the rest: over both runs each row was sent exactly once
    assert srv.counts["requests"] == n, dict(srv.counts)


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
