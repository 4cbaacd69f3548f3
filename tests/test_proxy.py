"""Proxies end to end on 127.0.0.1: the suite's own forward proxy (tests/forward_proxy.py)
in front of the project's test server, over http (absolute-form) and https (CONNECT), on
both transports; HTTPS_PROXY / HTTP_PROXY / NO_PROXY by default, ``proxy=`` / ``--proxy`` /
``--no-proxy`` over them; refusals (407, 403, 502) as clear row errors with the proxy's
password never shown."""

import socket
import ssl

import pytest
from forward_proxy import ForwardProxy
from test_cli import read_jsonl, run_cli, write_requests

from llmframe import ConfigError, Endpoint, RunConfig

from conftest import run_rows

trustme = pytest.importorskip("trustme")

SECRET = "s3cr%t-pw"  # percent-encoded in URLs as s3cr%25t-pw


@pytest.fixture
def proxy():
    started = []

    def make(**options):
        p = ForwardProxy(**options).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def https_server(mock_server, tmp_path, monkeypatch):
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    return mock_server(ssl_context=context)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("transport", ["auto", "aiohttp"])
def test_https_proxy_from_the_environment_tunnels_with_connect(
        https_server, proxy, monkeypatch, transport):
    p = proxy()
    monkeypatch.setenv("HTTPS_PROXY", p.url)
    results, _ = run_rows([f"q{i}" for i in range(40)], [https_server.url],
                          transport=transport, concurrency=8)
    assert [results[i].response for i in range(40)] == [f"echo: q{i}" for i in range(40)]
    assert p.connects and set(p.connects) == {f"127.0.0.1:{https_server.port}"}
    assert len(p.connects) <= 8  # connections are kept alive through the tunnel
    assert https_server.counts["ok"] == 40


@pytest.mark.parametrize("transport", ["auto", "aiohttp"])
def test_http_proxy_from_the_environment_gets_absolute_form_requests(
        mock_server, proxy, monkeypatch, transport):
    srv, p = mock_server(), proxy()
    monkeypatch.setenv("http_proxy", p.url)
    results, _ = run_rows(["a", "b", "c"], [srv.url], transport=transport)
    assert all(r.ok for r in results.values())
    assert len(p.forwarded) == 3
    assert all(line.startswith(f"POST http://127.0.0.1:{srv.port}/v1/chat/completions ")
               for line in p.forwarded)


