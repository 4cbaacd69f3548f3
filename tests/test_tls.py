"""https endpoints on the fast transport: the system's trust (SSL_CERT_FILE honoured, in a
subprocess so the variable is read fresh), and clear row errors for certificates that fail
verification — against the project's test server behind TLS, on 127.0.0.1."""

import datetime as dt
import ssl

import pytest
from test_cli import read_jsonl, run_cli, write_requests

from conftest import run_rows

trustme = pytest.importorskip("trustme")


def _tls_server(mock_server, ca, *names, **cert_options):
    cert = ca.issue_cert(*(names or ("127.0.0.1", "localhost")), **cert_options)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return mock_server(ssl_context=context)


@pytest.fixture
def ca():
    return trustme.CA()


def test_https_by_default_on_the_fast_transport_trusting_ssl_cert_file(
        tmp_path, mock_server, ca):
    srv = _tls_server(mock_server, ca)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    req = write_requests(tmp_path / "req.jsonl", [{"input": f"t{i}"} for i in range(50)])
    proc = run_cli("run", req, "-e", srv.url, env={"SSL_CERT_FILE": str(ca_file)})
    assert proc.returncode == 0, proc.stderr
    assert sorted(line["response"] for line in read_jsonl(tmp_path / "req.save.jsonl")) == \
        sorted(f"echo: t{i}" for i in range(50))
    # without it, the CA is unknown: every row an error naming the remedy, no traceback
    proc = run_cli("run", req, "-e", srv.url, "--overwrite",
                   env={"SSL_CERT_FILE": str(tmp_path / "none.pem")})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = read_jsonl(tmp_path / "req.errors.jsonl")
    assert len(errors) == 50
    assert all(e["error_type"] == "tls_error" and e["attempts"] == 1 for e in errors)
    assert "SSL_CERT_FILE" in errors[0]["error"] and "not signed by a CA" in errors[0]["error"]


@pytest.mark.parametrize("transport", ["auto", "aiohttp"])
def test_ssl_cert_file_is_read_when_the_run_starts_on_every_transport(
        tmp_path, mock_server, ca, monkeypatch, transport):
    srv = _tls_server(mock_server, ca)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # set after llmframe was imported
    results, _ = run_rows(["a", "b"], [srv.url], transport=transport)
    assert all(r.ok for r in results.values())


def test_expired_and_wrong_host_certificates_are_clear_row_errors(tmp_path, mock_server, ca,
                                                                  monkeypatch):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    past = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    expired = _tls_server(mock_server, ca, "127.0.0.1", not_after=past,
                          not_before=past - dt.timedelta(days=30))
    other = _tls_server(mock_server, ca, "example.org")
    good = _tls_server(mock_server, ca)
    for srv, says in [(expired, "has expired"), (other, "for another host name")]:
        results, _ = run_rows(["a", "b"], [srv.url])
        for r in results.values():
            assert r.error_type == "tls_error" and says in r.error and r.attempts == 1
    results, _ = run_rows(["a", "b"], [good.url])
    assert all(r.ok for r in results.values())


def test_ca_bundle_client_cert_and_a_loud_verify_false(tmp_path, mock_server, ca):
    import warnings

    from llmframe import ConfigError, Endpoint
    from llmframe._config import parse_endpoint_spec

    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    srv = _tls_server(mock_server, ca)
    results, _ = run_rows(["a"], [{"url": srv.url, "ca_bundle": str(ca_file)}])
    assert results[0].ok  # the bundle is trusted besides the system's CAs
    # an internal gateway that asks for a client certificate (mTLS)
    server = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    gateway = mock_server(ssl_context=context)
    client = ca.issue_cert("llmframe-client")
    pem = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(pem))
    spec = f"url={gateway.url},ca_bundle={ca_file},client_cert={pem}"
    results, _ = run_rows(["a"], [parse_endpoint_spec(spec)])
    assert results[0].ok
    results, _ = run_rows(["a"], [{"url": gateway.url, "ca_bundle": str(ca_file)}],
                          max_attempts=1)
    # no client certificate: refused (the server just closes), with the likely remedy
    assert not results[0].ok and "client_cert=" in results[0].error
    # verify=false: only when asked, and never silently: on every run, even where the
    # user's filter would show a warning only once
    for _ in range(2):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("once")
            results, _ = run_rows(["a"], [parse_endpoint_spec(f"url={srv.url},verify=false")])
        assert results[0].ok
        assert any("TLS verification is OFF" in str(w.message) for w in seen)
    assert "verify=False" in repr(Endpoint(srv.url, verify=False))
    for bad, says in [({"url": srv.url, "ca_bundle": str(tmp_path / "no.pem")}, "not a file"),
                      ({"url": "http://127.0.0.1:1/v1", "verify": False}, "https"),
                      ({"url": srv.url, "verify": "maybe"}, "true or false")]:
        with pytest.raises(ConfigError, match=says):
            run_rows(["a"], [bad])


def test_serve_mock_serves_https(tmp_path, ca):
    import subprocess
    import sys

    cert = ca.issue_cert("127.0.0.1")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    proc = subprocess.Popen([sys.executable, "-m", "llmframe", "serve-mock", "--port", "0",
                             "--tls-cert", str(pem)], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url.startswith("https://127.0.0.1:")
        req = write_requests(tmp_path / "req.jsonl", [{"input": "hi"}])
        done = run_cli("run", req, "-e", f"url={url},ca_bundle={ca_file}")
        assert done.returncode == 0, done.stderr
        assert read_jsonl(tmp_path / "req.save.jsonl")[0]["response"] == "echo: hi"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("transport", ["auto", "aiohttp"])
def test_ssl_cert_dir_is_honoured_on_every_transport(tmp_path, mock_server, monkeypatch,
                                                     transport):
    """SSL_CERT_DIR: a directory of CA certificates named by subject hash (c_rehash)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to name the CA file by its subject hash")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    srv = mock_server(ssl_context=context)
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    digest = subprocess.run(["openssl", "x509", "-subject_hash", "-noout", "-in", str(pem)],
                            capture_output=True, text=True, check=True).stdout.strip()
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / f"{digest}.0").write_bytes(pem.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))  # not the system's
    monkeypatch.setenv("SSL_CERT_DIR", str(certs))
    results, _ = run_rows(["a", "b"], [srv.url], transport=transport)
    assert all(r.ok for r in results.values()), results[0].error
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))  # no CA there: refused, clearly
    results, _ = run_rows(["a"], [srv.url], transport=transport)
    assert results[0].error_type == "tls_error" and "SSL_CERT_FILE" in results[0].error


def test_a_server_closing_idle_connections_cleanly_with_close_notify(tmp_path, ca,
                                                                     monkeypatch):
    """A TLS server that answers and then closes the connection with close_notify (as
    asyncio servers do with idle keep-alive connections): the next request opens a new
    connection; the loop never spins on the closed one."""
    import asyncio
    import json
    import threading

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    loop = asyncio.new_event_loop()
    answered = []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        body = json.dumps({"choices": [{"message": {"content": "hi"},
                                        "finish_reason": "stop"}]}).encode()
        answered.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # close_notify, then FIN

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0,
                                                          ssl=context))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        results, _ = run_rows(["a", "b", "c", "d"], [f"https://127.0.0.1:{port}/v1"],
                              concurrency=1, rps=5, timeout=5, max_attempts=2)
        assert all(r.ok for r in results.values()), [r.error for r in results.values()]
        assert len(answered) == 4
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
