"""Rows through the response cache, on their way to the dispatcher.

A :class:`CachedFeed` reads the rows a chunk at a time, makes each row's request, and looks
the whole chunk's keys up in one query, in the cache's own thread (never one query per row,
never on the event loop). Hits become results at once — free: no request, no rate, tokens
or budget spent — marked ``cached``. Misses become jobs the dispatcher takes with
:meth:`CachedFeed.pop`; the feed keeps at most two chunks of them ready.

The key (:class:`RequestKeys`) is a hash of the canonical request: the API kind, the model,
the body (messages or prompt with the system prompt, every parameter: temperature,
max_tokens, seed, ...) with its keys sorted, and the schema. Not the endpoint URL or key:
balanced endpoints share answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from ._attempt import Job
from ._cache import CacheClient, cache_key
from ._config import RunConfig
from ._dispatch import Bell, job_of
from ._protocols import Prepared
from ._results import Result, Row, RunStats

__all__ = ["CHUNK", "CacheLink", "CachedFeed", "RequestKeys", "canonical"]

CHUNK = 512
_SORTED = orjson.OPT_SORT_KEYS


def canonical(value: Any) -> Any:
    """``value`` with integral floats as integers (``temperature=1.0`` and ``1`` are one
    request), for the key only: what is sent is left as given.

    >>> canonical({"temperature": 1.0, "stop": ["x"], "top_p": 0.5, "seed": 3})
    {'temperature': 1, 'stop': ['x'], 'top_p': 0.5, 'seed': 3}
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


class RequestKeys:
    """``keys(prepared)``: the cache key of one request of a run. What is the same for
    every row is worked out once: the API kind, the model(s) the endpoints send (a row
    that names its own model has it in its body), the schema's key, and the run's
    parameters made :func:`canonical` (None when they already are, or for a raw row: it is
    its own body). The feed and the dry run use the same keys.

    >>> import dataclasses
    >>> from llmframe._protocols import prepare
    >>> config = RunConfig(["http://127.0.0.1:9/v1"], params={"seed": 1})
    >>> keys = RequestKeys(config)
    >>> hi = prepare({"input": "hi"}, "chat", system=None, params={"seed": 1})
    >>> keys(hi) == keys(hi), keys(hi) == RequestKeys(config)(hi)
    (True, True)
    >>> other = dataclasses.replace(config, params={"seed": 2})
    >>> keys(hi) == RequestKeys(other)(
    ...     prepare({"input": "hi"}, "chat", system=None, params={"seed": 2}))
    False
    """

    __slots__ = ("api", "models", "params", "schema")

    def __init__(self, config: RunConfig) -> None:
        self.api = config.api.encode()
        self.models = "\x00".join(sorted({ep.model or config.model or ""
                                           for ep in config.endpoints})).encode()
        self.schema = config.schema.key() if config.schema is not None else b""
        params = canonical(dict(config.params))
        same = orjson.dumps(params, option=_SORTED) == orjson.dumps(config.params,
                                                                   option=_SORTED)
        self.params = None if config.api == "raw" or same else params

    def __call__(self, prepared: Prepared) -> bytes:
        body = prepared.body if self.params is None else {**prepared.body, **self.params}
        return cache_key(self.api, b"" if prepared.has_model else self.models,
                         orjson.dumps(body, option=_SORTED), self.schema)


