"""The response cache: one SQLite file shared by processes and threads, and its async client."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmframe import _cache_io
from llmframe._cache import (
    CacheClient,
    CacheInfo,
    ResponseCache,
    cache_key,
    cache_path,
    clear_cache,
    default_cache_path,
    open_info,
)
from llmframe._exceptions import ConfigError, StoreError

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path, monkeypatch):
    """Never touch the real user cache directory."""
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", str(tmp_path / "default-cache"))


def _key(writer: str, i: int) -> bytes:
    return cache_key(writer.encode(), i.to_bytes(4, "little"))


def _value(writer: str, i: int) -> bytes:
    return f"{writer}:{i};".encode() * (1 + i % 7 * 40)  # 8 B to ~3 kB: some overflow pages


# -- the file ---------------------------------------------------------------------------


def test_round_trip_survives_reopening(tmp_path):
    path = tmp_path / "deep" / "dir" / "c.sqlite3"
    with ResponseCache(path) as cache:
        cache.put_many([(b"a", b"1"), (b"b", b"2")])
        cache.put_many([(b"a", b"one")])  # replaces
        assert cache.get_many([b"a", b"b"]) == {b"a": b"one", b"b": b"2"}
    with ResponseCache(path) as cache:
        assert cache.get_many([b"b", b"a", b"zz"]) == {b"a": b"one", b"b": b"2"}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_get_many_over_several_slices_with_missing_and_repeated_keys(tmp_path):
    items = [(_key("w", i), _value("w", i)) for i in range(0, 2600, 2)]
    asked = [_key("w", i) for i in range(2600)] + [_key("w", 4), _key("w", 5)]
    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        cache.put_many(items)
        cache.put_many([])
        assert cache.get_many([]) == {}
        assert cache.get_many(asked) == dict(items)
        for n in (1, 3, 500, 501):  # the padded statement sizes give the same answers
            assert cache.get_many(asked[:n]) == {k: v for k, v in items if k in asked[:n]}


def test_cache_key_is_short_stable_and_unambiguous():
    assert len(cache_key(b"m", b"p")) == 16
    assert cache_key(b"m", b"p") == cache_key(b"m", b"p")
    assert len({cache_key(b"ab", b"c"), cache_key(b"a", b"bc"), cache_key(b"abc"),
                cache_key(b"abc", b""), cache_key()}) == 5


def test_cache_path_means_off_default_file_or_directory(tmp_path, monkeypatch):
    assert cache_path(False) is None
    assert cache_path(None) is None
    assert cache_path(True) == tmp_path / "default-cache" / "responses.sqlite3"
    assert cache_path(str(tmp_path / "a.db")) == tmp_path / "a.db"
    assert cache_path(tmp_path / "a.db") == tmp_path / "a.db"
    assert cache_path(tmp_path) == tmp_path / "responses.sqlite3"  # an existing directory
    assert cache_path(f"{tmp_path}/new/") == tmp_path / "new" / "responses.sqlite3"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_path("~/x.db") == tmp_path / "x.db"


@pytest.mark.parametrize("bad", [1, 0, 2.5, b"/tmp/x", "", "  ", ["x"], object()])
def test_cache_path_refuses_anything_else(bad):
    with pytest.raises(ConfigError, match=r"cache must be True, False/None or a path.*got"):
        cache_path(bad)


def test_default_cache_path_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFRAME_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_path() == tmp_path / "mine" / "responses.sqlite3"
    monkeypatch.delenv("LLMFRAME_CACHE_DIR")
    platformdirs = pytest.importorskip("platformdirs")
    expected = Path(platformdirs.user_cache_dir("llmframe", appauthor=False))
    assert default_cache_path() == expected / "responses.sqlite3"


def test_info_and_clear_count_entries_and_shrink_the_file(tmp_path):
    path = tmp_path / "c.sqlite3"
    with ResponseCache(path) as cache:
        assert cache.info().entries == 0
        before = time.time()
        for start in range(0, 3000, 1000):
            cache.put_many([(_key("w", i), b"x" * 2000) for i in range(start, start + 1000)])
        info = cache.info()
        assert (info.path, info.entries, info.exists) == (path, 3000, True)
        assert info.bytes > 6_000_000
        assert before - 1 <= info.oldest.timestamp() <= info.newest.timestamp() <= time.time()
        text = str(info)
        assert str(path) in text and "entries: 3,000" in text and " MB" in text
        assert "dates:" in text
        assert cache.clear() == 3000
        after = cache.info()
        assert after.entries == 0 and after.oldest is None
        assert after.bytes < info.bytes / 20
        assert "KB" in str(after)
        assert cache.get_many([_key("w", 1)]) == {}
        cache.put_many([(b"k", b"v")])  # still usable
        assert cache.clear() == 1


def test_info_and_clear_of_a_missing_file_create_nothing(tmp_path):
    path = tmp_path / "nope" / "c.sqlite3"
    info = open_info(path)
    assert info == CacheInfo(path, entries=0, bytes=0, oldest=None, newest=None, exists=False)
    assert "does not exist yet" in str(info)
    assert clear_cache(path) == 0
    assert not path.parent.exists()
    assert open_info().path == tmp_path / "default-cache" / "responses.sqlite3"


def test_open_info_and_clear_cache_on_a_directory(tmp_path):
    with ResponseCache(tmp_path / "responses.sqlite3") as cache:
        cache.put_many([(b"a", b"1"), (b"b", b"2")])
    assert open_info(tmp_path).entries == 2
    assert clear_cache(str(tmp_path)) == 2
    assert open_info(tmp_path).entries == 0


def test_a_file_that_is_not_sqlite_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database at all, just some bytes\n" * 100)
    for readonly in (False, True):
        with pytest.raises(ConfigError, match=r"junk\.sqlite3 is not an llmframe cache.*delete"):
            ResponseCache(path, readonly=readonly)
    with pytest.raises(ConfigError, match="junk"):
        open_info(path)
    assert path.read_bytes().startswith(b"this is not")  # left alone


def test_another_apps_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    for readonly in (False, True):
        with pytest.raises(ConfigError, match=r"app\.db is not an llmframe cache"):
            ResponseCache(path, readonly=readonly)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]
    conn.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(ConfigError, match=r"empty\.db is not an llmframe cache"):
        ResponseCache(empty, readonly=True)


def test_a_newer_format_is_refused(tmp_path):
    path = tmp_path / "c.sqlite3"
    ResponseCache(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE name = 'format'")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=r"c\.sqlite3 is an llmframe cache of format '99'.*"
                                          r"upgrade llmframe"):
        ResponseCache(path)


def test_paths_that_cannot_be_made_or_written_are_config_errors(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"cannot create the cache directory .*file"):
        ResponseCache(blocker / "sub" / "c.sqlite3")
    with pytest.raises(ConfigError, match="is a directory"):
        ResponseCache(tmp_path)
    with pytest.raises(ConfigError, match=r"cannot open the cache .*missing\.sqlite3"):
        ResponseCache(tmp_path / "missing.sqlite3", readonly=True)
    path = tmp_path / "c.sqlite3"
    ResponseCache(path).close()
    monkeypatch.setattr(_cache_io.os, "access", lambda p, mode: Path(p) != path)
    with pytest.raises(ConfigError, match=r"c\.sqlite3 is not writable"):
        ResponseCache(path)


# -- busy and locked ----------------------------------------------------------------------


def test_retrying_retries_busy_and_locked_only_a_bounded_number_of_times():
    calls = []

    def flaky(errors):
        def call():
            calls.append(1)
            if len(calls) <= errors:
                raise sqlite3.OperationalError("database is locked")
            return "done"
        return call

    assert _cache_io.retrying(flaky(3), pause=0) == "done"
    assert len(calls) == 4
    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _cache_io.retrying(flaky(99), attempts=5, pause=0)
    assert len(calls) == 5

    def broken():
        calls.append(1)
        raise sqlite3.OperationalError("no such table: responses")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _cache_io.retrying(broken, pause=0)
    assert len(calls) == 1


def test_a_write_waits_for_another_processes_lock(tmp_path):
    path = tmp_path / "c.sqlite3"
    ResponseCache(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock, as another process would
    done = threading.Event()
    errors: list[BaseException] = []

    def write():
        try:
            with ResponseCache(path, timeout=0.05) as cache:  # busy past its timeout: retried
                cache.put_many([(b"k", b"v")])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert not done.wait(0.2)
    other.execute("COMMIT")
    other.close()
    thread.join(10)
    assert done.is_set() and not errors
    with ResponseCache(path) as cache:
        assert cache.get_many([b"k"]) == {b"k": b"v"}


def test_a_failing_write_is_a_store_error_naming_the_file(tmp_path):
    path = tmp_path / "c.sqlite3"
    with ResponseCache(path) as cache:
        cache._conn.execute("DROP TABLE responses")  # a file damaged behind our back
        with pytest.raises(StoreError, match=r"c\.sqlite3 could not be written"):
            cache.put_many([(b"k", b"v")])
        with pytest.raises(StoreError, match=r"c\.sqlite3 could not be read"):
            cache.get_many([b"k"])


# -- the async client ---------------------------------------------------------------------


def _loops():
    yield pytest.param(asyncio.new_event_loop, id="asyncio")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return
    yield pytest.param(uvloop.new_event_loop, id="uvloop")


def _run(factory, coro):
    loop = factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.mark.parametrize("factory", list(_loops()))
def test_client_stores_in_the_background_flushes_and_looks_up(tmp_path, factory):
    path = tmp_path / "c.sqlite3"

    async def main():
        client = CacheClient(path, batch=1000)
        await client.open()
        for i in range(2500):
            client.store(_key("w", i), _value("w", i))
        assert client.backlog == 2500 and len(client._pending) == 1500  # 1,000 being written
        await client.flush()
        assert client.stored == 2500 and not client._pending
        found = await client.lookup([_key("w", i) for i in range(3000)])
        assert found == {_key("w", i): _value("w", i) for i in range(2500)}
        await client.close()
        await client.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            client.store(b"k", b"v")

    _run(factory, main())
    with ResponseCache(path) as cache:
        assert cache.info().entries == 2500


def test_client_flush_is_safe_while_stores_continue(tmp_path):
    path = tmp_path / "c.sqlite3"

    async def producer(client):
        for i in range(5000):
            client.store(_key("p", i), _value("p", i))
            if i % 50 == 0:
                await asyncio.sleep(0)

    async def flusher(client, stop):
        while not stop.is_set():
            await client.flush()
            await asyncio.sleep(0)

    async def main():
        client = CacheClient(path, batch=300)
        await client.open()
        stop = asyncio.Event()
        task = asyncio.ensure_future(flusher(client, stop))
        await producer(client)
        stop.set()
        await task
        await client.close()
        return client.stored

    assert asyncio.run(main()) == 5000
    with ResponseCache(path) as cache:
        assert len(cache.get_many([_key("p", i) for i in range(5000)])) == 5000


def test_a_failed_background_write_surfaces_on_the_next_flush_once(tmp_path, monkeypatch):
    path = tmp_path / "c.sqlite3"
    real = ResponseCache.put_many
    failures = [StoreError("disk full (simulated)")]

    def put_many(self, items):
        if failures:
            raise failures.pop()
        real(self, items)

    monkeypatch.setattr(ResponseCache, "put_many", put_many)

    async def main():
        client = CacheClient(path, batch=100)
        await client.open()
        for i in range(100):
            client.store(_key("a", i), b"lost")  # this background write fails
        for i in range(150):
            client.store(_key("b", i), b"kept")  # the next ones are still written
        with pytest.raises(StoreError, match="simulated"):
            await client.flush()
        await client.flush()  # raised once
        assert client.stored == 150
        failures.append(StoreError("again"))
        client.store(b"k", b"v")
        with pytest.raises(StoreError, match="again"):
            await client.close()  # close raises it too, and still closes
        assert client._executor._shutdown

    asyncio.run(main())
    with ResponseCache(path) as cache:
        assert cache.info().entries == 150


def test_while_a_write_is_stuck_stores_gather_then_queue_and_none_is_dropped(tmp_path,
                                                                             monkeypatch):
    release = threading.Event()
    real = ResponseCache.put_many
    sizes = []

    def slow_put_many(self, items):
        assert release.wait(30)
        sizes.append(len(items))
        real(self, items)

    monkeypatch.setattr(ResponseCache, "put_many", slow_put_many)

    async def main():
        client = CacheClient(tmp_path / "c.sqlite3", batch=10, limit=30)
        await client.open()
        for i in range(85):  # 10 start a write that hangs; then 30 and 30 queue behind it
            client.store(_key("s", i), b"v")
        assert (len(client._pending), client.backlog) == (15, 85)
        release.set()
        await client.close()
        assert (client.stored, client.backlog) == (85, 0)

    asyncio.run(main())
    assert sizes == [10, 30, 30, 15]
    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        assert len(cache.get_many([_key("s", i) for i in range(85)])) == 85


def test_client_open_errors_and_misuse(tmp_path):
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"\x00garbage" * 512)

    async def main():
        client = CacheClient(junk)
        with pytest.raises(RuntimeError, match="open"):
            await client.lookup([b"k"])
        with pytest.raises(RuntimeError, match="open"):
            client.store(b"k", b"v")
        with pytest.raises(ConfigError, match=r"junk\.sqlite3"):
            await client.open()
        await client.close()

    asyncio.run(main())
    with pytest.raises(RuntimeError):
        CacheClient(tmp_path / "c.sqlite3")  # made outside a running loop


# -- many processes and threads on one file -------------------------------------------------

WRITERS = [f"p{i}" for i in range(4)] + [f"t{i}" for i in range(4)]


def _writer(path: str, writer: str, go: str, n: int = 5000, batch: int = 200) -> None:
    """Write n entries in batches, reading others' and checking its own after each batch."""
    rnd = random.Random(writer)
    deadline = time.monotonic() + 60
    Path(f"{go}.{writer}").touch()  # ready
    while not os.path.exists(go):  # start together, so opening races too
        assert time.monotonic() < deadline, "never started"
        time.sleep(0.005)
    with ResponseCache(Path(path)) as cache:
        for start in range(0, n, batch):
            cache.put_many([(_key(writer, i), _value(writer, i))
                            for i in range(start, start + batch)])
            for other in rnd.sample(WRITERS, 3):
                ids = rnd.sample(range(n), 400)
                found = cache.get_many([_key(other, i) for i in ids])
                for i in ids:
                    assert found.get(_key(other, i), _value(other, i)) == _value(other, i)
            done = start + batch
            ids = [*range(start, done), *rnd.sample(range(done), min(100, done))]
            found = cache.get_many([_key(writer, i) for i in ids])
            assert found == {_key(writer, i): _value(writer, i) for i in ids}


@pytest.mark.slow
def test_processes_and_threads_share_one_file_without_errors(tmp_path):
    path, go = tmp_path / "shared" / "c.sqlite3", tmp_path / "go"
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]; "
            "import test_cache; test_cache._writer(*sys.argv[1:])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), w, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=TESTS.parent)
             for w in WRITERS[:4]]
    errors: dict[str, BaseException] = {}

    def thread_writer(writer):
        try:
            _writer(str(path), writer, str(go))
        except BaseException as exc:
            errors[writer] = exc

    threads = [threading.Thread(target=thread_writer, args=(w,)) for w in WRITERS[4:]]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{go}.{w}").exists() for w in WRITERS):  # all at the start line
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.01)
    finally:
        go.touch()
    try:
        outcomes = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert not errors, errors
    for p, (_, err) in zip(procs, outcomes, strict=True):
        assert p.returncode == 0, err.decode()
    with ResponseCache(path) as cache:
        keys = [_key(w, i) for w in WRITERS for i in range(5000)]
        assert cache.get_many(keys) == {_key(w, i): _value(w, i)
                                        for w in WRITERS for i in range(5000)}
        assert cache.info().entries == 40_000
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
