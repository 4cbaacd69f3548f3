"""``FastTransport``: HTTP/1.1 POSTs on a raw ``asyncio.Protocol`` with a keep-alive pool.

It writes each request with one ``write`` and parses only what it needs (status, headers,
Content-Length or chunked body, gzip). Measured here it costs a fraction of aiohttp's
per-request CPU, which is what makes thousands of requests per second per core possible.
Every failure leaves it as a :class:`~llmframe._transport.TransportError`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ._proxy import Proxy
from ._tls import client_context, explain
from ._transport import Response, Transport, TransportError, proxy_refused

__all__ = ["FastTransport"]

_STALE_AFTER = 1.0  # seconds idle after which a dead pooled connection is unsurprising


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: a single outstanding request at a time."""

    __slots__ = ("buf", "chunk_pos", "chunks", "closed", "got_bytes", "head", "idle_since",
                 "length", "status", "transport", "waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, dict[str, str], bytes, bool]] | None = None
        self.buf = bytearray()
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.got_bytes = False
        self.status = 0
        self.head: dict[str, str] | None = None
        self.length = -1  # -1: until close, -2: chunked, else Content-Length
        self.chunks: list[bytes] = []
        self.chunk_pos = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, waiter: asyncio.Future[Any]) -> None:
        self._reset()
        self.buf.clear()
        self.waiter = waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.head is not None and self.length == -1:  # body delimited by close
            self._finish(bytes(self.buf), keep=False)
            return
        waiter.set_exception(TransportError("protocol", (
            "connection closed before the response was complete"
            if self.got_bytes else "connection closed by the server without a response")))

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.transport.abort()  # type: ignore[union-attr] - bytes nobody asked for
            return
        self.got_bytes = True
        self.buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self.waiter.set_exception(
                TransportError("protocol", f"malformed HTTP response: {exc}"))
            self.transport.abort()  # type: ignore[union-attr]

    def _parse(self) -> None:
        buf = self.buf
        while self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 1 << 16:
                    msg = "response headers larger than 64 KiB"
                    raise ValueError(msg)
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[:end + 4]
            version, status = lines[0].split(" ", 2)[:2]
            if not version.startswith("HTTP/1."):
                msg = f"unsupported status line {lines[0][:40]!r}"
                raise ValueError(msg)
            code = int(status)
            if 100 <= code < 200:
                continue  # interim response: the real one follows
            head: dict[str, str] = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                head[key.strip().lower()] = value.strip()
            self.status = code
            self.head = head
            if version == "HTTP/1.0" and head.get("connection", "").lower() != "keep-alive":
                head["connection"] = "close"
            if "chunked" in head.get("transfer-encoding", "").lower():
                self.length = -2
            elif "content-length" in head:
                self.length = int(head["content-length"])
            elif code in (204, 304):
                self.length = 0
        if self.length >= 0:
            if len(buf) >= self.length:
                body = bytes(buf[:self.length])
                extra = len(buf) > self.length
                del buf[:self.length]
                self._finish(body, keep=not extra)
        elif self.length == -2:
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            size = int(bytes(buf[:eol]).split(b";", 1)[0].strip(), 16)
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # optional trailers, then a blank line
                if end < 0 and buf[eol + 2:eol + 4] != b"\r\n":
                    return
                cut = end + 4 if end >= 0 else eol + 4
                del buf[:cut]
                self._finish(b"".join(self.chunks), keep=not buf)
                return
            if len(buf) < eol + 2 + size + 2:
                return
            self.chunks.append(bytes(buf[eol + 2:eol + 2 + size]))
            del buf[:eol + 2 + size + 2]

    def _finish(self, body: bytes, keep: bool) -> None:
        head = self.head or {}
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if head.get("content-encoding", "").lower() in ("gzip", "deflate"):
            try:
                body = zlib.decompress(body, 47)  # 47: accept gzip and zlib headers
            except zlib.error as exc:
                # called from data_received or connection_lost: raising here would escape
                # into the loop and leave the request waiting for its timeout
                waiter.set_exception(TransportError(
                    "decode", f"the body says {head['content-encoding']} but is not ({exc})"))
                if self.transport is not None:
                    self.transport.abort()
                return
        keep = keep and head.get("connection", "").lower() != "close" and not self.closed
        waiter.set_result((self.status, head, body, keep))


