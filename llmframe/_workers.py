"""``--workers N``: shard one requests file over N processes, each with its own event loop.

One Python process tops out around 5k requests/s here (aiohttp's per-request cost); a
second process uses the second core. Worker k takes the lines whose index % N == k, runs
the ordinary engine with the rate and concurrency limits split (rps / N each,
concurrency and per-endpoint limits divided and rounded down: together never more), and
appends its results to the shared save/errors files (whole-line ``O_APPEND`` writes: no
line is split, lost or duplicated). Workers report counters to the parent, which shows
one progress bar and one summary. Ctrl-C / SIGTERM in the parent asks every worker to
stop and flush; a worker whose parent dies stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from ._config import RunConfig
from ._exceptions import ConfigError, StoreError, WorkerError
from ._files import FileRun, progress_total, run_file_async
from ._pool import check_network
from ._results import EndpointStats, RunStats
from ._runner import new_event_loop
from ._summary import Progress

__all__ = ["run_sharded", "shard_config"]

_REPORT_EVERY = 0.25


def shard_config(config: RunConfig, n: int, what: str = "workers") -> RunConfig:
    """The limits of one of ``n`` workers: together they never pass ``config``'s (rates
    divided; in-flight limits divided and rounded down, so each needs at least ``n``).

    >>> from llmframe import RunConfig
    >>> shard_config(RunConfig(["http://127.0.0.1:1/v1"], concurrency=10), 3).concurrency
    3
    """
    def part(value: float | None) -> float | None:
        return None if value is None else value / n

    def each(value: int, name: str) -> int:
        if value < n:
            msg = (f"{name}={value} cannot be shared by {n} {what} (each needs at least "
                   f"one request in flight): raise it to {n}, or use fewer {what}")
            raise ConfigError(msg)
        return value // n

    endpoints = tuple(
        replace(ep, rps=part(ep.rps), rpm=part(ep.rpm), tpm=part(ep.tpm),
                max_concurrency=None if ep.max_concurrency is None
                else each(ep.max_concurrency, f"endpoint {ep.name}: max_concurrency"))
        for ep in config.endpoints
    )
    return replace(config, endpoints=endpoints, rps=part(config.rps), tpm=part(config.tpm),
                   budget=part(config.budget),
                   concurrency=each(config.concurrency, "concurrency"))


class _Shard:
    __slots__ = ("inner", "n", "shard")

    def __init__(self, shard: int, n: int, inner: Callable[[int], bool] | None) -> None:
        self.shard, self.n, self.inner = shard, n, inner

    def __call__(self, index: int) -> bool:
        return index % self.n == self.shard and (self.inner is None or self.inner(index))


def _snapshot(stats: RunStats, final: bool, failure: str | None = None) -> dict[str, Any]:
    return {
        "rows": stats.rows, "ok": stats.ok, "errors": stats.errors, "retries": stats.retries,
        "in_flight": stats.in_flight, "final": final, "failure": failure,
        "unfinished": stats.unfinished, "unsent": stats.unsent, "stopped_by": stats.stopped_by,
        "cached": stats.cached, "cache_path": stats.cache_path,
        "endpoints": [(e.sent, e.ok, e.failed_attempts, e.cooldowns, e.throttled,
                       e.latencies if final else None, e.prompt_tokens, e.completion_tokens,
                       e.cost_usd, e.note, e.via) for e in stats.endpoints],
    }


def _worker(run: FileRun, shard: int, n: int, conn: Connection, grace: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    parent = os.getppid()
    run.keep = _Shard(shard, n, run.keep)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)

    async def report(main: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(_REPORT_EVERY)
            if os.getppid() != parent:  # orphaned (where PDEATHSIG is not available)
                main.cancel()
                return
            try:
                conn.send(_snapshot(run.stats, final=False))
            except OSError:  # the parent is gone
                main.cancel()
                return

    async def go() -> None:
        main = asyncio.current_task()
        assert main is not None

        def on_term() -> None:  # first: wind down within the grace period; second: now
            if run.control.stop_requested:
                main.cancel()
            else:
                run.control.stop()
                loop.call_later(grace, main.cancel)

        loop.add_signal_handler(signal.SIGTERM, on_term)
        # the parent died (even by kill -9): stop at once and flush, so a rerun with
        # --resume never races a worker still appending
        loop.add_signal_handler(signal.SIGUSR1, main.cancel)
        _die_with_parent(signal.SIGUSR1)
        if os.getppid() != parent:
            main.cancel()
        reporter = loop.create_task(report(main))
        try:
            await run_file_async(run)
        finally:
            reporter.cancel()

    failure: str | None = None
    try:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(go())
    except Exception as exc:  # e.g. StoreError: the parent reports it and fails the run
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(OSError):
            conn.send(_snapshot(run.stats, final=True, failure=failure))
        conn.close()
        loop.close()


def _die_with_parent(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signum, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        pass


def _start(run: FileRun, workers: int, grace: float) -> tuple[list[Any], list[Connection]]:
    """Start the worker processes, each with the read end of a pipe for its reports."""
    ctx = mp.get_context("spawn")
    check_network(run.config)  # a bad proxy or TLS file: exit 2, nothing started
    config = shard_config(run.config, workers)  # limits too small to share: the same
    # truncate (or keep, when appending) once, before any worker appends
    for path in (run.save, run.errors):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not run.append:
            path.write_bytes(b"")
    procs, conns = [], []
    for k in range(workers):
        parent_end, child_end = ctx.Pipe(duplex=False)
        part = replace(run, config=config, progress=False, stats=RunStats(), append=True,
                       share=1 / workers)
        proc = ctx.Process(target=_worker, args=(part, k, workers, child_end, grace),
                           name=f"llmframe-worker-{k}", daemon=True)
        proc.start()
        child_end.close()
        procs.append(proc)
        conns.append(parent_end)
    return procs, conns


def run_sharded(run: FileRun, workers: int, *, grace: float = 5.0) -> RunStats:
    """Run ``run`` over ``workers`` processes; returns the combined stats.

    Raises KeyboardInterrupt after the workers have stopped and flushed, if interrupted.
    """
    procs, conns = _start(run, workers, grace)
    stats = run.stats
    stats.started = time.monotonic()
    snaps: dict[int, dict[str, Any]] = {}
    bar = Progress(stats, progress_total(run), enabled=run.progress, desc=run.requests.name)
    interrupted = False
    open_conns = dict(enumerate(conns))
    try:
        while open_conns:
            try:
                ready = wait(list(open_conns.values()), timeout=_REPORT_EVERY)
                for k, conn in list(open_conns.items()):
                    if conn not in ready:
                        continue
                    try:
                        snaps[k] = conn.recv()
                    except EOFError:
                        del open_conns[k]
                        continue
                    if snaps[k]["final"]:
                        del open_conns[k]
                before = stats.done
                _combine(stats, snaps, run.config)
                bar.update(stats.done - before)
                if not any(p.is_alive() for p in procs) and not any(
                        c.poll() for c in open_conns.values()):
                    break
            except KeyboardInterrupt:
                interrupted = True
                for p in procs:
                    if p.is_alive() and p.pid is not None:
                        os.kill(p.pid, signal.SIGTERM)
    finally:
        bar.close()
        for p in procs:
            p.join(grace + 10)
            if p.is_alive():
                p.kill()
        stats.finished = time.monotonic()
    _combine(stats, snaps, run.config)
    if interrupted:
        raise KeyboardInterrupt
    _check_workers(procs, snaps)
    return stats


def _check_workers(procs: list[Any], snaps: dict[int, dict[str, Any]]) -> None:
    """A worker that failed or died means rows may be missing: never a normal end."""
    for k, proc in enumerate(procs):
        snap = snaps.get(k, {})
        if snap.get("failure"):
            msg = f"worker {k} stopped: {snap['failure']}"
            raise StoreError(msg)
        if proc.exitcode != 0 or not snap.get("final"):
            msg = f"worker {k} died (exit code {proc.exitcode}) before finishing its rows"
            raise WorkerError(msg)


def _combine(stats: RunStats, snaps: dict[int, dict[str, Any]], config: RunConfig) -> None:
    values = list(snaps.values())
    stats.rows = sum(s["rows"] for s in values)
    stats.ok = sum(s["ok"] for s in values)
    stats.errors = sum(s["errors"] for s in values)
    stats.retries = sum(s["retries"] for s in values)
    stats.unfinished = sum(s["unfinished"] for s in values)
    stats.unsent = sum(s["unsent"] for s in values)
    stats.stopped_by = next((s["stopped_by"] for s in values if s["stopped_by"]), None)
    stats.cached = sum(s["cached"] for s in values)
    stats.cache_path = next((s["cache_path"] for s in values if s["cache_path"]), None)
    stats.in_flight = sum(s["in_flight"] for s in values if not s["final"])
    stats.budget = config.budget
    eps = [EndpointStats(ep.name, ep.weight, priced=ep.priced) for ep in config.endpoints]
    for snap in values:
        for ep, (sent, ok, failed, cooldowns, throttled, latencies, prompt, completion, cost,
                 note, via) in zip(eps, snap["endpoints"], strict=False):
            ep.sent += sent
            ep.ok += ok
            ep.failed_attempts += failed
            ep.cooldowns += cooldowns
            ep.throttled += throttled
            ep.prompt_tokens += prompt
            ep.completion_tokens += completion
            if cost is not None:
                ep.cost_usd = (ep.cost_usd or 0.0) + cost
            ep.note = ep.note or note
            ep.via = ep.via or via
            if latencies:
                ep.latencies.extend(latencies)
    stats.endpoints = eps
