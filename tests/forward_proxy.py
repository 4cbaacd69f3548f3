"""A small real HTTP forward proxy for the tests: ``CONNECT`` tunnels and absolute-form
requests, optional Basic auth, on 127.0.0.1 in a background thread with its own loop.

>>> with ForwardProxy() as proxy:
...     proxy.url.startswith("http://127.0.0.1:"), proxy.connects, proxy.forwarded
(True, [], [])
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ForwardProxy"]

CHUNK = 1 << 16
Head = tuple[str, list[tuple[str, str]]]
Upstream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_DROP = {"proxy-authorization", "proxy-connection"}


class _Malformed(Exception):
    """The client sent something that is not HTTP/1.x."""


def _answer(status: int, extra: str = "") -> bytes:
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\n\r\n".encode()


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, Head] | None:
    """The raw head and ``(first line, headers)``, or None at a clean end of stream."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise _Malformed("truncated head") from None
    except asyncio.LimitOverrunError:
        raise _Malformed("head too long") from None
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise _Malformed(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return raw, (lines[0], headers)


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _closes(version: str, headers: list[tuple[str, str]]) -> bool:
    """Whether a message of this HTTP version and these headers ends its connection."""
    tokens = {t.strip().lower() for k, v in headers
              if k.lower() in ("connection", "proxy-connection") for t in v.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


def _status(line: str) -> tuple[str, int]:
    """``(version, status)`` of an answer's status line."""
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"the upstream answered {line!r}")
    return parts[0], int(parts[1])


class _Collect:
    """A sink that keeps what is written (a request body, read before it is sent on)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:  # like StreamWriter's
        pass


Sink = asyncio.StreamWriter | _Collect

async def _copy_exactly(reader: asyncio.StreamReader, sink: Sink, n: int) -> None:
    while n > 0:
        data = await reader.readexactly(min(n, CHUNK))
        n -= len(data)
        sink.write(data)
        await sink.drain()


async def _copy_body(reader: asyncio.StreamReader, sink: Sink,
                     headers: list[tuple[str, str]], *, request: bool) -> bool:
    """Copy a message body framed by ``headers`` verbatim (chunks and trailers included);
    True if it ran until the connection closed (an answer with no framing)."""
    if "chunked" in (_header(headers, "transfer-encoding") or "").lower():
        size = 1
        while size:  # chunks up to the last, empty one
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            sink.write(line)
            await _copy_exactly(reader, sink, size + 2 if size else 0)
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
            sink.write(line)
        sink.write(b"\r\n")
        await sink.drain()
        return False
    length = _header(headers, "content-length")
    if length is not None or request:  # a request without framing has no body
        await _copy_exactly(reader, sink, int(length or 0))
        return False
    while data := await reader.read(CHUNK):
        sink.write(data)
        await sink.drain()
    return True


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()


async def _pipe(a: Upstream, b: Upstream) -> None:
    """Pipe bytes both ways between two connections until either side closes."""
    pumps = {asyncio.ensure_future(_pump(a[0], b[1])), asyncio.ensure_future(_pump(b[0], a[1]))}
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _exchange(up: Upstream, data: bytes) -> tuple[bytes, Head] | None:
    """Send a request upstream and read its answer's head; None if the upstream closed."""
    try:
        up[1].write(data)
        await up[1].drain()
        return await _read_head(up[0])
    except (ConnectionError, _Malformed):
        return None


async def _relay(up: Upstream, writer: asyncio.StreamWriter, method: str,
                 got: tuple[bytes, Head]) -> bool:
    """Copy an answer to the client; whether the upstream connection stays open."""
    raw, (status_line, headers) = got
    version, status = _status(status_line)
    while 100 <= status < 200 and status != 101:  # 100 Continue: the answer follows
        writer.write(raw)
        nxt = await _read_head(up[0])
        if nxt is None:
            raise ConnectionError("the upstream closed")
        raw, (status_line, headers) = nxt
        version, status = _status(status_line)
    writer.write(raw)
    until_close = method != "HEAD" and status not in (204, 304) and await _copy_body(
        up[0], writer, headers, request=False)
    await writer.drain()
    return not (until_close or _closes(version, headers))


class _Connection:
    """One client connection: CONNECT tunnels and absolute-form requests (keep-alive)."""

    def __init__(self, proxy: ForwardProxy, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proxy, self.reader, self.writer = proxy, reader, writer
        self.upstreams: dict[str, Upstream] = {}

    async def serve(self) -> None:
        """Serve requests until the client or the proxy closes the connection."""
        try:
            while await self._one():
                pass
        except (_Malformed, ValueError, UnicodeError):
            with contextlib.suppress(Exception):
                self.writer.write(_answer(400))
                await self.writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            for _, up in self.upstreams.values():
                self.proxy.drop(up)
            self.proxy.drop(self.writer)

    async def _refused(self, auth: str | None) -> bool:
        """Answer 407 unless ``auth`` is what the proxy expects; whether it did."""
        expected = self.proxy.expected
        if expected is None or auth == expected:
            return False
        self.writer.write(_answer(407, 'Proxy-Authenticate: Basic realm="test"\r\n'))
        await self.writer.drain()
        return True

    async def _one(self) -> bool:
        """Serve one request; False when the connection is to close."""
        got = await _read_head(self.reader)
        if got is None:
            return False
        _, (line, headers) = got
        method, target, version = line.split(" ") if line.count(" ") == 2 else ("", "", "")
        if not method or not version.startswith("HTTP/1."):
            raise _Malformed(line)
        auth = _header(headers, "proxy-authorization")
        if method == "CONNECT":
            self.proxy.connects.append(target)
            self.proxy.auth_seen.append(auth)
            await self._tunnel(target, auth)
            return False
        if not target.lower().startswith("http://"):
            raise _Malformed(f"not absolute-form: {line}")
        self.proxy.auth_seen.append(auth)
        body = _Collect()
        await _copy_body(self.reader, body, headers, request=True)
        if await self._refused(auth):
            return not _closes(version, headers)
        self.proxy.forwarded.append(line)
        return await self._forward(line, headers, bytes(body.data))

    async def _tunnel(self, target: str, auth: str | None) -> None:
        """Answer a CONNECT and pipe bytes both ways until either side closes."""
        host, colon, port = target.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise _Malformed(target)
        if await self._refused(auth):
            return
        if self.proxy.refuse_connect is not None:
            self.writer.write(_answer(self.proxy.refuse_connect))
            return await self.writer.drain()
        try:
            up = await self.proxy.open(host.strip("[]"), int(port))
        except (OSError, asyncio.TimeoutError):
            self.writer.write(_answer(502))
            return await self.writer.drain()
        try:
            self.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await self.writer.drain()
            await _pipe((self.reader, self.writer), up)
        finally:
            self.proxy.drop(up[1])

    async def _forward(self, line: str, headers: list[tuple[str, str]], body: bytes) -> bool:
        """Send an absolute-form request on in origin-form, and its answer back; whether
        the client's connection stays open."""
        method, target, version = line.split(" ")
        parts = urlsplit(target)
        host, port = parts.hostname or "", parts.port or 80
        key = f"{host}:{port}"
        origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        data = (f"{method} {origin} {version}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers if k.lower() not in _DROP) + "\r\n"
        ).encode("latin-1") + body
        stays = not _closes(version, headers)
        got = None
        while got is None:  # a kept-alive connection the upstream gave up: a fresh one
            fresh = key not in self.upstreams
            if fresh:
                try:
                    self.upstreams[key] = await self.proxy.open(host, port)
                except (OSError, asyncio.TimeoutError):
                    self.writer.write(_answer(502))
                    await self.writer.drain()
                    return stays
            up = self.upstreams[key]
            got = await _exchange(up, data)
            if got is None:
                self.proxy.drop(self.upstreams.pop(key)[1])
                if fresh:
                    raise ConnectionError("the upstream closed without answering")
        if not await _relay(up, self.writer, method, got):
            self.proxy.drop(self.upstreams.pop(key)[1])
            return False
        return stays


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1: ``with ForwardProxy(auth=("u", "p")) as p``.

    ``connects``: "host:port" of every CONNECT; ``forwarded``: the request line of every
    absolute-form request forwarded; ``auth_seen``: the Proxy-Authorization of each
    CONNECT or request (None when absent). ``refuse_connect``: answer every CONNECT with
    this status.
    """

    def __init__(self, *, auth: tuple[str, str] | None = None, port: int = 0,
                 refuse_connect: int | None = None) -> None:
        self.port = port
        self.refuse_connect = refuse_connect
        self.connects: list[str] = []
        self.forwarded: list[str] = []
        self.auth_seen: list[str | None] = []
        self.expected = None if auth is None else "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ForwardProxy:
        """Listen (in a daemon thread); returns self once it accepts connections."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="forward-proxy", daemon=True)
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the server and every connection (tunnels too); join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port,
                                                  limit=CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        await asyncio.sleep(0.01)  # let the aborted transports close their sockets

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await _Connection(self, reader, writer).serve()
        except asyncio.CancelledError:  # stop(): end normally (3.11 logs cancelled ones)
            pass
        finally:
            self._tasks.discard(task)

    async def open(self, host: str, port: int) -> Upstream:
        """A connection to ``host:port``, closed at stop() at the latest."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=CHUNK), 10)
        self._writers.add(writer)
        return reader, writer

    def drop(self, writer: asyncio.StreamWriter) -> None:
        """Close a connection (idempotent)."""
        self._writers.discard(writer)
        with contextlib.suppress(Exception):
            writer.close()
