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
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from ._config import RunConfig
from ._engine import RunControl, stream_results
from ._results import Result, Row, RunStats
from ._runner import new_event_loop

__all__ = ["LiveEngine", "LiveRows"]

_SPAN = 1 << 32  # row indexes of one batch: batch number * _SPAN + the row's own index


class LiveRows:
    """Rows for :func:`~llmframe.stream_results` that arrive while it runs: ``next()``
    returns None while the source is ``open`` and empty (the feed then waits for a wake),
    and the run ends once it is closed and drained. Use it from the run's loop only."""

    def __init__(self) -> None:
        self.rows: collections.deque[Row] = collections.deque()
        self.open = True
        self.feed: Any = None  # set by the feed that reads it: its wake() is rung on put

    def __iter__(self) -> Iterator[Row]:
        return self

    def __next__(self) -> Row | None:  # type: ignore[override]
        return self.rows.popleft() if self.rows else None

    def put(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        self._wake()

    def close(self) -> None:
        self.open = False
        self._wake()

    def _wake(self) -> None:
        if self.feed is not None:
            self.feed.wake()


class _Batch:
    __slots__ = ("future", "left", "results")

    def __init__(self, size: int, left: int) -> None:
        self.results: list[Result | None] = [None] * size  # by the rows' own indexes
        self.left = left
        self.future: Future[list[Result | None]] = Future()


class LiveEngine:
    """One engine for many batches. ``pacer``: an object with ``async acquire()`` that
    replaces the run's own rps pacing (a cluster-wide lease, say).

    >>> from llmframe.testing import MockServer
    >>> with MockServer() as srv:
    ...     engine = LiveEngine(RunConfig([srv.url]))
    ...     out = engine.run([(0, {"input": "a"}, None), (1, {"input": "b"}, None)])
    ...     engine.close()
    >>> [r.response for r in out]
    ['echo: a', 'echo: b']
    """

    def __init__(self, config: RunConfig, pacer: Any = None,
                 on_loop: Callable[[asyncio.AbstractEventLoop], None] | None = None) -> None:
        self.config = config
        self.stats = RunStats()
        self.rows = LiveRows()
        self._batches: dict[int, _Batch] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._pacer = pacer
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
        control = _Control(self._pacer)
        async for _ in stream_results(self.rows, self.config, self.stats, control=control,
                                      on_result=self._settle):
            pass

    def _settle(self, result: Result) -> None:
        number, index = divmod(result.index, _SPAN)
        batch = self._batches.get(number)
        if batch is None:
            return
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
        batch = _Batch(max(r[0] for r in rows) + 1, len(rows))
        with self._lock:
            number = next(self._numbers)
            self._batches[number] = batch
        tagged = [(number * _SPAN + i, payload, reason) for i, payload, reason in rows]
        self._loop.call_soon_threadsafe(self.rows.put, tagged)
        return batch.future.result()

    def close(self) -> None:
        """Finish what is in flight and stop the engine's thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.rows.close)
            self._thread.join()


class _Control(RunControl):
    """Puts a cluster-wide pacer in place of the run's own."""

    def __init__(self, pacer: Any) -> None:
        super().__init__()
        self.pacer = pacer

    def _attach(self, dispatcher: Any) -> None:
        super()._attach(dispatcher)
        if self.pacer is not None:
            dispatcher.pacer = self.pacer
