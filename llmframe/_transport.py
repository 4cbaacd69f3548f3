"""The network seam: ``post(body) -> (status, headers, body)``, or one :class:`TransportError`.

Every transport owns its resources (connection pool, session) and maps its own low-level
exceptions to ``TransportError(kind)``, with ``kind`` one of:

- ``connect``: the connection could not be made (refused, DNS);
- ``tls``: the server's certificate failed verification (the message says why and what
  to do; not worth retrying);
- ``proxy``: the proxy refused the request (407: credentials missing or wrong; 403: its
  policy); not worth retrying. A proxy that cannot reach the endpoint (502-504) or
  cannot be reached is ``connect``;
- ``timeout``: the transport's own timeout fired;
- ``protocol``: the server broke HTTP or closed the connection mid-response;
- ``decode``: the body could not be decoded (a ``Content-Encoding`` that lies).

So the engine never catches aiohttp, OSError or zlib errors itself (the model is httpx's
``map_httpcore_exceptions``). Transports:

- ``FastTransport`` (``_fasthttp``): a small HTTP/1.1 client on a raw ``asyncio.Protocol``;
  the default for ``http://`` and ``https://`` (TLS from ``_tls.client_context``).
- ``AiohttpTransport``: aiohttp's client, with a session of its own built only when an
  endpoint asks for it (``transport="aiohttp"``).
- ``MockTransport(handler)``: calls ``handler(body)``; for engine tests without sockets.

All are created inside a run (they hold loop-bound objects) and closed at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from ._proxy import Proxy
from ._tls import client_context, explain

__all__ = ["AiohttpTransport", "MockTransport", "Response", "Transport", "TransportError",
           "open_transport", "proxy_refused"]

Response = tuple[int, Mapping[str, str], bytes]
Kind = Literal["connect", "tls", "proxy", "timeout", "protocol", "decode"]


class TransportError(Exception):
    """A request that got no usable HTTP response; ``kind`` says why (see the module)."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def proxy_refused(proxy: Proxy, status: int, reason: str, target: str) -> TransportError:
    """The error for a proxy that answered ``status`` instead of forwarding to ``target``.

    >>> from llmframe._proxy import parse_proxy
    >>> err = proxy_refused(parse_proxy("http://me:pw@p:3128", "x"), 407, "", "h:443")
    >>> err.kind, str(err)[:73]
    ('proxy', 'proxy http://me:***@p:3128 asks for authentication (407): it refused the ')
    """
    said = f"{status} {reason}".strip()
    if status == 407:
        remedy = ("it refused the user name and password in its URL" if proxy.auth else
                  "give a user name and password in its URL, "
                  "http://USER:PASSWORD@HOST:PORT (HTTPS_PROXY, HTTP_PROXY or --proxy)")
        return TransportError("proxy", f"proxy {proxy} asks for authentication ({said}): "
                              f"{remedy}")
    if status in (502, 503, 504):
        return TransportError("connect", f"proxy {proxy} could not reach {target} ({said})")
    return TransportError("proxy", f"proxy {proxy} refused to connect to {target} ({said})")


class Transport:
    """POST bodies to one URL."""

    async def post(self, body: bytes) -> Response:  # pragma: no cover - interface
        raise NotImplementedError

    async def close(self) -> None:
        return None


class MockTransport(Transport):
    """A transport that answers with ``handler(body)`` (a function or a coroutine function).

    The handler returns ``(status, headers, body)`` or raises ``TransportError``.

    >>> t = MockTransport(lambda body: (200, {}, b"{}"))
    >>> asyncio.run(t.post(b"{}"))
    (200, {}, b'{}')
    """

    def __init__(self, handler: Callable[[bytes], Response | Awaitable[Response]]) -> None:
        self.handler = handler
        self.requests: list[bytes] = []

    async def post(self, body: bytes) -> Response:
        self.requests.append(body)
        out = self.handler(body)
        if inspect.isawaitable(out):
            out = await out
        return out  # type: ignore[return-value]


