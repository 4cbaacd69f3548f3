"""One HTTP/1.1 connection of the fast transport: an ``asyncio.Protocol`` that parses the
response to the one request in flight (status, headers, Content-Length or chunked body,
gzip) and hands it to the waiting request. ``_fasttls.TLSConn`` is the same over TLS."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from ._transport import TransportError

__all__ = ["Conn"]


class Conn(asyncio.Protocol):
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

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

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
            version, _, status = lines[0].partition(" ")
            status = status.partition(" ")[0]
            if not version.startswith("HTTP/1.") or not status.isdigit():
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
