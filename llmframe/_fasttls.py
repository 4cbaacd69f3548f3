"""TLS inside the fast transport's own protocol: an ``ssl.SSLObject`` over memory BIOs.

asyncio's (and uvloop's) TLS layer is a general-purpose protocol between the socket and
ours: flow control, a state machine and buffer hand-offs on every record. At a 1 s latency
and 10,000 requests/s each connection carries one small request and one small answer a
second, so that per-record machinery is most of what https costs over http. Here the
connection feeds the socket's bytes to OpenSSL and parses what comes out itself: one
``write`` into the incoming BIO and one ``read`` out per arrival, one ``write`` per request.
The handshake, SNI, hostname verification and ALPN are OpenSSL's, from the context.

A new connection resumes the TLS session of an earlier one to the same endpoint when it
can (``session``): parsing and verifying the certificate chain is about half of a full
handshake's client CPU with OpenSSL 3, and a 1 s-latency run opens ~13,500 connections. A
server that does not take the ticket simply does a full handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from ._conn import Conn
from ._tls import explain
from ._transport import TransportError

__all__ = ["TLSConn"]

_READ = 1 << 17


class TLSConn(Conn):
    """An HTTP/1.1 connection over TLS; ``ready`` resolves when the handshake is done."""

    __slots__ = ("fresh", "host", "incoming", "outgoing", "ready", "tls")

    def __init__(self, context: ssl.SSLContext, host: str,
                 session: ssl.SSLSession | None = None) -> None:
        super().__init__()
        self.host = host
        self.fresh = True  # its session not yet offered for reuse
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=host,
                                    session=session)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._handshake()

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:  # a certificate problem, or not TLS at all
            self._fail(TransportError("tls", explain(exc, self.host)))
            return
        self._flush()
        if not self.ready.done():
            self.ready.set_result(None)

    def _fail(self, error: TransportError) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.transport.write(self.outgoing.read())  # type: ignore[union-attr]

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.transport.write(self.outgoing.read())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.ready.done():
            self._handshake()
            if not self.ready.done() or self.ready.exception() is not None:
                return
        plain: list[bytes] = []
        ending = False
        try:
            while True:
                chunk = self.tls.read(_READ)
                if not chunk:  # the server's close_notify: it is closing this connection
                    ending = True
                    break
                plain.append(chunk)
        except ssl.SSLWantReadError:
            pass  # all read
        except ssl.SSLZeroReturnError:
            ending = True
        except ssl.SSLError as exc:  # an alert from the server
            self._alert(exc)
            return
        self._flush()  # key updates and alerts OpenSSL answered while reading
        if plain:
            Conn.data_received(self, b"".join(plain) if len(plain) > 1 else plain[0])
        if ending:
            self._end()

    def _end(self) -> None:
        """Answer the server's close_notify and close: never reused (a server may hold the
        socket open until its peer says goodbye too)."""
        self.closed = True
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _alert(self, exc: ssl.SSLError) -> None:
        reason = str(getattr(exc, "reason", None) or exc)
        message = f"TLS: {self.host} ended the connection ({reason})"
        if "CERTIFICATE_REQUIRED" in reason.upper():
            message += ": it wants a client certificate: give client_cert= (and client_key=)"
        # a certificate the server wants or refuses stays so; other alerts may pass
        error = TransportError("tls" if "CERTIFICATE" in reason.upper() else "protocol",
                               message)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(TransportError(
                "connect", f"the connection to {self.host} closed during the TLS handshake"))
        waiter = self.waiter
        if self.fresh and not self.got_bytes and waiter is not None and not waiter.done():
            waiter.set_exception(TransportError("connect", (
                f"{self.host} closed the connection right after the TLS handshake, without "
                "a response (a server that wants a client certificate does this: give "
                "client_cert= and client_key=)")))
        Conn.connection_lost(self, exc)