class _Tunnel(asyncio.Protocol):
    """The proxy's answer to ``CONNECT``: ``reply`` gets ``(status, reason)``."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[tuple[int, str]] = (
            asyncio.get_running_loop().create_future())
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if self.reply.done() or (end < 0 and len(self.buf) < 1 << 16):
            return
        line = bytes(self.buf[:self.buf.find(b"\r\n")]).decode("latin-1")
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version.startswith("HTTP/1.") and code.isdigit():
            self.reply.set_result((int(code), reason.strip()))
        else:
            self.reply.set_exception(TransportError(
                "protocol", f"the proxy answered CONNECT with {line[:60]!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(TransportError(
                "connect", "the proxy closed the connection before answering CONNECT"))


def _connect_request(authority: str, proxy: Proxy) -> bytes:
    """``CONNECT host:port``, with the proxy's credentials if it has some.

    >>> from llmframe._proxy import parse_proxy
    >>> proxy = parse_proxy("http://u:p@proxy:3128", "x")
    >>> for line in _connect_request("api.example.com:443", proxy).split(b"\\r\\n")[:3]:
    ...     print(line.decode())
    CONNECT api.example.com:443 HTTP/1.1
    Host: api.example.com:443
    Proxy-Authorization: Basic dTpw
    """
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.auth:
        lines.append(f"Proxy-Authorization: {proxy.auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class FastTransport(Transport):
    """HTTP/1.1 POSTs to one URL over a pool of keep-alive connections.

    A request that fails on a connection that sat idle for a second or more, before any
    byte of response arrives (the server closed it while idle: a keep-alive timeout), is
    sent again once on a fresh connection, as HTTP clients conventionally do. Any other
    failure is the attempt's failure, for the retry policy to judge.
    """

    __slots__ = (
        "_addrs",
        "_all",
        "_head",
        "_host",
        "_idle",
        "_loop",
        "_port",
        "_proxy",
        "_server_hostname",
        "_ssl",
        "_tunnel",
    )

    def __init__(self, url: str, headers: Mapping[str, str], *,
                 ssl_context: ssl.SSLContext | None = None, proxy: Proxy | None = None) -> None:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if https else 80)
        self._ssl = (ssl_context or client_context()) if https else None
        self._server_hostname = self._host if https else None
        default_port = self._port == (443 if https else 80)
        host = self._host if default_port else f"{self._host}:{self._port}"
        if ":" in self._host:  # IPv6 literal
            host = f"[{self._host}]" if default_port else f"[{self._host}]:{self._port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._proxy = proxy
        self._tunnel = b""  # the CONNECT request, for https through a proxy
        lines = []
        if proxy is not None and https:
            self._tunnel = _connect_request(host if not default_port else f"{host}:443",
                                            proxy)
        elif proxy is not None:  # http through a proxy: absolute-form, credentials to it
            target = f"http://{host}{target}"
            lines = [f"Proxy-Authorization: {proxy.auth}"] if proxy.auth else []
        lines = [f"POST {target} HTTP/1.1", f"Host: {host}", "Accept: application/json",
                 "Accept-Encoding: gzip, identity", "Connection: keep-alive", *lines]
        lines += [f"{k}: {v}" for k, v in headers.items()
                  if k.lower() not in ("host", "content-length", "connection")]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._loop = asyncio.get_running_loop()
        self._addrs: list[str] = []

    async def _connect(self) -> _Conn:
        # Resolve the host (the proxy's, with one) once per run, not once per connection:
        # a 1 s-latency run opens ~10,000; and remember which address answered
        # ("localhost" may list ::1 first while the server only listens on 127.0.0.1).
        proxy = self._proxy
        host, port = (proxy.host, proxy.port) if proxy else (self._host, self._port)
        via = f"proxy {proxy}" if proxy else host
        if not self._addrs:
            try:
                infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise TransportError("connect", f"cannot resolve {via}: {exc}") from None
            self._addrs = list(dict.fromkeys(info[4][0] for info in infos))
        error: OSError | None = None
        for addr in list(self._addrs):
            try:
                if self._tunnel:
                    conn = await self._open_tunnel(addr, port)
                else:
                    _, conn = await self._loop.create_connection(
                        _Conn, addr, port, ssl=self._ssl,
                        server_hostname=self._server_hostname)
            except ssl.SSLError as exc:  # a certificate problem: no other address fixes it
                raise TransportError("tls", explain(exc, self._host)) from None
            except OSError as exc:
                error = exc
                continue
            if addr != self._addrs[0]:
                self._addrs.remove(addr)
                self._addrs.insert(0, addr)
            self._all.add(conn)
            return conn
        assert error is not None
        prefix = f"cannot connect to proxy {proxy}: " if proxy else ""
        raise TransportError("connect", f"{prefix}{type(error).__name__}: {error}")

    async def _open_tunnel(self, addr: str, port: int) -> _Conn:
        """A TLS connection to the endpoint through the proxy at ``addr``: ``CONNECT``,
        then the handshake inside the tunnel."""
        raw, tunnel = await self._loop.create_connection(_Tunnel, addr, port)
        try:
            raw.write(self._tunnel)
            status, reason = await tunnel.reply
            if status != 200:
                raise proxy_refused(self._proxy, status, reason,  # type: ignore[arg-type]
                                    f"{self._host}:{self._port}")
            conn = _Conn()
            tls = await self._loop.start_tls(raw, conn, self._ssl,  # type: ignore[arg-type]
                                             server_hostname=self._host)
        except BaseException:
            raw.abort()
            raise
        conn.connection_made(tls)  # type: ignore[arg-type]
        return conn

    async def post(self, body: bytes) -> Response:
        data = b"".join((self._head, str(len(body)).encode(), b"\r\n\r\n", body))
        idle = self._idle
        for attempt in (0, 1):
            conn = None
            while idle:
                candidate = idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
                self._all.discard(candidate)
            stale_risk = conn is not None and self._loop.time() - conn.idle_since >= _STALE_AFTER
            if conn is None:
                conn = await self._connect()
            waiter = self._loop.create_future()
            conn.start(waiter)
            conn.transport.write(data)  # type: ignore[union-attr]
            try:
                status, head, payload, keep = await waiter
            except TransportError:
                self._drop(conn)
                if stale_risk and not conn.got_bytes and attempt == 0:
                    continue
                raise
            except BaseException:
                self._drop(conn)  # cancelled (timeout) or failed mid-response: not reusable
                raise
            if keep:
                conn.idle_since = self._loop.time()
                idle.append(conn)
            else:
                self._drop(conn)
            if status == 407 and self._proxy is not None:
                raise proxy_refused(self._proxy, status, "Proxy Authentication Required", "")
            return status, head, payload
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self, conn: _Conn) -> None:
        self._all.discard(conn)
        if conn.transport is not None and not conn.closed:
            conn.transport.abort()

    async def close(self) -> None:
        for conn in list(self._all):
            self._drop(conn)
        self._idle.clear()
