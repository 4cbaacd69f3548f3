"""Endpoint signals shared between engines (``_signals``): what one engine learns about an
endpoint (out, paused, cooling down) reaches another, which then keeps off it. Two
``LiveEngine``s in one process trade through one ``Board``, as Ray actors do through the
job's hub; the endpoints are the test server on 127.0.0.1."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmframe import RunConfig
from llmframe._live import LiveEngine, Shared
from llmframe._shares import ShareBook
from llmframe._signals import Board


def _engines(config: RunConfig, n: int = 2, shares: bool = False
             ) -> tuple[list[LiveEngine], Board]:
    """``n`` engines trading through one board, as Ray actors through the hub; with
    ``shares``, their held limits' shares from one ``ShareBook`` (else fixed 1/n)."""
    board, book, lock = Board(), ShareBook(), threading.Lock()

    def engine(who: str) -> LiveEngine:
        async def exchange(news, busy, use):
            with lock:  # the engines' loops run in their own threads
                share = book.ask(who, busy, use, time.monotonic()) if shares else None
                return dict(board.merge(news)), share

        return LiveEngine(config, Shared(exchange=exchange, share=1 / n))

    return [engine(str(i)) for i in range(n)], board


def _rows(prefix: str, n: int) -> list:
    return [(i, {"input": f"{prefix}{i}"}, None) for i in range(n)]


def _run(engine: LiveEngine, rows: list) -> list:
    out = engine.run(rows)
    assert all(r is not None and r.error is None for r in out), out
    return out


def test_an_endpoint_out_for_one_engine_is_out_for_the_other(mock_server):
    # a spent daily quota at A: its first answer asks for 86400 s (past max_retry_after)
    a = mock_server(script=["429"], retry_after=86400)
    b = mock_server()
    config = RunConfig([a.url, b.url], max_retry_after=60)
    (one, two), board = _engines(config)
    try:
        _run(one, _rows("x", 20))
        assert board.signals[0][3] > time.time() + 80000  # A out for a day, on the board
        seen = a.counts["requests"]
        out = _run(two, _rows("y", 200))  # a new engine: never talked to A
        assert a.counts["requests"] == seen  # nothing more to A
        assert b.counts["requests"] >= 200 and [r.response for r in out][:2] == [
            "echo: y0", "echo: y1"]
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize(("faults", "first", "slot"), [
    # A refuses everything (429, Retry-After 5): once refusals dominate, it is paused
    ({"429": 1.0}, 60, 0),
    # A answers 500 to everything: broken, it cools down
    ({"500": 1.0}, 40, 1),
], ids=["paused", "cooling-down"])
def test_a_held_endpoint_is_held_for_the_other_engine(mock_server, faults, first, slot):
    a = mock_server(faults=faults, retry_after=5)
    b = mock_server()
    config = RunConfig([a.url, b.url], max_attempts=10)
    (one, two), board = _engines(config)
    try:
        _run(one, _rows("x", first))
        assert board.signals[0][slot] > 0  # A paused / cooling down, on the board
        seen = a.counts["requests"]
        _run(two, _rows("y", 200))
        assert a.counts["requests"] == seen
    finally:
        one.close()
        two.close()


def test_without_a_board_the_other_engine_finds_out_for_itself(mock_server):
    # the control: the same out endpoint, engines not sharing: the second one sends to A
    a = mock_server(script=["429"], retry_after=86400)
    b = mock_server()
    config = RunConfig([a.url, b.url], max_retry_after=60)
    one, two = LiveEngine(config), LiveEngine(config)
    try:
        _run(one, _rows("x", 20))
        seen = a.counts["requests"]
        _run(two, _rows("y", 200))
        assert a.counts["requests"] > seen
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize(("shares", "alone"), [(True, 8), (False, 4)],
                         ids=["shared-by-work", "fixed-half"])
def test_the_held_limits_follow_the_work(mock_server, shares, alone):
    # concurrency 8 for the job, two engines: while both have rows they hold at most 8
    # between them at the server; once one is done, the other may have all 8 in flight
    # (with fixed halves it keeps 4: the tail of a Ray job at half speed)
    srv = mock_server(latency=0.05)
    (one, two), _ = _engines(RunConfig([srv.url], concurrency=8), shares=shares)
    try:
        with ThreadPoolExecutor(2) as pool:
            both = [pool.submit(_run, e, _rows(p, 80)) for e, p in ((one, "x"), (two, "y"))]
            for f in both:
                f.result()
        assert srv.state.max_in_flight <= 8
        time.sleep(0.3)  # one has said it has no rows
        srv.state.max_in_flight = 0
        _run(two, _rows("z", 160))
        assert srv.state.max_in_flight == alone
    finally:
        one.close()
        two.close()


def test_an_engine_given_rows_after_idling_asks_for_its_share_at_once(mock_server):
    # an engine without rows has put its share down; rows arriving must not wait for its
    # next exchange (every PERIOD = 0.1 s): batch after batch, one at a time (as a Ray
    # actor may get them), the next batch goes out as soon as the last one is back
    srv = mock_server(latency=0.02)
    srv.state.record_arrivals = True
    (one, two), _ = _engines(RunConfig([srv.url], concurrency=8), shares=True)
    try:
        for k in range(20):
            _run(one, _rows(f"b{k}-", 8))
        starts = sorted(srv.state.arrivals)[::8]  # each batch's first request
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert statistics.median(gaps) < 0.02 + 0.03, gaps  # waiting for PERIOD: ~0.07+
    finally:
        one.close()
        two.close()
