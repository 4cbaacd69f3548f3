"""The dispatcher: takes rows (and retries that are due), waits for a free slot and for the
global pacer, picks an endpoint from the pool and starts one task per attempt.

Retries wait in a :class:`RetryQueue` — a ``loop.call_later`` per waiting row, never a
sleeping task holding a slot — and go before new rows when due. ``stop()`` stops taking
rows and retries; the rows it leaves without a result are counted in ``stats.unfinished``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._attempt import Job
from ._config import RunConfig
from ._meter import Gate
from ._pacer import Pacer
from ._pool import EndpointPool, Target
from ._protocols import RowError, prepare
from ._results import Result, Row, RunStats

__all__ = ["Bell", "Dispatcher", "PlainRows", "RetryQueue", "job_of"]


class RetryQueue:
    """Rows waiting to be retried: ``schedule(job, wait)``; due ones come out of ``pop``.

    >>> import asyncio
    >>> async def demo():
    ...     q = RetryQueue(lambda: None)
    ...     q.schedule("a", 0); q.schedule("b", 60)
    ...     await asyncio.sleep(0.01)
    ...     return q.pop(), q.pop(), len(q), q.drop()
    >>> asyncio.run(demo())
    ('a', None, 1, 1)
    """

    __slots__ = ("_handles", "_ready", "_wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self._ready: deque[Job] = deque()
        self._handles: dict[int, asyncio.TimerHandle] = {}
        self._wake = wake

    def schedule(self, job: Job, wait: float) -> None:
        key = id(job)
        self._handles[key] = asyncio.get_running_loop().call_later(wait, self._due, key, job)

    def _due(self, key: int, job: Job) -> None:
        del self._handles[key]
        self._ready.append(job)
        self._wake()

    def pop(self) -> Job | None:
        return self._ready.popleft() if self._ready else None

    def __len__(self) -> int:
        """Rows waiting out their backoff (not yet due)."""
        return len(self._handles)

    def drop(self) -> int:
        """Forget every waiting row, due or not; returns how many."""
        for handle in self._handles.values():
            handle.cancel()
        count = len(self._handles) + len(self._ready)
        self._handles.clear()
        self._ready.clear()
        return count


class Bell:
    """One waiter's wake-up: ``await bell.wait(timeout)`` returns when ``ring()`` is called
    (or after ``timeout``); cheaper than an ``asyncio.Event`` cleared on every wait."""

    __slots__ = ("_fut",)

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None

    def ring(self, *_: object) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._fut = fut = loop.create_future()
        handle = loop.call_later(timeout, self.ring) if timeout else None
        try:
            await fut
        finally:
            self._fut = None
            if handle is not None:
                handle.cancel()


def job_of(row: Row, config: RunConfig, label: Callable[[int], str] | None
           ) -> Job | Result:
    """The job for an input row, or the error result of a row that cannot be sent."""
    index, payload, reason = row
    if reason is None:
        try:
            prepared = prepare(payload, config.api, system=config.system, params=config.params)
        except RowError as exc:
            reason = f"{label(index)}: {exc}" if label else str(exc)
        else:
            return Job(index, payload, prepared)
    return Result(index, payload, error=reason, error_type="invalid_input")


class PlainRows:
    """The rows as jobs, read one at a time (without a cache; with one, the rows come
    through a ``_cached.CachedFeed``, which has the same members)."""

    __slots__ = ("config", "done", "emit", "label", "rows", "stats", "wake")

    def __init__(self, rows: Iterable[Row], config: RunConfig, stats: RunStats,
                 emit: Callable[[Result], None], label: Callable[[int], str] | None) -> None:
        self.rows: Iterator[Row] | None = iter(rows)
        if hasattr(rows, "open"):
            rows.feed = self  # type: ignore[attr-defined]
        self.config = config
        self.stats = stats
        self.emit = emit
        self.label = label  # names a row in its error: "requests.jsonl line 8"
        self.done = False
        self.wake: Callable[[], None] = lambda: None

    def pop(self) -> Job | None:
        """The next row's job; a row that cannot be sent gets its error now; None at the
        end (``done``)."""
        rows = self.rows
        while rows is not None:
            row = next(rows, None)
            if row is None:
                if getattr(rows, "open", False):  # a live source (_live.LiveRows): more
                    return None                    # rows later, and a wake() with them
                break
            self.stats.rows += 1
            job = job_of(row, self.config, self.label)
            if isinstance(job, Job):
                return job
            self.emit(job)
        self.rows, self.done = None, True
        return None

    def drop(self) -> int:
        return 0  # nothing read is held

    def unread(self) -> int:
        """Count (and skip) the rows never read."""
        rows, self.rows = self.rows, None
        return 0 if rows is None else sum(1 for _ in rows)

    async def flush(self) -> None:
        """Nothing is held (a ``CachedFeed`` writes the answers its cache holds)."""


class Dispatcher:
    """Feeds attempts to ``launch(job, target)`` within the run's limits; new rows come
    from ``feed`` (a :class:`PlainRows` or a ``CachedFeed``)."""

    def __init__(self, feed: Any, config: RunConfig, pool: EndpointPool,
                 stats: RunStats, launch: Callable[[Job, Target], None],
                 emit: Callable[[Result], None]) -> None:
        self.feed = feed
        self.config = config
        self.pool = pool
        self.stats = stats
        self.launch = launch
        self.emit = emit
        self.pacer = Pacer(config.rps) if config.rps else None
        self.gate = Gate(config)
        self.bell = Bell()
        self.wake, self._sleep = self.bell.ring, self.bell.wait
        self.retries = RetryQueue(self.wake)
        feed.wake = self.wake
        self.in_flight = 0
        self.concurrency = config.concurrency  # in flight at most (a Ray actor's: moves)
        self.holding: Job | None = None  # taken from the rows or retries, not yet sent
        self.stopping = False

    def stop(self, by: str | None = None) -> None:
        """Stop taking rows and retries; attempts in flight may still finish. ``by``:
        what stopped the run (``"budget"``), kept in ``stats.stopped_by``."""
        if not self.stopping:
            self.stopping = True
            self.stats.stopped_by = by
            self.stats.unfinished += self.retries.drop()
            self.wake()

    def abandon(self) -> int:
        """The run is being cancelled: forget every row not finished (waiting, held);
        returns how many (in-flight attempts are the caller's to count)."""
        count = self.retries.drop() + (self.holding is not None) + self.feed.drop()
        self.holding = None
        return count

    def retry(self, job: Job, wait: float) -> None:
        if self.stopping:
            self.stats.unfinished += 1  # no result: a resumed run sends it again
        else:
            self.retries.schedule(job, wait)

    def _next(self) -> Job | bool:
        """The next job; False when there is nothing to do now; True when the run is
        over."""
        job = self.retries.pop() or self.feed.pop()
        if job is not None:
            return job
        if not self.feed.done:
            return False
        error = getattr(self.feed, "error", None)
        if error is not None:  # the rows could not be read (a bug, a broken input)
            raise error
        return not (self.in_flight or len(self.retries))

    async def run(self) -> None:
        while not self.stopping:
            job = self._next()
            if job is True:
                return
            if job is False:
                await self._sleep()
                continue
            self.holding = job
            while self.in_flight >= self.concurrency and not self.stopping:
                await self._sleep()
            target = None if self.stopping else await self._target(job)
            if target is None:
                if self.stopping:  # read (or due) but never sent: a resumed run sends it
                    self.stats.unfinished += 1
                self.holding = None
                continue
            if target.limiter is not None:
                await target.limiter.acquire()  # never waits: pick checked has_capacity
            self._launch(job, target)
        self.stats.unfinished += self.feed.drop()
        if self.stats.stopped_by is not None:
            self.stats.unsent += self.feed.unread()  # never read: counted, not sent
        while self.in_flight:  # stopping: let what is in flight finish (the caller bounds it)
            await self._sleep()

    def _launch(self, job: Job, target: Target) -> None:
        loop = asyncio.get_running_loop()
        if target.tokens is not None:
            target.tokens.take(job.tokens, loop.time())
        self.in_flight += 1
        self.stats.in_flight = self.in_flight
        target.in_flight += 1
        job.deadline = loop.time() + target.timeout
        self.launch(job, target)
        self.holding = None

    async def _target(self, job: Job) -> Target | None:
        """The endpoint ``job`` goes to, within the run's limits (rate, tokens, budget);
        None when the job ended (every endpoint is out) or the run is stopping."""
        loop = asyncio.get_running_loop()
        pool = self.pool
        if pool.out_reason(loop.time()) is not None:  # end it now, not at the pace
            return await self._wait_for_target(job, loop)
        if self.pacer is not None:
            await self.pacer.acquire()
        gate = self.gate
        if gate.metered(pool.targets):
            gate.measure(job)
            tokens = gate.tokens
            if tokens is not None and not tokens.try_take(job.tokens, loop.time()):
                await tokens.acquire(job.tokens)
        while not self.stopping:
            target = pool.pick(job.last_endpoint, loop.time(), job.back)
            if target is None:
                target = await self._wait_for_target(job, loop)
            if target is None or gate.budget is None or gate.afford(job, target.endpoint):
                return target
            budget = gate.budget
            if not budget.in_flight and not budget.asking:  # nothing will settle or come
                self.stop(by="budget")
                return None
            await self._sleep()  # answers in flight settle for less than reserved
        return None

    async def _wait_for_target(self, job: Job, loop: asyncio.AbstractEventLoop
                               ) -> Target | None:
        """An endpoint for ``job`` once one can take it; None if the job ended (every
        endpoint is out: the row's error is emitted) or the run is stopping."""
        pool = self.pool
        while True:
            now = loop.time()
            reason = pool.out_reason(now)
            if reason is not None:
                self.emit(Result(job.index, job.payload, error=reason,
                                 error_type="unavailable", attempts=job.attempts))
                return None
            await self._sleep(pool.idle_wait(now))
            if self.stopping:
                return None
            target = pool.pick(job.last_endpoint, loop.time(), job.back)
            if target is not None:
                return target

    def done_one(self, target: Target) -> None:
        self.in_flight -= 1
        self.stats.in_flight = self.in_flight
        target.in_flight -= 1
        self.wake()
