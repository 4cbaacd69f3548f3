"""The async run: one result per row, handed out in batches as they complete.

The pieces, each in its own module: the endpoint pool (``_pool``: balancing, health,
per-endpoint limits), the dispatcher and its retry queue (``_dispatch``), one attempt
(``_attempt``), the retry decision (``_retry``), the result types (``_results``). This
module wires them: it settles each attempt's outcome (answer, final error, or retry),
stores every result the moment it exists (``sink``/``on_result``), sweeps timeouts, and
feeds the consumer.

A result that cannot be stored (a full disk under the checkpoint, say) stops the run and
raises :class:`~llmframe.StoreError`: a run never ends "normally" with a row missing.
Everything loop-bound (transports, limiters, futures) is created inside the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from ._cached import CachedFeed, CacheLink
from ._config import RunConfig
from ._dispatch import Dispatcher, PlainRows
from ._exceptions import StoreError
from ._gc import Collector, gc_paused
from ._outcomes import Attempts
from ._pool import EndpointPool
from ._results import Result, Row, RunStats
from ._retry import RetryPolicy
from ._secrets import Secrets
from ._sinks import Sink

__all__ = ["RunControl", "stream_results"]

_FLUSH_EVERY = 1.0


class _Run:
    def __init__(self, rows: Iterable[Row], config: RunConfig, stats: RunStats,
                 sink: Sink | None, on_result: Callable[[Result], None] | None,
                 label: Callable[[int], str] | None = None, share: float = 1.0) -> None:
        self.rows = rows
        self.share = share
        self.label = label
        self.config = config
        self.stats = stats
        self.sink = sink
        self.on_result = on_result
        self.policy = RetryPolicy(
            max_attempts=config.max_attempts, initial=config.backoff_initial,
            maximum=config.backoff_max, max_retry_after=config.max_retry_after)
        self.done: list[Result] = []
        self.failure: BaseException | None = None
        self.control: RunControl | None = None
        self._consumer_wake: asyncio.Future[None] | None = None
        self.cache: CacheLink | None = None
        self.settle: Callable[[Result], None] | None = None

    # -- results --------------------------------------------------------------------------
    def emit(self, result: Result) -> None:
        if result.error is None:
            self.stats.ok += 1
        else:
            self.stats.errors += 1
        try:
            if self.sink is not None:
                self.sink.write(result)
            if self.on_result is not None:
                self.on_result(result)
        except Exception as exc:
            self._fail(f"the result of row {result.index}", exc)
        self.done.append(result)
        self._wake_consumer()
        if self.settle is not None:
            self.settle(result)

    def _fail(self, what: str, cause: BaseException) -> None:
        """Storing ``what`` failed: stop the run; it raises StoreError at its end."""
        if self.failure is None:
            error = StoreError(f"cannot store {what}: {type(cause).__name__}: {cause}")
            error.__cause__ = cause
            self.failure = error
            self.dispatcher.stop()
            self._wake_consumer()

    def _wake_consumer(self) -> None:
        fut = self._consumer_wake
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- housekeeping ---------------------------------------------------------------------
    async def sweep(self) -> None:
        """Every few ms: cancel attempts past their deadline (one sweep instead of a timer
        per request, which is measurable at 10k requests/s); every second: flush the sink;
        every 30 s: collect garbage (the collector is paused during the run, see _gc)."""
        loop = asyncio.get_running_loop()
        period = min(0.1, max(0.005, min(t.timeout for t in self.pool.targets) / 20))
        collector = Collector(loop.time())
        next_flush = loop.time() + _FLUSH_EVERY
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            collector.tick(now)
            if now >= next_flush:
                next_flush = now + _FLUSH_EVERY
                if self.cache is not None:
                    self.cache.flush_soon()
                try:
                    if self.sink is not None:
                        self.sink.flush()
                except Exception as exc:
                    self._fail("results", exc)
            self.attempts.expire(now)

    # -- the run --------------------------------------------------------------------------
    async def batches(self) -> AsyncIterator[list[Result]]:
        loop = asyncio.get_running_loop()
        self.pool = EndpointPool(self.config, self.share)
        self.stats.endpoints = [t.stats for t in self.pool.targets]
        self.stats.budget = self.config.budget
        self.attempts = Attempts(self.config, self.pool, self.policy, Secrets(self.pool.keys),
                                 self.stats, self.emit)
        self.cache = await CacheLink.open(self.config.cache, self.stats, self.pool)
        self.attempts.cache = self.cache
        feed = (PlainRows(self.rows, self.config, self.stats, self.emit, self.label)
                if self.cache is None else
                CachedFeed(self.rows, self.config, self.cache.client, self.emit, self.stats,
                           self.label))
        self.dispatcher = Dispatcher(feed, self.config, self.pool, self.stats,
                                     self.attempts.launch, self.emit)
        self.settle = feed.settle if isinstance(feed, CachedFeed) else None
        self.attempts.dispatcher = self.dispatcher
        if self.control is not None:
            self.control._attach(self.dispatcher)
        self.stats.started = loop.time()
        with gc_paused():
            helpers = [loop.create_task(self.dispatcher.run()), loop.create_task(self.sweep())]
            if isinstance(feed, CachedFeed):
                helpers.append(loop.create_task(feed.run()))
            try:
                async for batch in self._consume(helpers[0]):
                    yield batch
            finally:
                self.stats.finished = loop.time()
                await self._close(*helpers)
        if self.failure is not None:
            raise self.failure

    async def _consume(self, dispatching: asyncio.Task[None]) -> AsyncIterator[list[Result]]:
        loop = asyncio.get_running_loop()
        while True:
            if self.done:
                batch, self.done = self.done, []
                yield batch
                continue
            if dispatching.done():
                dispatching.result()  # re-raise an unexpected dispatcher failure
                return
            self._consumer_wake = loop.create_future()
            try:
                await asyncio.wait((self._consumer_wake, dispatching),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._consumer_wake = None

    async def _close(self, *helpers: asyncio.Task[Any]) -> None:
        # cancelled (a grace period ran out, or the consumer left): rows in flight, waiting
        # or held get no result; count them, so "not finished" is every row without one
        cut = sum(not t.done() for t in self.attempts.tasks)
        self.stats.unfinished += cut + self.dispatcher.abandon()
        tasks = (*helpers, *self.attempts.tasks)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.pool.close()
        if self.cache is not None:
            await self.cache.close()
        if self.sink is not None and self.failure is None:
            try:
                self.sink.flush()
            except Exception as exc:
                self._fail("results", exc)


class RunControl:
    """A handle to stop a run gracefully: ``stop()`` (thread-safe via ``stop_threadsafe``)
    stops reading rows and sending retries; requests in flight may still finish."""

    def __init__(self) -> None:
        self._dispatcher: Dispatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested = False

    def _attach(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._loop = asyncio.get_running_loop()
        if self.stop_requested:
            dispatcher.stop()

    def stop(self) -> None:
        self.stop_requested = True
        if self._dispatcher is not None:
            self._dispatcher.stop()

    def stop_threadsafe(self) -> None:
        self.stop_requested = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.stop)


async def stream_results(
    rows: Iterable[Row], config: RunConfig, stats: RunStats | None = None,
    control: RunControl | None = None, on_result: Callable[[Result], None] | None = None,
    *, sink: Sink | None = None, label: Callable[[int], str] | None = None,
    share: float = 1.0,
) -> AsyncIterator[list[Result]]:
    """Send one request per row and yield batches of results as they complete.

    Every row yields exactly one :class:`Result`, unless the run is stopped early
    (``control.stop()``: rows not yet sent get none; ``stats.unfinished`` counts the rows
    read but left without a result). ``stats`` (optional) is kept up to date for progress
    display. Closing the generator (or cancelling its task) stops the run at once; to
    stop early, ``await stream.aclose()`` (or use ``contextlib.aclosing``) — a bare
    ``break`` leaves the closing, and with a cache the storing of the last answers, to the
    garbage collector.
    ``on_result`` (optional) is called with each result the moment it exists, before it
    is batched; ``sink`` (optional, ``write``/``flush``) stores each result then too and
    is flushed every second. If either raises, the run stops and raises
    :class:`~llmframe.StoreError`. ``label(index)`` (optional) names a row in the error of
    a row that cannot become a request (``"requests.jsonl line 8"``). ``share``: the part
    of limits learned from rate-limit headers this process may use (``--workers N``: 1/N).

    >>> from llmframe.testing import MockServer
    >>> async def main(url):
    ...     rows = [(0, {"input": "hi"}, None)]
    ...     async for batch in stream_results(rows, RunConfig([url])):
    ...         print(batch[0].response)
    >>> with MockServer() as srv:
    ...     asyncio.run(main(srv.url))
    echo: hi
    """
    run = _Run(rows, config, stats if stats is not None else RunStats(), sink, on_result,
               label, share)
    run.control = control
    batches = run.batches()
    try:
        async for batch in batches:
            yield batch
    finally:  # closed early: the run's own cleanup (flushes included) runs now, not later
        await batches.aclose()
