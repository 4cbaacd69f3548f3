"""After a stop, "not finished" counts every row read that has no result (defect 6)."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("workers", ["1", "2"])
def test_not_finished_counts_requests_cut_when_the_grace_period_ends(mock_server, tmp_path,
                                                                     workers):
    srv = mock_server(faults={"hang": 1.0})
    req = tmp_path / "r.jsonl"
    req.write_text("".join(json.dumps({"input": f"q{i}"}) + "\n" for i in range(500)))
    proc = subprocess.Popen([sys.executable, "-m", "llmframe", "run", str(req), "-e", srv.url,
                             "--grace", "0.5", "--concurrency", "50", "--workers", workers],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while srv.counts["hang"] < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    m = re.search(r"after ([\d,]+) of ([\d,]+) rows.*, ([\d,]+) not finished", err)
    assert m, err
    done, rows, unfinished = (int(x.replace(",", "")) for x in m.groups())
    on_disk = sum(1 for p in tmp_path.glob("r.*.jsonl") for _ in p.read_text().splitlines())
    assert done == on_disk == 0 and rows >= 50 and unfinished == rows