def test_no_proxy_and_proxy_false_go_direct_and_proxy_wins_over_the_environment(
        mock_server, https_server, proxy, monkeypatch):
    srv, p = mock_server(), proxy()
    dead = f"http://127.0.0.1:{_dead_port()}"
    monkeypatch.setenv("HTTP_PROXY", p.url)
    monkeypatch.setenv("HTTPS_PROXY", p.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.0/8")
    results, _ = run_rows(["a"], [srv.url, https_server.url])
    assert results[0].ok and not p.forwarded and not p.connects
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("HTTPS_PROXY", dead)
    monkeypatch.setenv("HTTP_PROXY", dead)
    results, _ = run_rows(["a", "b"], [srv.url, https_server.url], proxy=False)
    assert all(r.ok for r in results.values()) and not p.connects
    # an explicit proxy is used whatever the environment says (NO_PROXY included)
    monkeypatch.setenv("NO_PROXY", "*")
    results, _ = run_rows(["a", "b"], [srv.url, https_server.url], proxy=p.url)
    assert all(r.ok for r in results.values())
    assert len(p.forwarded) >= 1 and len(p.connects) >= 1
    # an endpoint's own proxy wins over the run's
    p2 = proxy()
    results, _ = run_rows(["a"], [Endpoint(srv.url, proxy=p2.url)], proxy=False)
    assert results[0].ok and len(p2.forwarded) == 1


@pytest.mark.parametrize("transport", ["auto", "aiohttp"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_asking_for_credentials_is_a_clear_error_with_the_password_redacted(
        mock_server, https_server, proxy, transport, scheme):
    srv = https_server if scheme == "https" else mock_server()
    p = proxy(auth=("alice", "s3cr%t-pw"))
    host = p.url.removeprefix("http://")
    # no credentials: 407, every row ends with one attempt, the remedy named
    results, _ = run_rows(["a", "b"], [srv.url], proxy=p.url, transport=transport)
    for r in results.values():
        assert r.error_type == "proxy_error" and r.attempts == 1
        assert f"proxy http://{host} asks for authentication (407" in r.error
        assert "http://USER:PASSWORD@HOST:PORT" in r.error
    # wrong password: refused, the password never shown
    results, _ = run_rows(["a"], [srv.url], proxy=f"http://alice:{SECRET}x@{host}",
                          transport=transport)
    r = results[0]
    assert r.error_type == "proxy_error" and f"http://alice:***@{host}" in r.error
    assert "refused the user name and password" in r.error and "s3cr" not in r.error
    # the right ones (percent-encoded in the URL)
    results, _ = run_rows(["a", "b"], [srv.url], proxy=f"http://alice:s3cr%25t-pw@{host}",
                          transport=transport)
    assert all(r.ok for r in results.values()), [r.error for r in results.values()]
    assert srv.counts["ok"] == 2


def test_connect_refused_or_unreachable_and_a_dead_proxy(https_server, proxy):
    forbidden = proxy(refuse_connect=403)
    results, _ = run_rows(["a"], [https_server.url], proxy=forbidden.url, max_attempts=3)
    assert results[0].error_type == "proxy_error" and results[0].attempts == 1
    assert f"refused to connect to 127.0.0.1:{https_server.port} (403" in results[0].error
    gateway = proxy(refuse_connect=502)  # the proxy cannot reach the endpoint: retried
    results, _ = run_rows(["a"], [https_server.url], proxy=gateway.url, max_attempts=2,
                          backoff_initial=0.01)
    assert results[0].error_type == "connection_error" and results[0].attempts == 2
    assert "could not reach" in results[0].error
    dead = f"http://127.0.0.1:{_dead_port()}"
    results, _ = run_rows(["a"], [https_server.url], proxy=dead, max_attempts=1)
    assert results[0].error_type == "connection_error"
    assert f"cannot connect to proxy {dead}" in results[0].error
    assert https_server.counts["requests"] == 0


def test_bad_proxies_fail_before_anything_is_sent(mock_server, monkeypatch):
    srv = mock_server()
    with pytest.raises(ConfigError, match="SOCKS proxies are not supported"):
        RunConfig([srv.url], proxy="socks5://me:pw@127.0.0.1:1080")
    with pytest.raises(ConfigError, match=r"endpoint .*proxy") as info:
        Endpoint(srv.url, proxy="ftp://me:hunter2@p:21")
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("HTTP_PROXY", "socks5://me:hunter2@127.0.0.1:1080")
    with pytest.raises(ConfigError, match="HTTP_PROXY") as info:
        run_rows(["a"], [srv.url])
    assert "hunter2" not in str(info.value) and srv.counts["requests"] == 0
    ep = Endpoint(srv.url, proxy=f"http://me:{SECRET}@p:3128")
    assert "s3cr" not in repr(ep) and "me:***@p:3128" in repr(ep)
    assert Endpoint(srv.url, proxy="none").proxy is False


def test_cli_proxy_flags_and_environment(tmp_path, https_server, proxy):
    p = proxy(auth=("bob", "hunter2"))
    host = p.url.removeprefix("http://")
    req = write_requests(tmp_path / "req.jsonl", [{"input": f"t{i}"} for i in range(20)])
    env = {"SSL_CERT_FILE": str(tmp_path / "ca.pem")}
    proc = run_cli("run", req, "-e", https_server.url,
                   env={**env, "HTTPS_PROXY": f"http://bob:hunter2@{host}"})
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(tmp_path / "req.save.jsonl")) == 20 and p.connects
    # a wrong password from the environment: exit 1, errors name the proxy, no password
    proc = run_cli("run", req, "-e", https_server.url, "--overwrite",
                   env={**env, "HTTPS_PROXY": f"http://bob:hunter3@{host}"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    text = (tmp_path / "req.errors.jsonl").read_text()
    assert f"http://bob:***@{host}" in text and "hunter3" not in text + proc.stderr
    # --no-proxy ignores the environment; --proxy replaces it
    dead = f"http://127.0.0.1:{_dead_port()}"
    proc = run_cli("run", req, "-e", https_server.url, "--overwrite", "--no-proxy",
                   env={**env, "HTTPS_PROXY": dead})
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("run", req, "-e", https_server.url, "--overwrite", "--proxy",
                   f"http://bob:hunter2@{host}", env={**env, "HTTPS_PROXY": dead})
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("run", req, "-e", https_server.url, "--overwrite", "--proxy",
                   "socks5://bob:hunter2@127.0.0.1:1")
    assert proc.returncode == 2 and "SOCKS" in proc.stderr and "hunter2" not in proc.stderr


def test_polars_proxy_keyword(mock_server, proxy, monkeypatch):
    import polars as pl

    import llmframe  # noqa: F401 - registers the namespace

    srv, p = mock_server(), proxy()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_dead_port()}")
    df = pl.DataFrame({"prompt": ["a", "b", "c"]})
    out = df.llm.complete("prompt", endpoints=[srv.url], proxy=p.url)
    assert out["response"].to_list() == ["echo: a", "echo: b", "echo: c"]
    assert len(p.forwarded) == 3
    out = df.select(pl.col("prompt").llm.complete(endpoints=[srv.url], proxy=False))
    assert out["prompt"].struct.field("response").to_list() == ["echo: a", "echo: b", "echo: c"]


def test_review_fixes_scheme_case_reprs_specs_workers_and_a_garbage_proxy(
        tmp_path, https_server, proxy, monkeypatch):
    from llmframe._config import parse_endpoint_spec

    # an upper-case scheme is https: credentials go to the proxy's CONNECT, never inside
    p = proxy(auth=("carol", "pw9"))
    host = p.url.removeprefix("http://")
    upper = https_server.url.replace("https://", "HTTPS://")
    assert Endpoint(upper).url == https_server.url
    for transport in ("auto", "aiohttp"):
        results, _ = run_rows(["a"], [upper], proxy=f"http://carol:pw9@{host}",
                              transport=transport)
        assert results[0].ok, results[0].error
    assert all(a == "Basic Y2Fyb2w6cHc5" for a in p.auth_seen)
    # reprs and spec errors never show a proxy password (even one holding a comma)
    assert "pw9" not in repr(RunConfig([https_server.url], proxy=f"http://carol:pw9@{host}"))
    for spec, says in [
        (f"url={https_server.url},proxy=http://u:TOPSECRET@{host},weight=abc", "number"),
        (f"url={https_server.url},proxy=http://u:TOP,SECRET@{host}", "%2C"),
        (f"url={https_server.url},proxy=http://u:TOP,timeout=SECRET@{host}", "%2C"),
        (f"url={https_server.url},proxy=http://u:TOPSECRET@{host},proxy=none", "twice"),
    ]:
        with pytest.raises(ConfigError, match=says) as info:
            parse_endpoint_spec(spec)
        assert "TOP" not in str(info.value) and "SECRET" not in str(info.value)
    # --workers: a bad proxy in the environment is exit 2 before any worker or file
    req = write_requests(tmp_path / "w.jsonl", [{"input": "a"}])
    proc = run_cli("run", req, "-e", https_server.url, "--workers", "2",
                   env={"HTTPS_PROXY": "socks5://u:pw@127.0.0.1:1"})
    assert proc.returncode == 2 and "SOCKS" in proc.stderr, proc.stderr
    assert not (tmp_path / "w.save.jsonl").exists()
    # something that is not an HTTP proxy: the row error names it
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        import threading

        def banner():
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        threading.Thread(target=banner, daemon=True).start()
        fake = f"http://127.0.0.1:{listener.getsockname()[1]}"
        results, _ = run_rows(["a"], [https_server.url], proxy=fake, max_attempts=1)
    assert f"proxy {fake} is not an HTTP proxy" in results[0].error
