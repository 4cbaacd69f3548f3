"""A small, fast OpenAI-compatible server for tests, demos and benchmarks.

A raw ``asyncio.Protocol`` speaking just enough HTTP/1.1 (keep-alive, Content-Length) to
serve ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` at tens of thousands
of requests per second on one core. Answers are derived from the request (``"echo: " +``
the last user message / the prompt), so a test can check that every row got its own answer.

Latency is fixed or a random range; faults are drawn per request by rate, seeded:
``429`` (with Retry-After), ``500``, ``503``, ``drop`` (close the connection), ``hang``
(never answer), ``malformed`` (a 200 whose body is not JSON), ``badgzip`` (a 200 marked
``Content-Encoding: gzip`` whose body is plain JSON) and ``badgzip_close`` (the same without
Content-Length, delimited by closing the connection). ``first_fault`` answers the first
request of each distinct prompt with one fault (e.g. every prompt's first attempt is a 429).
Provider mode (``rpm``, ``tpm``, ``quota``, ``ratelimit_headers``) acts like a paid provider:
token-bucket limits, rate-limit headers, a spent quota; see ``_provider``. A
``response_format`` gets JSON built from its schema, or the refusal of a server that does not
accept that form; faults ``badjson``/``notjson`` break such answers (see ``_structured``).
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson

from ._answers import (
    _MODELS,
    FAULTS,
    _error,
    _response,
    answer,
    echo_auth,
    fault_reply,
    fault_table,
    parse_head,
    prompt_of,
    request_doc,
)
from ._provider import RateLimits, arrive, header_style, limit_headers, provider_stats
from ._schemagen import Plan
from ._structured import FORMATS, SHAPE_FAULTS, accepted_formats, tally

__all__ = ["FAULTS", "MockServer", "MockState", "serve"]



class MockState:
    """Configuration and counters of one mock endpoint (shared by all its connections)."""

    def __init__(
        self,
        *,
        latency: float | tuple[float, float] = 0.0,
        faults: Mapping[str, float] | None = None,
        retry_after: float | None = 1.0,
        seed: int | None = 0,
        require_key: str | None = None,
        echo_auth: bool = False,
        script: list[str | None] | None = None,
        first_fault: str | None = None,
        name: str = "mock",
        rpm: float | None = None, tpm: float | None = None, window: float = 60.0,
        ratelimit_headers: str | None = None, quota: int | None = None,
        response_formats: tuple[str, ...] | str | None = FORMATS,
    ) -> None:
        faults = dict(faults or {})
        script = list(script or [])
        self._cumulative = fault_table(faults, [*script, first_fault])
        self.latency = latency
        self.faults = faults
        self.retry_after = retry_after
        self.require_key = require_key
        self.echo_auth = echo_auth
        self.name = name
        self.response_formats = accepted_formats(response_formats)  # None: ignore the field
        self.plans: dict[bytes, Plan] = {}  # compiled per distinct schema (see _structured)
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.auth_seen: Counter[str] = Counter()
        self.per_second: Counter[int] = Counter()  # requests by arrival second (unix time)
        self.arrivals: list[float] = []
        self.record_arrivals = False
        self.script = script
        self.first_fault = first_fault
        self.seen_prompts: set[str] = set()  # prompts already answered with first_fault
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections: set[asyncio.BaseTransport] = set()
        # provider mode (see _provider): token-bucket limits, rate-limit headers, a quota
        self.ratelimit_headers = header_style(rpm, tpm, window, ratelimit_headers, quota)
        self.quota = quota
        self.provider = any(x is not None for x in (rpm, tpm, ratelimit_headers, quota))
        self.limits = RateLimits.of(rpm, tpm, window)
        self.tokens_by_second: Counter[int] = Counter()  # admitted tokens by arrival second
        self.admitted: list[tuple[float, int]] = []  # (arrival, tokens) with record_arrivals

    def delay(self) -> float:
        lat = self.latency
        if isinstance(lat, tuple):
            return self.rng.uniform(lat[0], lat[1])
        return lat

    def draw(self, path: bytes, body: bytes) -> tuple[str | None, Any]:
        """The fault for one request (``first_fault`` for a new prompt, else ``fault()``)
        and the request if parsing it was needed."""
        doc: Any = None
        if self.first_fault is not None:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
            prompt = prompt_of(path, doc)
            if prompt is not None and prompt not in self.seen_prompts:
                self.seen_prompts.add(prompt)
                return self.first_fault, doc
        return self.fault(), doc

    def fault(self) -> str | None:
        if self.script:
            return self.script.pop(0)
        if not self._cumulative:
            return None
        x = self.rng.random()
        for edge, kind in self._cumulative:
            if x < edge:
                return kind
        return None

    def stats(self) -> dict[str, Any]:
        out = {"name": self.name, "counts": dict(self.counts),
               "per_second": {str(k): v for k, v in sorted(self.per_second.items())},
               "max_in_flight": self.max_in_flight}
        if self.provider:
            out["provider"] = provider_stats(self)
        return out


class _Protocol(asyncio.Protocol):
    __slots__ = ("buf", "closed", "closing", "state", "transport")

    def __init__(self, state: MockState) -> None:
        self.state = state
        self.buf = bytearray()
        self.closed = False
        self.closing = False  # a close-delimited answer is pending: read no more requests
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while not self.closing:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._send(_error(400, "headers too large"))
                    self.transport.close()  # type: ignore[union-attr]
                return
            try:
                method, path, length, auth, chunked = parse_head(bytes(buf[:end]))
            except ValueError:
                self._send(_error(400, "bad request line"))
                self.transport.close()  # type: ignore[union-attr]
                return
            if chunked:
                self._send(_error(411, "chunked bodies are not supported; send Content-Length"))
                self.transport.close()  # type: ignore[union-attr]
                return
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4:total])
            del buf[:total]
            self.handle(method, path, auth, body)

    def _send(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def handle(self, method: bytes, path: bytes, auth: str | None, body: bytes) -> None:
        state = self.state
        if method == b"GET":
            if path.endswith(b"/models"):
                self._send(_response(200, _MODELS))
            elif path.endswith(b"/_stats"):
                self._send(_response(200, orjson.dumps(state.stats())))
            else:
                self._send(_error(404, "not found"))
            return
        if method != b"POST":
            self._send(_error(405, "method not allowed"))
            return
        self._post(path, auth, body)

    def _post(self, path: bytes, auth: str | None, body: bytes) -> None:
        state = self.state
        counts = state.counts
        counts["requests"] += 1
        now = time.time()
        state.per_second[int(now)] += 1
        if state.record_arrivals:
            state.arrivals.append(now)
        if auth is not None:
            state.auth_seen[auth] += 1
        if state.require_key is not None and auth != f"Bearer {state.require_key}":
            counts["401"] += 1
            message = "invalid api key"
            if state.echo_auth:
                message += f" (got Authorization: {auth})"
            self._send(_error(401, message))
            return
        payload, provider_doc = b"", None
        if state.provider:
            reply, payload, provider_doc = arrive(state, path, body, now, auth)
            if reply is not None:
                self._later(reply)
                return
        fault, doc = state.draw(path, body)
        if fault is not None and fault not in SHAPE_FAULTS:  # shape faults shape the answer
            counts[fault] += 1
            self._fault(fault, auth)
            return
        status = 200
        if state.provider:  # answered at arrival (and admitted); a shape fault answers anew
            doc = provider_doc
            if fault is not None:
                status, payload, _ = answer(path, doc, state, fault)
        else:
            doc, problem = request_doc(body, doc)
            if problem is not None:
                counts["400"] += 1
                self._send(_error(400, problem))
                return
            echo_auth(doc, state, auth)
            status, payload, tokens = answer(path, doc, state, fault)
            if status == 200 and state.record_arrivals:
                state.admitted.append((now, tokens))
        tally(state, status, doc, fault)
        extra = limit_headers(state, now) if state.provider else b""
        self._later(_response(status, payload, extra))

    def _later(self, data: bytes, close: bool = False) -> None:
        """Send ``data`` after the configured latency (then close the connection if asked)."""
        state = self.state
        if close:
            self.closing = True
        delay = state.delay()
        if delay <= 0:
            self._send_later(data, close, counted=False)
            return
        state.in_flight += 1
        if state.in_flight > state.max_in_flight:
            state.max_in_flight = state.in_flight
        asyncio.get_running_loop().call_later(delay, self._send_later, data, close)

    def _send_later(self, data: bytes, close: bool = False, counted: bool = True) -> None:
        if counted:
            self.state.in_flight -= 1
        self._send(data)
        if close and not self.closed:
            self.transport.close()  # type: ignore[union-attr]  # flushes, then closes

    def _fault(self, fault: str, auth: str | None) -> None:
        if fault == "hang":
            return
        if fault == "drop":
            self.transport.abort()  # type: ignore[union-attr]
            return
        reply, close = fault_reply(fault, self.state, auth)
        self._later(reply, close=close)


async def serve(state: MockState, host: str = "127.0.0.1", port: int = 0,
                sock: socket.socket | None = None,
                ssl_context: ssl.SSLContext | None = None) -> asyncio.AbstractServer:
    """Start serving ``state`` on the running loop; returns the asyncio server."""
    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(lambda: _Protocol(state), sock=sock, backlog=4096,
                                        ssl=ssl_context)
    return await loop.create_server(lambda: _Protocol(state), host, port, backlog=4096,
                                    reuse_address=True, ssl=ssl_context)


class MockServer:
    """A mock OpenAI-compatible endpoint on 127.0.0.1, served from a background thread.

    >>> with MockServer(latency=0.05) as srv:  # doctest: +SKIP
    ...     srv.url          # 'http://127.0.0.1:PORT/v1'
    ...     srv.counts       # Counter({'requests': ..., 'ok': ..., '429': ...})

    Options: ``latency`` (seconds, or a ``(low, high)`` range), ``faults`` (``{"429": 0.1,
    "drop": 0.01, ...}``), ``script`` (faults for the first requests in order, ``None`` for a
    normal answer, e.g. ``["429", None, "500"]``), ``first_fault`` (the fault answered to the
    first request of each distinct prompt; later ones go on as usual), ``retry_after``
    (seconds, sent verbatim with 429s), ``seed``, ``require_key``
    (answer 401 unless ``Authorization: Bearer <key>``), ``echo_auth`` (echo the
    Authorization header in error bodies, as some misbehaving servers do), ``port`` (0 picks
    a free one). Provider mode: ``rpm``/``tpm`` (limits per minute; buckets hold ``window``
    seconds' worth), ``ratelimit_headers`` (``openai``/``anthropic``), ``quota``.
    Structured output: ``response_formats`` (the forms accepted, ``("json_schema",
    "json_object")`` by default, or ``"json_object"``; None ignores ``response_format``).
    """

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1",
                 ssl_context: ssl.SSLContext | None = None, **options: Any) -> None:
        self.state = MockState(**options)
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/v1"

    @property
    def counts(self) -> Counter[str]:
        return self.state.counts

    @property
    def auth_seen(self) -> Counter[str]:
        return self.state.auth_seen

    def start(self) -> MockServer:
        from .._runner import new_event_loop

        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    serve(self.state, self.host, self.port, ssl_context=self.ssl_context))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                loop.run_until_complete(self._server.wait_closed())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"mock-{self.state.name}", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving: open connections are closed, hanging requests are dropped."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for transport in list(self.state.connections):
                transport.abort()
            loop.stop()

        loop.call_soon_threadsafe(shutdown)
        thread.join(5)

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
