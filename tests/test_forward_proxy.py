"""The test suite's forward proxy (tests/forward_proxy.py) is a real one: absolute-form
requests and CONNECT tunnels reach a local HTTP server through it, with auth when asked."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from forward_proxy import ForwardProxy

TIMEOUT = 5.0
GOOD = "Basic " + base64.b64encode(b"user:pw").decode()


class _Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, body: bytes) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
            return
        if self.path == "/until-close":
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno framing")
            return
        out = json.dumps({"method": self.command, "path": self.path,
                          "body": body.decode(), "port": self.client_address[1],
                          "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_POST(self) -> None:
        self._reply(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def do_GET(self) -> None:
        self._reply(b"")


@pytest.fixture
def origin() -> Iterator[str]:
    """A local HTTP server answering with what it received, as JSON: its "host:port"."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    server.timeout = TIMEOUT
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(TIMEOUT)


def connect(proxy: ForwardProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)


def read_head(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """Status line, headers (lowercase names) and whatever body bytes came with them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return status, headers, rest


def read_answer(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One whole answer framed by Content-Length."""
    status, headers, body = read_head(sock)
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return status, headers, body


def read_to_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def post(target: str, body: bytes, *, auth: str | None = None, extra: str = "") -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: origin", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"Proxy-Authorization: {auth}"] if auth else []
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode() + body


def test_urllib_posts_through_the_proxy_in_absolute_form(origin, monkeypatch):
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with ForwardProxy() as proxy:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
        request = urllib.request.Request(f"http://{origin}/v1/chat/completions?x=1",
                                         data=b'{"q": 1}', method="POST")
        with opener.open(request, timeout=TIMEOUT) as answer:
            got = json.loads(answer.read())
    assert got["path"] == "/v1/chat/completions?x=1" and got["body"] == '{"q": 1}'
    assert proxy.forwarded == [f"POST http://{origin}/v1/chat/completions?x=1 HTTP/1.1"]
    assert proxy.connects == [] and proxy.auth_seen == [None]


def test_keep_alive_reuses_the_client_and_the_upstream_connection(origin):
    with ForwardProxy() as proxy, connect(proxy) as sock:
        ports = []
        for i in range(3):
            sock.sendall(post(f"http://{origin}/v1/x", json.dumps({"i": i}).encode(),
                              extra="Proxy-Connection: keep-alive\r\n"))
            status, _, body = read_answer(sock)
            got = json.loads(body)
            assert status == "HTTP/1.1 200 OK" and got["body"] == json.dumps({"i": i})
            assert "proxy-connection" not in got["headers"]
            ports.append(got["port"])
    assert len(set(ports)) == 1  # one upstream connection for the three
    assert len(proxy.forwarded) == 3


def test_chunked_and_unframed_answers_pass_through(origin):
    with ForwardProxy() as proxy, connect(proxy) as sock:
        sock.sendall(f"GET http://{origin}/chunked HTTP/1.1\r\nHost: o\r\n\r\n".encode())
        _, headers, rest = read_head(sock)
        end = b"0\r\nX-Trailer: t\r\n\r\n"
        while not rest.endswith(end):
            rest += sock.recv(65536)
        assert headers["transfer-encoding"] == "chunked"
        assert rest == b"5\r\nhello\r\n6;x=1\r\n world\r\n" + end
        sock.sendall(f"GET http://{origin}/x HTTP/1.1\r\nHost: o\r\n\r\n".encode())
        assert json.loads(read_answer(sock)[2])["path"] == "/x"  # still usable
        sock.sendall(f"GET http://{origin}/until-close HTTP/1.1\r\nHost: o\r\n\r\n".encode())
        assert read_to_close(sock).endswith(b"\r\n\r\nno framing")


def test_connect_opens_a_tunnel_of_plain_bytes(origin):
    with ForwardProxy() as proxy, connect(proxy) as sock:
        sock.sendall(f"CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode())
        status, _, rest = read_head(sock)
        assert status == "HTTP/1.1 200 Connection established" and rest == b""
        sock.sendall(post("/v1/chat/completions", b'{"through": "tunnel"}'))
        status, _, body = read_answer(sock)
        assert status == "HTTP/1.1 200 OK"
        assert json.loads(body)["body"] == '{"through": "tunnel"}'
    assert proxy.connects == [origin] and proxy.forwarded == [] and proxy.auth_seen == [None]


def test_auth_is_required_when_set(origin):
    with ForwardProxy(auth=("user", "pw")) as proxy:
        wrong = "Basic " + base64.b64encode(b"user:nope").decode()
        for auth in (None, wrong):
            with connect(proxy) as sock:
                extra = f"Proxy-Authorization: {auth}\r\n" if auth else ""
                sock.sendall(f"CONNECT {origin} HTTP/1.1\r\n{extra}\r\n".encode())
                status, headers, _ = read_head(sock)
                assert status == "HTTP/1.1 407 Proxy Authentication Required"
                assert headers["proxy-authenticate"] == 'Basic realm="test"'
                assert headers["content-length"] == "0"
        with connect(proxy) as sock:
            sock.sendall(f"CONNECT {origin} HTTP/1.1\r\nProxy-Authorization: {GOOD}\r\n\r\n"
                         .encode())
            assert read_head(sock)[0] == "HTTP/1.1 200 Connection established"
        with connect(proxy) as sock:
            sock.sendall(post(f"http://{origin}/a", b"{}"))
            assert read_answer(sock)[0] == "HTTP/1.1 407 Proxy Authentication Required"
            sock.sendall(post(f"http://{origin}/a", b"{}", auth=GOOD))  # same connection
            status, _, body = read_answer(sock)
            assert status == "HTTP/1.1 200 OK"
            assert "proxy-authorization" not in json.loads(body)["headers"]  # not passed on
    assert proxy.auth_seen == [None, wrong, GOOD, None, GOOD]
    assert proxy.connects == [origin] * 3
    assert proxy.forwarded == [f"POST http://{origin}/a HTTP/1.1"]


@pytest.mark.parametrize("status", [403, 502])
def test_refuse_connect(origin, status):
    with ForwardProxy(refuse_connect=status) as proxy, connect(proxy) as sock:
        sock.sendall(f"CONNECT {origin} HTTP/1.1\r\n\r\n".encode())
        assert read_head(sock)[0].startswith(f"HTTP/1.1 {status} ")
    assert proxy.connects == [origin]


def test_unreachable_targets_get_502():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    with ForwardProxy() as proxy:
        with connect(proxy) as sock:
            sock.sendall(f"CONNECT {closed} HTTP/1.1\r\n\r\n".encode())
            assert read_head(sock)[0] == "HTTP/1.1 502 Bad Gateway"
        with connect(proxy) as sock:
            sock.sendall(post(f"http://{closed}/v1", b"{}"))
            assert read_answer(sock)[0] == "HTTP/1.1 502 Bad Gateway"


@pytest.mark.parametrize("request_bytes", [
    b"garbage\r\n\r\n",
    b"GET /origin-form HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://h/ HTTP/1.1\r\nno colon here\r\n\r\n",
    b"CONNECT nowhere HTTP/1.1\r\n\r\n",
    b"GET http://h/ SPDY/3\r\n\r\n",
])
def test_malformed_requests_get_400_and_a_close(request_bytes):
    with ForwardProxy() as proxy, connect(proxy) as sock:
        sock.sendall(request_bytes)
        answer = read_to_close(sock)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer


def test_stop_does_not_hang_with_open_tunnels_and_connections(origin):
    proxy = ForwardProxy().start()
    socks = [connect(proxy) for _ in range(3)]
    try:
        for sock in socks[:2]:
            sock.sendall(f"CONNECT {origin} HTTP/1.1\r\n\r\n".encode())
            assert read_head(sock)[0].endswith("200 Connection established")
        socks[2].sendall(b"POST http://127.0.0.1:1/ HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 3
        for sock in socks:
            with contextlib.suppress(ConnectionResetError):
                assert read_to_close(sock) == b""
        proxy.stop()  # twice is fine
    finally:
        for sock in socks:
            sock.close()


def test_a_fixed_port_and_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ForwardProxy(port=port) as proxy:
        assert proxy.port == port and proxy.url == f"http://127.0.0.1:{port}"
