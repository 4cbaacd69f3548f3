"""``FastTransport``: HTTP/1.1 POSTs on a raw ``asyncio.Protocol`` with a keep-alive pool.

It writes each request with one ``write`` and parses only what it needs (status, headers,
Content-Length or chunked body, gzip: ``_conn.Conn``). Measured here it costs a fraction of
aiohttp's per-request CPU, which is what makes thousands of requests per second per core
possible. https runs TLS inside the connection itself (``_fasttls.TLSConn``), resuming the
endpoint's TLS session on new connections. Through a proxy: ``CONNECT`` then TLS in the
tunnel for https, absolute-form requests for http. Every failure leaves it as a
:class:`~llmframe._transport.TransportError`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from ._conn import Conn
from ._fasttls import TLSConn
from ._proxy import Proxy
from ._tls import client_context
from ._transport import Response, Transport, TransportError, proxy_refused

__all__ = ["FastTransport"]

_STALE_AFTER = 1.0  # seconds idle after which a dead pooled connection is unsurprising


class _Tunnel(asyncio.Protocol):
    """The proxy's answer to ``CONNECT``: ``reply`` gets ``(status, reason)``."""

    def __init__(self, proxy: Proxy) -> None:
        self.reply: asyncio.Future[tuple[int, str]] = (
            asyncio.get_running_loop().create_future())
        self.buf = bytearray()
        self.proxy = proxy

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
                "protocol", f"proxy {self.proxy} is not an HTTP proxy: it answered CONNECT "
                f"with {line[:60]!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(TransportError(
                "connect", f"proxy {self.proxy} closed the connection before answering "
                "CONNECT"))


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


def _request_head(url: str, headers: Mapping[str, str],
                  proxy: Proxy | None) -> tuple[bytes, bytes]:
    """The head of every request to ``url`` up to its Content-Length value, and the
    ``CONNECT`` request when it goes through ``proxy`` over https (else b"")."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    hostname, port = parts.hostname or "", parts.port or (443 if https else 80)
    default_port = port == (443 if https else 80)
    host = f"[{hostname}]" if ":" in hostname else hostname  # IPv6 literal
    authority = f"{host}:{port}"
    host = host if default_port else authority
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    tunnel, lines = b"", []
    if proxy is not None and https:
        tunnel = _connect_request(authority, proxy)
    elif proxy is not None:  # http through a proxy: absolute-form, credentials to it
        target = f"http://{host}{target}"
        lines = [f"Proxy-Authorization: {proxy.auth}"] if proxy.auth else []
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}", "Accept: application/json",
             "Accept-Encoding: gzip, identity", "Connection: keep-alive", *lines]
    lines += [f"{k}: {v}" for k, v in headers.items()
              if k.lower() not in ("host", "content-length", "connection")]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1"), tunnel


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
        "_session",
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
        self._proxy = proxy
        # the request head up to Content-Length; the CONNECT request (https via a proxy)
        self._head, self._tunnel = _request_head(url, headers, proxy)
        self._idle: list[Conn] = []
        self._all: set[Conn] = set()
        self._loop = asyncio.get_running_loop()
        self._addrs: list[str] = []
        self._session: ssl.SSLSession | None = None  # the latest TLS session, to resume

    async def _connect(self) -> Conn:
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
                elif self._ssl is not None:
                    _, conn = await self._loop.create_connection(self._tls_conn, addr, port)
                    await self._handshake(conn)
                else:
                    _, conn = await self._loop.create_connection(Conn, addr, port)
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

    def _tls_conn(self) -> TLSConn:
        return TLSConn(self._ssl, self._host, self._session)  # type: ignore[arg-type]

    def _keep_session(self, conn: TLSConn) -> None:
        """After a connection's first answer (TLS 1.3 tickets come after the handshake)."""
        conn.fresh = False
        self._session = conn.tls.session or self._session

    async def _handshake(self, conn: TLSConn) -> None:
        try:
            await conn.ready
        except BaseException:
            conn.transport.abort()  # type: ignore[union-attr]
            raise

    async def _open_tunnel(self, addr: str, port: int) -> Conn:
        """A TLS connection to the endpoint through the proxy at ``addr``: ``CONNECT``,
        then the handshake inside the tunnel."""
        raw, tunnel = await self._loop.create_connection(
            lambda: _Tunnel(self._proxy), addr, port)  # type: ignore[arg-type]
        try:
            raw.write(self._tunnel)
            status, reason = await tunnel.reply
            if status != 200:
                raise proxy_refused(self._proxy, status, reason,  # type: ignore[arg-type]
                                    f"{self._host}:{self._port}")
        except BaseException:
            raw.abort()
            raise
        conn = self._tls_conn()
        raw.set_protocol(conn)
        conn.connection_made(raw)  # the handshake starts inside the tunnel
        await self._handshake(conn)
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
            conn.send(data)
            try:
                status, head, payload, keep = await waiter
            except TransportError as exc:
                self._drop(conn)
                if stale_risk and not conn.got_bytes and attempt == 0:
                    continue
                if self._proxy is None or self._tunnel:
                    raise
                raise TransportError(exc.kind, f"{exc} (via proxy {self._proxy})") from None
            except BaseException:
                self._drop(conn)  # cancelled (timeout) or failed mid-response: not reusable
                raise
            if self._ssl is not None and conn.fresh:  # type: ignore[attr-defined]
                self._keep_session(conn)  # type: ignore[arg-type]
            if keep:
                conn.idle_since = self._loop.time()
                idle.append(conn)
            else:
                self._drop(conn)
            if status == 407 and self._proxy is not None:
                raise proxy_refused(self._proxy, status, "Proxy Authentication Required", "")
            return status, head, payload
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self, conn: Conn) -> None:
        self._all.discard(conn)
        if conn.transport is not None and not conn.closed:
            conn.transport.abort()

    async def close(self) -> None:
        for conn in list(self._all):
            self._drop(conn)
        self._idle.clear()
