"""The mock server over raw HTTP: first-attempt faults, bad gzip answers, Retry-After."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from llmframe.testing import FAULTS, MockServer, MockState


def _conn(srv: MockServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)


def _post(conn: http.client.HTTPConnection, path: str,
          doc: dict[str, Any]) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn.request("POST", path, body=orjson.dumps(doc),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.headers, resp.read()


def _chat(prompt: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": prompt}]}


def _raw_exchange(port: int, path: str, doc: dict[str, Any]) -> bytes:
    """Send one request on a fresh socket and read until the server closes it."""
    body = orjson.dumps(doc)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body)
        chunks = []
        for _ in range(1000):  # bounded; a closed connection ends it with b""
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            pytest.fail("server did not close the connection")
    return b"".join(chunks)


def test_first_fault_answers_each_prompts_first_request_only(mock_server):
    srv = mock_server(first_fault="429", retry_after=3)
    conn = _conn(srv)
    status, headers, body = _post(conn, "/v1/chat/completions", _chat("a"))
    assert status == 429
    assert headers["Retry-After"] == "3"
    assert orjson.loads(body)["error"]["code"] == 429
    for _ in range(3):  # later attempts of the same prompt are answered normally
        status, _, body = _post(conn, "/v1/chat/completions", _chat("a"))
        assert status == 200
        assert orjson.loads(body)["choices"][0]["message"]["content"] == "echo: a"
    assert _post(conn, "/v1/chat/completions", _chat("b"))[0] == 429  # a new prompt
    assert _post(conn, "/v1/chat/completions", _chat("b"))[0] == 200
    # completions: the prompt is ``prompt``
    assert _post(conn, "/v1/completions", {"prompt": "c"})[0] == 429
    status, _, body = _post(conn, "/v1/completions", {"prompt": "c"})
    assert status == 200
    assert orjson.loads(body)["choices"][0]["text"] == "echo: c"
    conn.close()
    assert srv.counts["requests"] == 8
    assert srv.counts["429"] == 3
    assert srv.counts["ok"] == 5


def test_first_fault_can_be_any_fault_and_is_validated(mock_server):
    srv = mock_server(first_fault="503")
    conn = _conn(srv)
    assert _post(conn, "/v1/chat/completions", _chat("x"))[0] == 503
    assert _post(conn, "/v1/chat/completions", _chat("x"))[0] == 200
    conn.close()
    assert srv.counts["503"] == 1
    assert "badgzip" in FAULTS
    assert "badgzip_close" in FAULTS
    with pytest.raises(ValueError, match="unknown fault"):
        MockState(first_fault="quota")


def test_first_fault_leaves_bad_requests_to_the_usual_answers(mock_server):
    srv = mock_server(first_fault="429")
    conn = _conn(srv)
    conn.request("POST", "/v1/chat/completions", body=b"{not json",
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400
    resp.read()
    conn.close()
    assert srv.counts["429"] == 0


@pytest.mark.parametrize(("retry_after", "header"),
                         [(86400, "86400"), (86400.0, "86400"), (0.25, "0.25"), (3, "3")])
def test_retry_after_is_sent_verbatim(mock_server, retry_after, header):
    srv = mock_server(faults={"429": 1.0}, retry_after=retry_after)
    conn = _conn(srv)
    status, headers, _ = _post(conn, "/v1/chat/completions", _chat("a"))
    conn.close()
    assert status == 429
    assert headers["Retry-After"] == header


@pytest.mark.parametrize("latency", [0.0, 0.02])
def test_badgzip_is_a_sized_200_whose_body_is_not_gzip(mock_server, latency):
    srv = mock_server(script=["badgzip"], latency=latency)
    conn = _conn(srv)
    status, headers, body = _post(conn, "/v1/chat/completions", _chat("a"))
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(body)
    assert not body.startswith(b"\x1f\x8b")  # no gzip magic: plain JSON
    assert orjson.loads(body)["choices"][0]["message"]["content"]
    # the connection stays usable
    status, _, body = _post(conn, "/v1/chat/completions", _chat("a"))
    conn.close()
    assert status == 200
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "echo: a"
    assert srv.counts["badgzip"] == 1


@pytest.mark.parametrize("latency", [0.0, 0.02])
def test_badgzip_close_is_delimited_by_closing_the_connection(mock_server, latency):
    srv = mock_server(faults={"badgzip_close": 1.0}, latency=latency)
    raw = _raw_exchange(srv.port, "/v1/chat/completions", _chat("a"))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
    assert headers[b"content-encoding"] == b"gzip"
    assert headers[b"connection"] == b"close"
    assert b"content-length" not in headers
    assert not body.startswith(b"\x1f\x8b")
    assert orjson.loads(body)["choices"][0]["message"]["content"]
    assert srv.counts["badgzip_close"] == 1
    # http.client reads such a body to the close too
    conn = _conn(srv)
    status, headers2, body2 = _post(conn, "/v1/chat/completions", _chat("b"))
    conn.close()
    assert status == 200
    assert headers2["Connection"] == "close"
    assert body2 == body


def test_badgzip_close_ignores_requests_pipelined_after_it(mock_server):
    srv = mock_server(script=["badgzip_close"])
    body = orjson.dumps(_chat("a"))
    one = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(one + one)
        raw = b""
        for _ in range(1000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    assert raw.count(b"HTTP/1.1 ") == 1
    assert srv.counts["requests"] == 1


def test_serve_mock_cli_first_fault():
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmframe", "serve-mock", "--port", "0", "--first-fault", "429",
         "--retry-after", "86400"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        port = urlsplit(url).port
        assert port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        status, headers, _ = _post(conn, "/v1/chat/completions", _chat("a"))
        assert status == 429
        assert headers["Retry-After"] == "86400"
        assert _post(conn, "/v1/chat/completions", _chat("a"))[0] == 200
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_mock_cli_rejects_an_unknown_first_fault():
    proc = subprocess.run(
        [sys.executable, "-m", "llmframe", "serve-mock", "--port", "0", "--first-fault", "quota"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown fault" in proc.stderr
