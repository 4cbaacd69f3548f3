"""The fault scenarios, as a report: what each one does to a run.

    python bench/faults.py

Each scenario runs rows through the engine against local mock endpoints that misbehave in
one way, and prints: rows, answered, errors, retries, endpoint cooldowns, 429s seen, whether
every row got exactly one result, and how long it took. The same scenarios are asserted in
tests/test_faults.py; this prints them for the README.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from llmframe import RunConfig, RunStats, stream_results
from llmframe._runner import run_sync
from llmframe.testing import MockServer


def run(n: int, endpoints: list[Any], **options: Any) -> tuple[dict[int, Any], RunStats, float]:
    rows = [(i, {"input": f"q{i}"}, None) for i in range(n)]
    stats = RunStats()
    config = RunConfig(endpoints, **options)

    async def main() -> list[Any]:
        out = []
        async for batch in stream_results(rows, config, stats):
            out.extend(batch)
        return out

    start = time.perf_counter()
    results = run_sync(main)
    elapsed = time.perf_counter() - start
    by_index: dict[int, Any] = {}
    for r in results:
        by_index.setdefault(r.index, []).append(r)
    return by_index, stats, elapsed


def scenario(name: str, setup: Callable[[], tuple[list[MockServer], Callable[[], None] | None]],
             n: int, **options: Any) -> str:
    servers, during = setup()
    thread = threading.Thread(target=during) if during else None
    try:
        if thread:
            thread.start()
        results, stats, elapsed = run(n, [s.url for s in servers], **options)
    finally:
        if thread:
            thread.join()
        for s in servers:
            s.stop()
    once = sorted(results) == list(range(n)) and all(len(v) == 1 for v in results.values())
    cooldowns = sum(e.cooldowns for e in stats.endpoints)
    throttled = sum(e.throttled for e in stats.endpoints)
    return (f"| {name} | {n} | {stats.ok} | {stats.errors} | {stats.retries} | {cooldowns} | "
            f"{throttled} | {'yes' if once else 'NO'} | {elapsed:.1f} |")


def main() -> None:
    lines = ["| scenario | rows | answered | errors | retries | cooldowns | 429s | "
             "exactly once | seconds |", "|---|---|---|---|---|---|---|---|---|"]

    def two(**bad: Any):
        return lambda: ([MockServer(latency=0.01, seed=1, **bad).start(),
                         MockServer(latency=0.01, seed=2).start()], None)

    lines.append(scenario("429 bursts (50%, Retry-After 0.3 s) on 1 of 2",
                          two(faults={"429": 0.5}, retry_after=0.3), 1000, rps=500))
    lines.append(scenario("5xx storm (100% 500) on 1 of 2", two(faults={"500": 1.0}), 1000,
                          rps=500))
    lines.append(scenario("connections dropped (20%) on 1 of 2", two(faults={"drop": 0.2}),
                          1000, rps=500))
    lines.append(scenario("hangs past the 1 s timeout (10%) on 1 of 2",
                          two(faults={"hang": 0.1}), 1000, rps=500, timeout=1.0))
    lines.append(scenario("malformed JSON 200s (20%) on 1 of 2",
                          two(faults={"malformed": 0.2}), 1000, rps=500))

    def killed():
        a, b = MockServer(latency=0.01).start(), MockServer(latency=0.01).start()
        return [a, b], lambda: (time.sleep(1.0), a.stop())

    lines.append(scenario("1 of 2 endpoints killed after 1 s", killed, 1000, rps=500))

    def outage():
        a, b = MockServer(latency=0.01).start(), MockServer(latency=0.01).start()

        def down_and_up():
            time.sleep(1.0)
            a.stop()
            b.stop()
            time.sleep(3.0)
            a.start()
            b.start()

        return [a, b], down_and_up

    lines.append(scenario("both endpoints down for 3 s, then back", outage, 1000, rps=200))
    lines.append(scenario("single endpoint, dead all along (refused)",
                          lambda: ([_dead()], None), 50, rps=100))
    print("\n".join(lines))


def _dead() -> MockServer:
    srv = MockServer().start()
    srv.stop()
    return srv


if __name__ == "__main__":
    main()
