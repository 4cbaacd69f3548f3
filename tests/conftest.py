from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from llmframe import Result, RunConfig, RunStats, stream_results
from llmframe._runner import run_sync
from llmframe.testing import MockServer

ROOT = Path(__file__).resolve().parent.parent

# the response cache: off unless a test turns it on, and never in the user's cache directory
os.environ.pop("LLMFRAME_CACHE", None)
os.environ["LLMFRAME_CACHE_DIR"] = tempfile.mkdtemp(prefix="llmframe-test-cache-")
# proxies are honoured by default: a machine's own (CI behind a proxy) must not carry the
# suite's 127.0.0.1 traffic; tests/test_proxy.py sets them where it means to
for _name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.upper(), None)


def run_rows(
    rows: Iterable[Any], endpoints: Any, **options: Any
) -> tuple[dict[int, Result], RunStats]:
    """Run rows (texts, or (index, payload, reason) tuples) and return results by index."""
    items = [r if isinstance(r, tuple) else (i, {"input": r}, None) for i, r in enumerate(rows)]
    config = RunConfig(endpoints, **options)
    stats = RunStats()

    async def main() -> list[Result]:
        out: list[Result] = []
        async for batch in stream_results(items, config, stats):
            out.extend(batch)
        return out

    results = run_sync(main)
    by_index: dict[int, Result] = {}
    for r in results:
        assert r.index not in by_index, f"row {r.index} has two results"
        by_index[r.index] = r
    return by_index, stats


@pytest.fixture
def mock_server():
    """Factory: mock_server(**options) -> a started MockServer, stopped after the test."""
    started: list[MockServer] = []

    def make(**options: Any) -> MockServer:
        srv = MockServer(**options).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def cli_env(monkeypatch):
    return [sys.executable, "-m", "llmframe"]


def wait_until(condition, what, timeout=60.0):
    """Poll ``condition`` until it holds; fail naming ``what()`` if ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting for {what()}")
        time.sleep(0.02)
