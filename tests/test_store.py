"""A result that cannot be stored stops the run loudly; what was stored stays (defect 5)."""

import json

import polars as pl
import pytest

import llmframe
from llmframe._checkpoint import Checkpoint


def test_a_checkpoint_that_cannot_be_written_fails_the_call(mock_server, tmp_path,
                                                             monkeypatch):
    srv = mock_server()
    real_write = Checkpoint.write
    written = []

    def write(self, result):
        if len(written) == 10:
            raise OSError(28, "No space left on device")
        written.append(result.index)
        real_write(self, result)

    monkeypatch.setattr(Checkpoint, "write", write)
    df = pl.DataFrame({"p": [f"q{i}" for i in range(100)]})
    ckpt = tmp_path / "run.ckpt.jsonl"
    with pytest.raises(llmframe.StoreError, match="No space left"):
        df.llm.complete("p", endpoints=[srv.url], checkpoint=ckpt, progress=False,
                        concurrency=2)
    kept = [json.loads(x) for x in ckpt.read_text().splitlines()[1:]]
    assert sorted(k["index"] for k in kept) == sorted(written) and len(kept) == 10


def test_a_full_disk_under_run_file_raises_store_error_not_oserror(mock_server, tmp_path,
                                                                  monkeypatch):
    """Outside finding: the sink's close flushed again and its OSError replaced StoreError."""
    from llmframe._sinks import JsonlWriter

    srv = mock_server()
    req = tmp_path / "r.jsonl"
    req.write_text("".join(json.dumps({"input": f"q{i}"}) + "\n" for i in range(300)))
    real_flush = JsonlWriter.flush
    flushes = []

    def flush(self):
        if self._buf and self.path.name.endswith("save.jsonl"):
            flushes.append(1)
            if len(flushes) > 1:
                raise OSError(28, "No space left on device")
        real_flush(self)

    monkeypatch.setattr(JsonlWriter, "flush", flush)
    monkeypatch.setattr(JsonlWriter, "__init__", _small_buffer(JsonlWriter.__init__))
    with pytest.raises(llmframe.StoreError, match="No space left"):
        llmframe.run_file(req, endpoints=[srv.url], rps=300)


def _small_buffer(init):
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.limit = 200  # flush every couple of lines: the failure comes mid-run
    return wrapped


def test_a_dead_worker_fails_the_run(mock_server, tmp_path):
    """Outside finding: a --workers run whose worker died (OOM killer, kill -9) exited 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    srv = mock_server(latency=0.05)
    req = tmp_path / "r.jsonl"
    req.write_text("".join(json.dumps({"input": f"q{i}"}) + "\n" for i in range(3000)))
    proc = subprocess.Popen([sys.executable, "-m", "llmframe", "run", str(req), "-e", srv.url,
                             "--workers", "2", "--rps", "300"], stderr=subprocess.PIPE, text=True)
    children: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(children) < 2 or srv.counts["ok"] < 100):
        children = _workers_of(proc.pid)
        time.sleep(0.05)
    if len(children) < 2:
        proc.kill()
        pytest.skip("cannot see the worker processes (/proc)")
    os.kill(int(children[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "died" in err and "--resume" in err


def _workers_of(pid):
    """The worker processes of a run (not multiprocessing's resource tracker)."""
    from pathlib import Path

    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        return []
    out = []
    for child in path.read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(child)
    return out