@contextlib.contextmanager
def map_aiohttp_errors(proxy: Proxy | None = None, target: str = "") -> Iterator[None]:
    """aiohttp's and the socket's exceptions, as :class:`TransportError`."""
    try:
        yield
    except aiohttp.ClientConnectorCertificateError as exc:
        raise TransportError("tls", explain(exc.certificate_error, exc.host)) from None
    except aiohttp.ClientHttpProxyError as exc:  # CONNECT refused
        if proxy is None:
            raise
        raise proxy_refused(proxy, exc.status, exc.message, target) from None
    except aiohttp.ClientProxyConnectionError as exc:
        raise TransportError("connect", f"cannot connect to proxy {proxy}: {exc.os_error}"
                             ) from None
    except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError) as exc:
        raise TransportError("connect", f"{type(exc).__name__}: {exc}") from None
    except aiohttp.ClientPayloadError as exc:
        raise TransportError("decode", f"cannot decode the body ({exc})") from None
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise TransportError("timeout", f"{type(exc).__name__}: {exc}") from None
    except aiohttp.ClientError as exc:
        raise TransportError("protocol", f"{type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise TransportError("connect", f"{type(exc).__name__}: {exc}") from None


class AiohttpTransport(Transport):
    """aiohttp's client with a session of its own (built inside the running loop)."""

    __slots__ = ("headers", "proxy", "proxy_headers", "proxy_url", "session", "target", "url")

    def __init__(self, url: str, headers: Mapping[str, str], *, limit: int = 256,
                 ssl_context: Any = None, proxy: Proxy | None = None) -> None:
        self.url = url
        self.headers = dict(headers)
        self.proxy = proxy
        self.proxy_url = None if proxy is None else f"http://{_authority(proxy)}"
        self.proxy_headers = None  # credentials: to CONNECT for https, in the request for http
        if proxy is not None and proxy.auth and url.startswith("https://"):
            self.proxy_headers = {"Proxy-Authorization": proxy.auth}
        elif proxy is not None and proxy.auth:
            self.headers["Proxy-Authorization"] = proxy.auth
        self.target = urlsplit(url).netloc.rpartition("@")[2]
        # our context, built now: SSL_CERT_FILE/DIR as they are at run time, ALPN http/1.1
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=None,
                                         ssl=ssl_context or client_context())
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), trust_env=False)

    async def post(self, body: bytes) -> Response:
        with map_aiohttp_errors(self.proxy, self.target):
            async with self.session.post(self.url, data=body, headers=self.headers,
                                         proxy=self.proxy_url,
                                         proxy_headers=self.proxy_headers) as resp:
                data = await resp.read()
        if resp.status == 407 and self.proxy is not None:  # http:// through the proxy
            raise proxy_refused(self.proxy, 407, resp.reason or "", self.target)
        return resp.status, resp.headers, data

    async def close(self) -> None:
        await self.session.close()


def _authority(proxy: Proxy) -> str:
    return f"[{proxy.host}]:{proxy.port}" if ":" in proxy.host else f"{proxy.host}:{proxy.port}"


def open_transport(url: str, headers: Mapping[str, str],
                   kind: str | Callable[[str, Mapping[str, str]], Transport], *,
                   limit: int = 256, ssl_context: Any = None,
                   proxy: Proxy | None = None) -> Transport:
    """The transport for ``url``: ``kind`` is ``auto`` or ``fast`` (the fast HTTP/1.1
    client, http:// and https://), ``aiohttp``, or a function ``(url, headers) ->
    Transport``; through ``proxy`` when one is given (CONNECT for https, absolute-form
    requests for http)."""
    from ._fasthttp import FastTransport

    if callable(kind):
        return kind(url, headers)
    if kind in ("auto", "fast"):
        return FastTransport(url, headers, ssl_context=ssl_context, proxy=proxy)
    return AiohttpTransport(url, headers, limit=limit, ssl_context=ssl_context, proxy=proxy)

