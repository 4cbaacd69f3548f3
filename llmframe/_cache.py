"""The response cache: a rerun pays nothing for prompts already answered.

- :func:`cache_path` says what a user's ``cache=`` means; :func:`default_cache_path` is
  ``$LLMFRAME_CACHE_DIR`` or the user's cache directory.
- :func:`cache_key` hashes what makes a request (the engine chooses the parts).
- :class:`ResponseCache` (in ``_cache_io``) is one SQLite connection to the file, which
  processes and threads share safely; :class:`CacheClient` is its front end for a run's
  event loop: lookups and writes run in one worker thread, never on the loop.
- :func:`open_info` and :func:`clear_cache` serve ``llmframe cache info|clear [PATH]``.

>>> import asyncio, tempfile
>>> path = cache_path(tempfile.mkdtemp())  # a directory: DIR/responses.sqlite3
>>> async def run():
...     client = CacheClient(path)
...     await client.open()
...     client.store(cache_key(b"model", b"prompt"), b"answer")
...     await client.close()
...     return client.stored
>>> asyncio.run(run())
1
>>> open_info(path).entries, clear_cache(path), open_info(path).entries
(1, 1, 0)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from ._cache_io import SLICE, CacheInfo, ResponseCache
from ._exceptions import ConfigError

__all__ = ["CacheClient", "CacheInfo", "ResponseCache", "cache_key", "cache_path",
           "clear_cache", "default_cache_path", "open_info"]

FILENAME = "responses.sqlite3"
_PERSON = b"llmframe.cache.1"  # blake2b personalisation: the key format version (16 bytes)


def default_cache_path() -> Path:
    """``$LLMFRAME_CACHE_DIR/responses.sqlite3``, else the same file in the user's cache
    directory (``~/.cache/llmframe`` on Linux, as ``platformdirs`` says elsewhere).

    >>> default_cache_path().name
    'responses.sqlite3'
    """
    env = os.environ.get("LLMFRAME_CACHE_DIR", "").strip()
    if env:
        return Path(env).expanduser() / FILENAME
    import platformdirs  # only when the cache is used

    return Path(platformdirs.user_cache_dir("llmframe", appauthor=False)) / FILENAME


def cache_path(cache: bool | str | os.PathLike[str] | None) -> Path | None:
    """What ``cache=`` means: ``False``/``None`` off (None), ``True`` the default file, a
    path that file (``~`` expanded; an existing directory, or one written with a trailing
    slash, holds ``responses.sqlite3``).

    >>> cache_path(False) is None, cache_path("~/answers.db").name
    (True, 'answers.db')
    >>> cache_path(3)
    Traceback (most recent call last):
    ...
    llmframe._exceptions.ConfigError: cache must be True, False/None or a path ...
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        return default_cache_path()
    text = os.fspath(cache) if isinstance(cache, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text.strip():
        msg = (f"cache must be True, False/None or a path (a file, or a directory for "
               f"{FILENAME}), got {type(cache).__name__} {cache!r}")
        raise ConfigError(msg)
    path = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or path.is_dir():
        path = path / FILENAME
    return path


def cache_key(*parts: bytes) -> bytes:
    """A 16-byte key for ``parts``; each is length-prefixed, so no two lists of parts share
    an encoding, and the key format version is baked in.

    >>> len(cache_key(b"model", b"prompt"))
    16
    >>> cache_key(b"ab", b"c") == cache_key(b"a", b"bc")
    False
    """
    h = hashlib.blake2b(digest_size=16, person=_PERSON)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


def _existing(path: str | os.PathLike[str] | None) -> Path:
    found = default_cache_path() if path is None else cache_path(path)
    assert found is not None  # a path was given
    return found


def open_info(path: str | os.PathLike[str] | None = None) -> CacheInfo:
    """:class:`CacheInfo` of the cache at ``path`` (default: :func:`default_cache_path`),
    read without writing; a missing file is reported as not existing yet, not created."""
    found = _existing(path)
    if not found.exists():
        return CacheInfo(found, entries=0, bytes=0, oldest=None, newest=None, exists=False)
    with ResponseCache(found, readonly=True) as cache:
        return cache.info()


def clear_cache(path: str | os.PathLike[str] | None = None) -> int:
    """Delete every entry of the cache at ``path`` and shrink it; returns how many."""
    found = _existing(path)
    if not found.exists():
        return 0
    with ResponseCache(found) as cache:
        return cache.clear()


class CacheClient:
    """The cache for one run on an event loop: make it inside the running loop, ``await
    open()``, then ``lookup`` and ``store``, and ``await close()`` at the end.

    Two worker threads own a :class:`ResponseCache` each, so the loop never waits on SQLite:
    one writes, one reads (WAL lets reads go on while a writer waits for the lock another
    process holds: lookups, and so the run, never stall behind a write). ``store`` only
    buffers: at ``batch`` entries a write starts in the background. While one is under way,
    what arrives joins the next write (fewer, larger transactions when the lock is
    contended), up to ``limit`` entries, which are then queued behind it as a write of their
    own: nothing is dropped, and :attr:`backlog` shows what waits, for a caller that wants
    to slow down. The first failed write is kept and raised by the next :meth:`flush` or
    :meth:`close`; its entries are lost, the file stays intact, and later writes are still
    tried.
    """

    __slots__ = ("_cache", "_closed", "_error", "_executor", "_last", "_loop", "_pending",
                 "_reader", "_reading", "_settled", "_stored", "_submitted", "batch", "limit",
                 "path", "timeout")

    def __init__(self, path: Path, *, batch: int = 1000, limit: int | None = None,
                 timeout: float = 1.0) -> None:
        self.path = Path(path)
        # a write waits this long for another process's lock, a few times (see retrying):
        # a lock held for long (an open transaction in a DB browser) costs the answers
        # written meanwhile, never a run stalled at its end
        self.timeout = timeout
        self.batch = batch
        self.limit = 20 * batch if limit is None else max(limit, batch)
        self._loop = asyncio.get_running_loop()  # loop-bound: made per run, inside it
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmframe-cache")
        self._reading = ThreadPoolExecutor(1, thread_name_prefix="llmframe-cache-read")
        self._cache: ResponseCache | None = None
        self._reader: ResponseCache | None = None
        self._pending: list[tuple[bytes, bytes]] = []
        self._last: asyncio.Future[None] | None = None  # the newest write; they run in order
        self._error: BaseException | None = None
        self._submitted = self._settled = self._stored = 0
        self._closed = False

    @property
    def stored(self) -> int:
        """Entries written to the file so far."""
        return self._stored

    @property
    def backlog(self) -> int:
        """Entries stored but not yet written (buffered, or in writes under way)."""
        return self._submitted - self._settled + len(self._pending)

    async def open(self) -> None:
        """Open (or create) the file in the worker thread; a bad path is a ConfigError."""
        self._cache = await self._loop.run_in_executor(
            self._executor, partial(ResponseCache, self.path, timeout=self.timeout))
        self._reader = await self._loop.run_in_executor(
            self._reading, partial(ResponseCache, self.path, readonly=True))

    async def lookup(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The cached values of those ``keys`` that have one (read in slices of 500)."""
        self._opened()
        cache = self._reader
        assert cache is not None
        keys = list(keys)
        if len(keys) <= SLICE:
            return await self._loop.run_in_executor(self._reading, cache.get_many, keys)
        found: dict[bytes, bytes] = {}
        for start in range(0, len(keys), SLICE):
            found.update(await self._loop.run_in_executor(
                self._reading, cache.get_many, keys[start:start + SLICE]))
        return found

    def store(self, key: bytes, value: bytes) -> None:
        """Buffer one entry; a full buffer starts a background write (not awaited)."""
        if self._cache is None or self._closed:
            self._opened()  # raises: not open yet, or closed already
        self._pending.append((key, value))
        n = len(self._pending)
        if n >= self.batch and (self._submitted == self._settled or n >= self.limit):
            self._start_write()

    async def flush(self) -> None:
        """Write everything stored so far; raises a background write's error, once."""
        target = self._submitted + len(self._pending)
        if self._pending:
            self._start_write()
        while self._settled < target:
            await asyncio.wait([self._last])  # type: ignore[list-item]
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def close(self) -> None:
        """Flush, then close the connections in their threads and let the threads go."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush()
        finally:
            try:
                if self._cache is not None:
                    await self._loop.run_in_executor(self._executor, self._cache.close)
                if self._reader is not None:
                    await self._loop.run_in_executor(self._reading, self._reader.close)
            finally:
                self._executor.shutdown(wait=False)
                self._reading.shutdown(wait=False)

    def _opened(self) -> ResponseCache:
        if self._cache is None or self._closed:
            msg = "CacheClient is closed" if self._closed else "CacheClient: await open() first"
            raise RuntimeError(msg)
        return self._cache

    def _start_write(self) -> None:
        cache = self._cache
        assert cache is not None  # store() needs open(); close() closes it after the flush
        items, self._pending = self._pending, []
        count = len(items)
        self._submitted += count
        self._last = self._loop.run_in_executor(self._executor, cache.put_many, items)
        self._last.add_done_callback(lambda done: self._written(done, count))

    def _written(self, done: asyncio.Future[None], count: int) -> None:
        self._settled += count
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is None:
            self._stored += count
        elif self._error is None:
            self._error = error
        idle = self._submitted == self._settled
        if idle and len(self._pending) >= self.batch and not self._closed:
            self._start_write()  # what arrived during that write (close's flush does its own)
