"""A long-lived engine: one run that takes rows as they come, from any thread.

A Ray actor (``llmframe.ray``) keeps one :class:`LiveEngine` for its whole life, so the
connection pool, the pacing and each endpoint's health carry over from one batch to the
next, and several batches can be in flight at once (Ray calls the actor from several
threads): an actor never idles on one batch's slowest rows. The engine runs on its own
event loop in a background thread; :meth:`LiveEngine.run` hands it a batch of rows and
blocks until each has its result.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any

from . import _signals as signals
from ._config import RunConfig
from ._engine import RunControl, stream_results
from ._meter import Budget
from ._results import NOT_SENT, Result, Row, RunStats
from ._runner import new_event_loop
from ._shares import part

__all__ = ["LiveEngine", "LiveRows", "Shared"]

log = logging.getLogger("llmframe")
#: ``(news, busy, use) -> (board, share)``: this engine's endpoint signals for the job's
#: board, and whether it has rows and the part of the limits it has in flight for the
#: job's shares (``_shares``); the board back, and this engine's share (None: fixed)
Exchange = Callable[[dict[int, signals.Signal], bool, float],
                    Awaitable[tuple[dict[int, signals.Signal], float | None]]]
_SPAN = 1 << 32  # row indexes of one batch: batch number * _SPAN + the row's own index


class LiveRows:
    """Rows for :func:`~llmframe.stream_results` that arrive while it runs: ``next()``
    returns None while the source is ``open`` and empty (the feed then waits for a wake),
    and the run ends once it is closed and drained. Use it from the run's loop only."""

    def __init__(self, stats: RunStats | None = None) -> None:
        self.rows: collections.deque[Row] = collections.deque()
        self._open = True
        self.stats = stats  # a run stopped (by the budget) takes no more rows
        self.feed: Any = None  # set by the feed that reads it: its wake() is rung on put

    @property
    def open(self) -> bool:
        return self._open and (self.stats is None or self.stats.stopped_by is None)

    def __iter__(self) -> Iterator[Row]:
        return self

    def __next__(self) -> Row | None:  # type: ignore[override]
        if self.rows:
            return self.rows.popleft()
        if not self.open:
            raise StopIteration
        return None

    def put(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        self._wake()

    def close(self) -> None:
        self._open = False
        self._wake()

    def _wake(self) -> None:
        if self.feed is not None:
            self.feed.wake()


class _Batch:
    __slots__ = ("future", "left", "results", "rows")

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.results: list[Result | None] = [None] * (max(r[0] for r in rows) + 1)
        self.left = len(rows)
        self.future: Future[list[Result | None]] = Future()

    def unsent(self, why: str) -> None:
        """Give every row without a result the error ``why``, and hand the batch back."""
        for index, payload, _ in self.rows:
            if self.results[index] is None:
                self.results[index] = Result(index, payload, error=why,
                                             error_type="not_sent")
        if not self.future.done():
            self.future.set_result(self.results)


@dataclasses.dataclass
class Shared:
    """What an engine shares with the other engines of a job (None: its own, as a run)."""

    pacer: Any = None  # ``async acquire()``: the job's rps (``_lease.LeasedPacer``)
    tokens: Any = None  # the job's tpm bucket (``_lease.LeasedTokens``)
    budget: Budget | None = None  # the job's budget (``_purse.SharedBudget``)
    #: trades endpoint signals (``_signals``) and the held limits' shares (``_shares``)
    #: every ``PERIOD``: see ``Exchange``
    exchange: Exchange | None = None
    #: this engine's part of the held limits (concurrency, endpoints' max_concurrency and
    #: rates, learned or set) until the exchange says (or when it cannot be reached)
    share: float = 1.0


class LiveEngine:
    """One engine for many batches; ``shared``: the limits and signals it shares with
    the other engines of a job (a Ray actor's, say).

    >>> from llmframe.testing import MockServer
    >>> with MockServer() as srv:
    ...     engine = LiveEngine(RunConfig([srv.url]))
    ...     out = engine.run([(0, {"input": "a"}, None), (1, {"input": "b"}, None)])
    ...     engine.close()
    >>> [r.response for r in out]
    ['echo: a', 'echo: b']
    """

    def __init__(self, config: RunConfig, shared: Shared | None = None,
                 on_loop: Callable[[asyncio.AbstractEventLoop], None] | None = None) -> None:
        self.config = config
        self.shared = shared or Shared()
        self._control = _Control(self.shared, lambda: bool(self._batches))
        self.stats = RunStats()
        self.rows = LiveRows(self.stats)
        self._ended: str | None = None  # why rows given now get no request
        self._batches: dict[int, _Batch] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._loop = new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(on_loop,),
                                        name="llmframe-live", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _serve(self, on_loop: Callable[[asyncio.AbstractEventLoop], None] | None) -> None:
        asyncio.set_event_loop(self._loop)
        if on_loop is not None:
            on_loop(self._loop)
        self._ready.set()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # handed to every waiting batch
            self._failure = exc
            with self._lock:
                for batch in self._batches.values():
                    if not batch.future.done():
                        batch.future.set_exception(exc)
        finally:
            self._loop.close()

    async def _main(self) -> None:
        control = self._control
        await control.first()  # what the other engines know, before the first request
        try:
            async for _ in stream_results(self.rows, self.config, self.stats,
                                          control=control, on_result=self._settle,
                                          share=self.shared.share):
                pass
        finally:
            control.close()
        # the run ended (the budget stopped it, or close()): rows without a result, now or
        # later, are not sent
        why = NOT_SENT if self.stats.stopped_by == "budget" else "not sent: engine closed"
        with self._lock:
            self._ended = why
            batches, self._batches = list(self._batches.values()), {}
        for batch in batches:
            batch.unsent(why)

    def _settle(self, result: Result) -> None:
        number, index = divmod(result.index, _SPAN)
        batch = self._batches.get(number)
        if batch is None:
            return
        # a copy: the run still knows the result by its own index (the cache's feed pairs
        # it with the rows that wait for the same answer after this)
        result = copy.copy(result)
        result.index = index
        batch.results[index] = result
        batch.left -= 1
        if batch.left == 0:
            with self._lock:
                del self._batches[number]
            batch.future.set_result(batch.results)

    def run(self, rows: list[Row]) -> list[Result | None]:
        """Send ``rows`` (``(index, payload, reason)``, indexes ``0..n-1``) and return
        their results in index order (None for an index not given). Thread-safe."""
        if self._failure is not None:
            raise self._failure
        if not rows:
            return []
        batch = _Batch(rows)
        with self._lock:
            if self._ended is not None:
                batch.unsent(self._ended)
                return batch.future.result()
            number = next(self._numbers)
            idle = not self._batches
            self._batches[number] = batch
        tagged = [(number * _SPAN + i, payload, reason) for i, payload, reason in rows]
        with contextlib.suppress(RuntimeError):  # the loop just closed: settled as unsent
            self._loop.call_soon_threadsafe(self.rows.put, tagged)
            if idle:  # ask for a share back now, not at the next exchange
                self._loop.call_soon_threadsafe(self._control.ask_now)
        results = batch.future.result()
        if not self._batches:
            self._control.tell_idle(self._loop)
        return results

    def flush(self) -> None:
        """Write the answers the cache holds (a Ray actor may be ended without a word
        once its last batch is back, so each batch flushes). Thread-safe."""
        dispatcher = self._control._dispatcher
        if dispatcher is None or self._ended is not None:
            return
        try:
            asyncio.run_coroutine_threadsafe(dispatcher.feed.flush(), self._loop).result(60)
        except Exception as exc:  # only a free rerun is lost
            log.warning("llmframe: response cache: could not store answers (%s: %s)",
                        type(exc).__name__, exc)

    def close(self) -> None:
        """Finish what is in flight and stop the engine's thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.rows.close)
            self._thread.join()


class _Control(RunControl):
    """Puts the job's limits in place of the run's own, and trades endpoint signals."""

    def __init__(self, shared: Shared, busy: Callable[[], bool]) -> None:
        super().__init__()
        self.shared = shared
        self.exchange = shared.exchange
        self.busy = busy
        self.share = shared.share
        self.applied: float | None = None  # the share the dispatcher runs with
        self.swapping = asyncio.Lock()
        self.booked = False  # the exchange gives shares (else its share is fixed)
        self.asking: set[asyncio.Task[bool]] = set()
        self.task: asyncio.Task[None] | None = None
        self.board: dict[int, signals.Signal] = {}
        self.offset = 0.0  # wall clock minus the loop's
        self.warned = False

    async def first(self) -> None:
        if self.exchange is not None:
            self.offset = time.time() - asyncio.get_running_loop().time()
            await self._swap({})

    def _attach(self, dispatcher: Any) -> None:
        super()._attach(dispatcher)
        shared = self.shared
        if shared.pacer is not None:
            dispatcher.pacer = shared.pacer
        if shared.tokens is not None:
            dispatcher.gate.tokens = shared.tokens
        if shared.budget is not None:
            dispatcher.gate.budget = shared.budget
            shared.budget.wake = dispatcher.wake
        if self.exchange is not None:
            loop = asyncio.get_running_loop()
            signals.apply(dispatcher.pool, self.board, loop.time(), self.offset)
            self.task = loop.create_task(self._trade(dispatcher.pool))
        self._apply_share()

    async def _trade(self, pool: Any) -> None:
        """Every ``PERIOD``: tell the board this engine's signals, take the others'."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(signals.PERIOD)
            if await self._swap(signals.read(pool, loop.time(), self.offset)):
                signals.apply(pool, self.board, loop.time(), self.offset)

    async def _swap(self, news: dict[int, signals.Signal]) -> bool:
        assert self.exchange is not None
        async with self.swapping:  # one at a time: the shares come back in order
            busy = self.busy()
            if not busy and self.share and self.booked:  # without rows, its share is put
                self.share = 0.0  # down first (the book counts only what it has in flight)
                self._apply_share()
            try:
                self.board, share = await self.exchange(news, busy, self._use())
            except Exception as exc:  # the board is gone: carry on alone
                if not self.warned:
                    self.warned = True
                    log.warning("llmframe: cannot share endpoint signals (%s: %s)",
                                type(exc).__name__, exc)
                if not self.share:
                    self.share = self.shared.share
                    self._apply_share()
                return False
            if share is not None:
                self.share, self.booked = share, True
                self._apply_share()
            return True

    def ask_now(self) -> None:
        """On the loop: exchange now (rows came to an engine that had put its share
        down)."""
        if self.exchange is not None and self.booked and not self.share:
            task = asyncio.get_running_loop().create_task(self._swap({}))
            self.asking.add(task)
            task.add_done_callback(self.asking.discard)

    def tell_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the job now (from another thread) that this engine has no rows: Ray may
        end an actor as soon as its last batch is back, before its next exchange, and the
        share it was last given would count until the book's TTL."""
        if self.exchange is None:
            return
        with contextlib.suppress(Exception):  # closed, or slow: the next exchange says it
            asyncio.run_coroutine_threadsafe(self._swap({}), loop).result(5)

    def _use(self) -> float:
        """The part of the job's in-flight limits this engine holds now (0..1)."""
        d = self._dispatcher
        if d is None:
            return 0.0
        use = d.in_flight / d.config.concurrency
        for t in d.pool.targets:
            if t.endpoint.max_concurrency:
                use = max(use, t.in_flight / t.endpoint.max_concurrency)
        return use

    def _apply_share(self) -> None:
        d = self._dispatcher
        if d is None or self.share == self.applied:
            return
        self.applied = self.share
        d.concurrency = part(d.config.concurrency, self.share)
        for t in d.pool.targets:
            t.set_share(self.share)
        d.wake()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