class CachedFeed:
    """The rows as jobs for the dispatcher, cache hits answered on the way."""

    def __init__(self, rows: Iterable[Row], config: RunConfig, cache: Any,
                 emit: Callable[[Result], None], stats: RunStats,
                 label: Callable[[int], str] | None = None) -> None:
        self.rows: Iterator[Row] | None = iter(rows)
        self._arrived = Bell()  # a live source (_live.LiveRows) rings it when rows come
        if hasattr(rows, "open"):
            rows.feed = SimpleNamespace(wake=self._arrived.ring)  # type: ignore[attr-defined]
        self.config = config
        self.cache = cache
        self.emit = emit
        self.stats = stats
        self.label = label
        self.keys = RequestKeys(config)
        self.ready: deque[Job] = deque()
        # duplicates within the run: one request per key; the others wait for its answer
        self.leaders: dict[int, bytes] = {}  # index of the row sent -> its key
        self.waiting: dict[bytes, list[Job]] = {}  # key -> rows waiting for that answer
        self.looking = 0  # rows of the chunk being looked up
        self.done = False
        self.stopped = False
        self.wake: Callable[[], None] = lambda: None  # the dispatcher's bell
        self._room = Bell()
        self._broken = False
        self.error: BaseException | None = None  # the dispatcher raises it

    async def flush(self) -> None:
        """Write the answers the cache holds now (a Ray actor, after each batch)."""
        await self.cache.flush()

    def pop(self) -> Job | None:
        """The next job to send (None: none ready now; ``done`` says whether more come)."""
        ready = self.ready
        if not ready:
            return None
        job = ready.popleft()
        if len(ready) <= CHUNK:
            self._room.ring()
        return job

    def drop(self) -> int:
        """Stop: forget the jobs ready and the chunk being looked up; returns how many."""
        self.stopped = True
        count = len(self.ready) + self.looking + sum(map(len, self.waiting.values()))
        self.waiting.clear()
        self.ready.clear()
        self.looking = 0
        self._room.ring()
        return count

    def unread(self) -> int:
        """Count (and skip) the rows never read."""
        rows, self.rows = self.rows, None
        return 0 if rows is None else sum(1 for _ in rows)

    async def run(self) -> None:
        try:
            while not self.stopped and self.rows is not None:
                chunk = list(islice(iter(self.rows.__next__, None), CHUNK))
                if not chunk:
                    if getattr(self.rows, "open", False):  # live: more rows later
                        await self._arrived.wait()
                        continue
                    break
                self.stats.rows += len(chunk)
                await self._chunk(chunk)
                while len(self.ready) > CHUNK and not self.stopped:
                    await self._room.wait()
        except Exception as exc:  # a bug or an unreadable input: the run fails, loudly
            self.error = exc
        finally:
            self.done = True
            self.wake()

    async def _chunk(self, chunk: list[Row]) -> None:
        config = self.config
        jobs: list[Job] = []
        for row in chunk:
            job = job_of(row, config, self.label)
            if isinstance(job, Result):  # a row that cannot be sent: its error now
                self.emit(job)
                continue
            job.key = self.keys(job.prepared)
            jobs.append(job)
        self.looking = len(jobs)
        found = await self._lookup([job.key for job in jobs])  # type: ignore[misc]
        if self.stopped:
            return
        self.looking = 0
        waiting = self.waiting
        for job in jobs:
            key = job.key
            value = found.get(key)  # type: ignore[arg-type]
            hit = None if value is None else self._hit(job, value)
            if hit is not None:
                self.emit(hit)
            elif key in waiting:  # the same request is on its way: wait for its answer
                waiting[key].append(job)  # type: ignore[index]
            else:
                waiting[key] = []  # type: ignore[index]
                self.leaders[job.index] = key  # type: ignore[assignment]
                self.ready.append(job)
        self.wake()

    def settle(self, result: Result) -> None:
        """A row's result: the rows that waited for the same request get its answer (or,
        if it failed, are sent themselves)."""
        key = self.leaders.pop(result.index, None)
        if key is None:
            return
        rows = self.waiting.pop(key, ())
        if not rows:
            return
        if result.error is None and result.response is not None:
            for job in rows:
                self.stats.cached += 1
                self.emit(Result(job.index, job.payload, response=result.response,
                                 finish_reason=result.finish_reason, cached=True))
            return
        self.ready.extend(rows)  # its request failed: each is sent on its own
        self.wake()

    async def _lookup(self, keys: list[bytes]) -> dict[bytes, bytes]:
        if not keys or self._broken:
            return {}
        try:
            return await self.cache.lookup(keys)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an unreadable cache costs requests, never rows
            self._broken = True
            warnings.warn(f"response cache: lookups failed ({type(exc).__name__}: {exc}); "
                          "sending every row", RuntimeWarning, stacklevel=2)
            return {}

    def _hit(self, job: Job, value: bytes) -> Result | None:
        try:
            response, finish = orjson.loads(value)
            if finish == "length" and not self.config.cache_truncated:
                return None  # cut short, stored by a run that asked for such answers
            schema = self.config.schema
            if schema is not None:  # validated when it was stored: only converted back
                response = schema.restore(response)
        except Exception:  # unreadable or stale: ask the endpoint again
            return None
        self.stats.cached += 1
        return Result(job.index, job.payload, response=response, finish_reason=finish,
                      cached=True)


class CacheLink:
    """A run's cache: its client (opened in its own thread), written every second and at
    the end. A cache that cannot be written costs a free rerun, never a result: it warns."""

    def __init__(self, client: Any, path: Path) -> None:
        self.client = client
        self.path = path
        self.broken = False
        self._flush: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path | bool, stats: RunStats, pool: Any) -> CacheLink | None:
        """The run's cache (None without one); a cache that cannot be opened is a
        ConfigError, raised before anything is sent."""
        if not path:
            return None
        client = CacheClient(path)
        try:
            await client.open()
        except BaseException:
            await pool.close()
            raise
        stats.cache_path = str(path)
        return cls(client, path)  # type: ignore[arg-type]

    def store(self, key: bytes, value: bytes) -> None:
        if not self.broken:
            self.client.store(key, value)

    def flush_soon(self) -> None:
        """Write what is held, in the cache's thread (one write at a time)."""
        if not self.broken and (self._flush is None or self._flush.done()):
            self._flush = asyncio.get_running_loop().create_task(self.client.flush())
            self._flush.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._warn(task.exception())  # type: ignore[arg-type]

    def _warn(self, exc: BaseException) -> None:
        """A cache that cannot be written: say so once, and stop writing to it."""
        if not self.broken:
            self.broken = True
            warnings.warn(f"response cache {self.path}: could not store answers "
                          f"({type(exc).__name__}: {exc}); the run goes on without storing "
                          "(a rerun sends them again)", RuntimeWarning, stacklevel=2)

    async def close(self) -> None:
        if self._flush is not None:
            with contextlib.suppress(BaseException):
                await self._flush
        try:
            await self.client.close()
        except Exception as exc:  # the results are stored; only a free rerun is lost
            self._warn(exc)
