"""The response cache file: one SQLite database in WAL mode, shared by processes and threads.

Each :class:`ResponseCache` is one connection, bound to the thread that made it. Several
processes (``--workers``) and threads (notebook runs) may each hold one on the same file:

- WAL mode lets readers run while one writer writes; ``synchronous=NORMAL`` keeps the file
  consistent through a crash or power loss (it may lose the last transactions, which a
  cache can afford) and saves an fsync per transaction.
- Writes are one ``BEGIN IMMEDIATE`` transaction per batch, so a writer takes the write lock
  up front and waits for it in SQLite's busy handler (``timeout``, 60 s) instead of failing
  half-way. The few ``SQLITE_BUSY``/``SQLITE_LOCKED`` cases that skip the busy handler
  (WAL recovery after a crash, a file being created by two processes at once) are retried
  here with a short backoff, a bounded number of times.
- Nothing is loaded whole: lookups are ``SELECT ... IN (...)`` of at most 500 keys.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "responses.sqlite3"
>>> with ResponseCache(path) as cache:
...     cache.put_many([(b"k1", b"answer 1"), (b"k2", b"answer 2")])
...     cache.get_many([b"k1", b"k3"])
{b'k1': b'answer 1'}
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from ._exceptions import ConfigError, StoreError

__all__ = ["FORMAT", "SLICE", "CacheInfo", "ResponseCache", "retrying"]

FORMAT = 1  # the layout of the file; a file of a newer format is refused, never rewritten
SLICE = 500  # keys per SELECT: well under SQLite's limit on bound parameters (999 before 3.32)
_APP = "llmframe response cache"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)",
    # A rowid table, not WITHOUT ROWID: answers are often larger than 1/20 of a page, and a
    # WITHOUT ROWID b-tree keeps whole rows in its interior pages. Measured on 200k entries
    # of 2 kB: the file is half the size, writes 5x and lookups 4x faster this way. The
    # value comes last so that ``info`` reads ``created`` without its overflow pages.
    "CREATE TABLE IF NOT EXISTS responses (key BLOB PRIMARY KEY, created REAL NOT NULL,"
    " value BLOB NOT NULL)",
)
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (extended codes keep them in the low byte)
_RETRIES = 8
_FIX = "delete it or pick another path (cache=PATH or LLMFRAME_CACHE_DIR)"

T = TypeVar("T")


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def retrying(call: Callable[[], T], *, attempts: int = _RETRIES, pause: float = 0.02) -> T:
    """``call()``, again after a jittered, doubling pause (up to 1 s) while SQLite says busy
    or locked; any other error, or busy ``attempts`` times, is raised."""
    for attempt in range(attempts):
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or attempt == attempts - 1:
                raise
        time.sleep(min(pause * 2**attempt, 1.0) * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")  # pragma: no cover


@lru_cache(maxsize=16)
def _select(n: int) -> str:
    return f"SELECT key, value FROM responses WHERE key IN ({','.join('?' * n)})"


def _padded(keys: Sequence[bytes]) -> Sequence[bytes]:
    """Keys padded (with a repeat of the last) to a power of two, or to SLICE: a handful of
    distinct statements, so each is compiled once and reused from the statement cache."""
    n = 1 << (len(keys) - 1).bit_length()
    n = min(n, SLICE)
    return keys if n == len(keys) else [*keys, *[keys[-1]] * (n - len(keys))]


def _files_size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):  # -wal and -shm exist only while in use
            total += os.stat(f"{path}{suffix}").st_size
    return total


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).astimezone()


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


@dataclass(frozen=True)
class CacheInfo:
    """What a cache file holds: entries, bytes on disk (with ``-wal``/``-shm``), date range.

    >>> print(CacheInfo(Path("/tmp/c.sqlite3"), entries=0, bytes=0, oldest=None, newest=None,
    ...                 exists=False))
    cache:   /tmp/c.sqlite3 (does not exist yet)
    entries: 0
    """

    path: Path
    entries: int
    bytes: int
    oldest: datetime | None
    newest: datetime | None
    exists: bool = True

    def __str__(self) -> str:
        if not self.exists:
            return f"cache:   {self.path} (does not exist yet)\nentries: 0"
        lines = [f"cache:   {self.path}", f"size:    {_size(self.bytes)}",
                 f"entries: {self.entries:,}"]
        if self.oldest is not None and self.newest is not None:
            lines.append(f"dates:   {self.oldest:%Y-%m-%d %H:%M} .. {self.newest:%Y-%m-%d %H:%M}")
        return "\n".join(lines)


def _connect(path: Path, readonly: bool, timeout: float) -> sqlite3.Connection:
    if path.is_dir():
        msg = f"cache {path} is a directory; give a file path (or the directory to cache_path())"
        raise ConfigError(msg)
    if readonly:
        target, uri = f"{path.absolute().as_uri()}?mode=ro", True
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = (f"cannot create the cache directory {path.parent} ({exc.strerror or exc}); "
                   "pick another path (cache=PATH or LLMFRAME_CACHE_DIR)")
            raise ConfigError(msg) from None
        for place in (path.parent, path):
            if place.exists() and not os.access(place, os.W_OK):
                msg = f"cache {path}: {place} is not writable; fix its permissions or {_FIX}"
                raise ConfigError(msg)
        target, uri = str(path), False
    try:
        conn = sqlite3.connect(target, timeout=timeout, uri=uri, isolation_level=None)
    except sqlite3.Error as exc:
        msg = f"cannot open the cache {path} ({exc}); check it exists and is readable, or {_FIX}"
        raise ConfigError(msg) from None
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def _check(conn: sqlite3.Connection, path: Path) -> bool:
    """True if the file is an llmframe cache of a format we read; False if it is empty (no
    tables yet); ConfigError if it is anything else."""
    tables = _tables(conn)
    if not tables:
        return False
    if not {"meta", "responses"} <= tables:
        msg = f"{path} is not an llmframe cache (it holds other tables): {_FIX}"
        raise ConfigError(msg)
    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    if meta.get("app") != _APP:
        msg = f"{path} is not an llmframe cache (a table named meta, not ours): {_FIX}"
        raise ConfigError(msg)
    version = meta.get("format", "")
    if not version.isdigit() or int(version) != FORMAT:
        newer = version.isdigit() and int(version) > FORMAT
        why = "upgrade llmframe to read it" if newer else _FIX
        msg = (f"{path} is an llmframe cache of format {version!r}; this llmframe reads "
               f"format {FORMAT}: {why}")
        raise ConfigError(msg)
    return True


def _create(conn: sqlite3.Connection, path: Path) -> None:
    """Make the tables of an empty file; the check is redone under the write lock, since
    another process may have made them since we looked."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not _check(conn, path):
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany("INSERT INTO meta VALUES (?, ?)",
                             [("app", _APP), ("format", str(FORMAT))])
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise


