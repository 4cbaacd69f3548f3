"""A small, fast smoke run of the benchmark keeps it working (no timing assertions)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_bench_quick_runs_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "llmframe benchmark" in proc.stdout and "baseline aiohttp" in proc.stdout
    data = json.loads((tmp_path / "results.json").read_text())
    scenarios = {(r["scenario"], r["client"]) for r in data["results"]}
    assert ("latency 0", "llmframe run") in scenarios
    assert ("latency 1 s", "llmframe run --workers 2") in scenarios
    for r in data["results"]:
        # every request the endpoint served came back as exactly one saved line
        assert r["requests"] > 0 and r["ok_lines"] == r["requests"], r
        assert r["client_cpu_us"] > 0 and r["client_rss_mb"] > 0
    assert data["polars"]["engine_wall"] > 0 and data["polars"]["polars_wall"] > 0
    assert ("latency 0", "llmframe run --schema") in scenarios
    cached = data["cached"]
    assert cached["cli cached"]["cached"] == cached["cli cached"]["rows"] > 0
    assert cached["cli filling"]["cached"] == 0
    assert cached["polars cached"]["run_rows_s"] > 0
    assert "response cache" in proc.stdout and "structured output" in proc.stdout
    assert (tmp_path / "throughput_1s.png").stat().st_size > 1000
    # https rows (trustme is a dev dependency), side by side with http, and the handshake
    assert ("latency 0", "llmframe run (https)") in scenarios
    assert ("latency 1 s", "llmframe run --workers 2 (https)") in scenarios
    assert data["handshakes"]["https"] > data["handshakes"]["http"] > 0
    assert "https vs http" in proc.stdout and "handshake alone" in proc.stdout
