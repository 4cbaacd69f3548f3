"""The fault scenarios, as a report: what each one does to a run.

    python bench/faults.py [--only faults|retry-after] [--timeout 120]

Each scenario runs rows through the engine against local mock endpoints that misbehave in
one way, and prints: rows, answered, errors, retries, endpoint cooldowns, 429s seen, whether
every row got exactly one result, and how long it took. The same scenarios are asserted in
tests/test_faults.py; this prints them for the README.

A second table puts llmframe next to bench/simple_client.py (a client that simply sleeps
each Retry-After, capped at 60 s) on one endpoint answering 429s, a fresh server per run.
Every run is bounded by a timeout, so the report always finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from simple_client import run_loop, run_simple

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


def fault_table() -> str:
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
    return "\n".join(lines)


def _dead() -> MockServer:
    srv = MockServer().start()
    srv.stop()
    return srv


class Outcome:
    """What one client did in one retry-after run."""

    def __init__(self) -> None:
        self.answered = 0
        self.errors = 0
        self.requests = 0
        self.seconds = 0.0
        self.first_error: str | None = None
        self.timed_out: float | None = None  # the limit, if the run hit it


def _bounded(fn: Callable[[], None], limit: float) -> bool:
    """Run ``fn`` in a daemon thread; False if it is still running after ``limit`` s."""
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    thread.join(limit)
    return not thread.is_alive()


def llmframe_run(url: str, n: int, limit: float, **options: Any) -> Outcome:
    """``n`` rows through the engine, cancelled after ``limit`` seconds."""
    rows = [(i, {"input": f"q{i}"}, None) for i in range(n)]
    config = RunConfig([url], **options)
    out = Outcome()

    async def collect() -> None:
        async for batch in stream_results(rows, config, RunStats()):
            for r in batch:
                if r.error is None:
                    out.answered += 1
                else:
                    out.errors += 1
                    out.first_error = out.first_error or r.error

    async def main() -> None:
        try:
            await asyncio.wait_for(collect(), limit)
        except asyncio.TimeoutError:
            out.timed_out = limit

    start = time.perf_counter()
    if not _bounded(lambda: run_sync(main), limit + 15):  # the engine ignored cancellation
        out.timed_out = limit
    out.seconds = time.perf_counter() - start
    return out


def simple_run(url: str, n: int, limit: float, **options: Any) -> Outcome:
    """``n`` rows through bench/simple_client.py, cancelled after ``limit`` seconds."""
    prompts = [f"q{i}" for i in range(n)]
    out = Outcome()
    tally: dict[str, Any] = {}

    async def main() -> None:
        try:
            await asyncio.wait_for(run_simple(url, prompts, tally=tally, **options), limit)
        except asyncio.TimeoutError:
            out.timed_out = limit

    start = time.perf_counter()
    if not _bounded(lambda: run_loop(main()), limit + 15):
        out.timed_out = limit
    out.seconds = time.perf_counter() - start
    out.answered, out.errors = tally.get("ok", 0), tally.get("errors", 0)
    out.first_error = tally.get("first_error")
    return out


def against(client: Callable[..., Outcome], server: dict[str, Any], n: int, limit: float,
            **options: Any) -> Outcome:
    """One client run against a fresh MockServer (so first-attempt state starts empty)."""
    with MockServer(**server) as srv:
        out = client(srv.url, n, limit, **options)
        out.requests = srv.counts["requests"]
    return out


def _cell(out: Outcome) -> str:
    if out.timed_out is not None:
        return f"{out.seconds:.1f} (timed out after {out.timed_out:g} s)"
    return f"{out.seconds:.1f}"


def _ratio(a: Outcome, b: Outcome) -> str:
    if not b.seconds or (a.timed_out is not None and b.timed_out is not None):
        return "- (both timed out)" if b.seconds else "-"
    ratio = a.seconds / b.seconds
    if a.timed_out is not None and b.timed_out is None:
        return f">= {ratio:.2f}"
    if b.timed_out is not None and a.timed_out is None:
        return f"<= {ratio:.2f}"
    return f"{ratio:.2f}"


def retry_after_table(limit: float = 120.0) -> str:
    lines = ["| scenario | client | concurrency | rows | answered | errors | requests seen | "
             "seconds | llmframe/simple | first error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cases: list[tuple[str, dict[str, Any], int, int, float]] = []
    for conc in (256, 32):
        cases.append(("A: each prompt's 1st attempt 429, Retry-After 3 s",
                      {"first_fault": "429", "retry_after": 3}, 200, conc, limit))
    for conc in (256, 32):
        cases.append(("B: 10% 429, Retry-After 1 s", {"faults": {"429": 0.1}, "retry_after": 1},
                      3000, conc, limit))
    cases.append(("C: 5% 429, Retry-After 86400 s",
                  {"faults": {"429": 0.05}, "retry_after": 86400}, 300, 256, 30.0))
    for name, server, n, conc, simple_limit in cases:
        server = {"latency": 0.0, **server}
        ours = against(llmframe_run, server, n, limit, rps=500, concurrency=conc)
        theirs = against(simple_run, server, n, simple_limit, rps=500, concurrency=conc,
                         max_attempts=5)
        for label, out, ratio in (("llmframe", ours, _ratio(ours, theirs)),
                                  ("simple", theirs, "")):
            error = (out.first_error or "").replace("|", "/")[:120]
            lines.append(f"| {name} | {label} | {conc} | {n} | {out.answered} | {out.errors} | "
                         f"{out.requests} | {_cell(out)} | {ratio} | {error} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description="Print the fault scenarios as tables.")
    p.add_argument("--only", choices=("faults", "retry-after"), default=None,
                   help="print just one table")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds before a retry-after run is cancelled")
    args = p.parse_args()
    if args.only in (None, "faults"):
        print(fault_table())
    if args.only in (None, "retry-after"):
        if args.only is None:
            print()
        print("Retry-After against a client that simply waits it\n")
        print(retry_after_table(args.timeout), flush=True)


if __name__ == "__main__":
    main()