def _setup(conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
    if not readonly:
        retrying(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {64 << 20}")  # a WAL shrinks back after use
        # No mmap_size: it would save ~1 us per lookup, but an I/O error on a mapped file is a
        # SIGBUS crash rather than an exception, and mapped pages count as our memory.
    if not retrying(lambda: _check(conn, path)):
        if readonly:
            msg = f"{path} is not an llmframe cache (an empty database): {_FIX}"
            raise ConfigError(msg)
        retrying(lambda: _create(conn, path))


class ResponseCache:
    """One connection to a cache file, thread-bound: create and use it in one thread.

    Opening creates the file (and its directory) if missing; a file that is not an llmframe
    cache, or cannot be opened or written, is a :class:`ConfigError` naming it. After that,
    a failing read or write is a :class:`StoreError` naming the file. ``readonly`` opens an
    existing file without writing to it (for ``info``). ``timeout``: seconds to wait for
    another writer's lock before retrying (see :func:`retrying`).
    """

    __slots__ = ("_conn", "path", "readonly")

    def __init__(self, path: Path, *, readonly: bool = False, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._conn = _connect(self.path, readonly, timeout)
        try:
            _setup(self._conn, self.path, readonly)
        except sqlite3.OperationalError as exc:
            self._conn.close()
            msg = f"cannot open the cache {self.path} ({exc}); check its permissions or {_FIX}"
            raise ConfigError(msg) from None
        except sqlite3.DatabaseError as exc:  # not a database at all, or a damaged one
            self._conn.close()
            msg = f"{self.path} is not an llmframe cache or is damaged ({exc}): {_FIX}"
            raise ConfigError(msg) from None
        except BaseException:
            self._conn.close()
            raise

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The values of those ``keys`` that are present, one SELECT per SLICE keys."""
        out: dict[bytes, bytes] = {}
        try:
            for start in range(0, len(keys), SLICE):
                part = _padded(keys[start:start + SLICE])
                rows = retrying(lambda p=part: self._conn.execute(_select(len(p)), p).fetchall())
                out.update(rows)
        except sqlite3.Error as exc:
            msg = f"the response cache {self.path} could not be read: {exc}"
            raise StoreError(msg) from exc
        return out

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Store ``(key, value)`` pairs (replacing older values) in one transaction."""
        if not items:
            return
        now = time.time()
        rows = [(key, now, value) for key, value in items]
        try:
            retrying(lambda: self._write(lambda: self._conn.executemany(
                "INSERT OR REPLACE INTO responses (key, created, value) VALUES (?, ?, ?)", rows)))
        except sqlite3.Error as exc:
            msg = f"the response cache {self.path} could not be written: {exc}"
            raise StoreError(msg) from exc

    def _write(self, body: Callable[[], T]) -> T:
        self._conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
        try:
            result = body()
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.rollback()
            raise
        return result

    def info(self) -> CacheInfo:
        """Entries, bytes on disk and the date range (a scan: under 1 s per million entries)."""
        try:
            entries, oldest, newest = retrying(lambda: self._conn.execute(
                "SELECT count(*), min(created), max(created) FROM responses").fetchone())
        except sqlite3.Error as exc:
            msg = f"the response cache {self.path} could not be read: {exc}"
            raise StoreError(msg) from exc
        return CacheInfo(self.path, entries, _files_size(self.path), _when(oldest),
                         _when(newest))

    def clear(self) -> int:
        """Delete every entry and shrink the file; returns how many were deleted."""
        try:
            deleted = retrying(lambda: self._write(
                lambda: self._conn.execute("DELETE FROM responses").rowcount))
            retrying(lambda: self._conn.execute("VACUUM"))
            # VACUUM rewrote the file into the WAL; copy it back and cut both files down
            retrying(lambda: self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
        except sqlite3.Error as exc:
            msg = f"the response cache {self.path} could not be cleared: {exc}"
            raise StoreError(msg) from exc
        return deleted

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r}{', readonly=True' if self.readonly else ''})"
