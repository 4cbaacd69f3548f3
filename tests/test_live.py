"""The long-lived engine of a Ray actor (``_live.LiveEngine``), without Ray: batches from
several threads into one run, against the test server on 127.0.0.1."""

from __future__ import annotations

import threading

from llmframe import RunConfig
from llmframe._live import LiveEngine, Shared
from llmframe._purse import Purse, SharedBudget


def _rows(prefix: str, n: int) -> list:
    return [(i, {"input": f"{prefix}{i}"}, None) for i in range(n)]


def test_batches_from_several_threads_each_get_their_own_rows_back(mock_server):
    srv = mock_server(latency=0.01)
    engine = LiveEngine(RunConfig([srv.url]))
    out: dict[int, list] = {}

    def batch(k: int) -> None:
        out[k] = engine.run(_rows(f"t{k}-", 50))

    threads = [threading.Thread(target=batch, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.close()
    for k in range(6):
        assert [r.index for r in out[k]] == list(range(50))
        assert [r.response for r in out[k]] == [f"echo: t{k}-{i}" for i in range(50)]
    assert srv.counts["requests"] == 300


def _batch(engine: LiveEngine, box: dict) -> None:
    box["out"] = engine.run(_rows("same", 20))


def test_the_same_rows_again_and_again_with_a_cache_never_hang(mock_server, tmp_path):
    # the cache's feed pairs a result with the rows waiting for the same answer by the
    # run's own row index: the engine hands back copies renumbered for the batch
    srv = mock_server()
    engine = LiveEngine(RunConfig([srv.url], cache=tmp_path / "c.sqlite3"))
    try:
        for k in range(5):
            if k == 4:  # written to the file now: the next batch is answered free
                engine.flush()
                sent = srv.counts["requests"]
            box: dict = {}
            thread = threading.Thread(target=_batch, args=(engine, box), daemon=True)
            thread.start()
            thread.join(20)
            assert "out" in box, "a batch of rows seen before never came back"
            assert [r.response for r in box["out"]] == [f"echo: same{i}" for i in range(20)]
    finally:
        engine.close()
    assert srv.counts["requests"] == sent


def test_a_shared_budget_stops_the_engine_and_every_row_after_is_not_sent(mock_server):
    srv = mock_server()
    ep = {"url": srv.url, "price_in": 1000, "price_out": 1000}
    purse = Purse(0.3)

    async def draw(amount):
        return purse.draw(amount)

    engine = LiveEngine(RunConfig([ep], budget=0.3, params={"max_tokens": 10}),
                        Shared(budget=SharedBudget(draw, chunk=0.05)))
    try:
        first = engine.run(_rows("b", 40))
        later = engine.run(_rows("c", 10))
    finally:
        engine.close()
    answered = [r for r in first if r.error is None]
    assert 0 < len(answered) < 40 and srv.counts["requests"] == len(answered)
    assert 0.3 - 0.03 < sum(r.cost_usd for r in answered) <= 0.3
    assert {r.error for r in first if r.error} == {"not sent: stopped by the budget"}
    assert {r.error for r in later} == {"not sent: stopped by the budget"}
