"""Keys never appear in any output, and TLS verification stays on."""

import json
import subprocess
import sys

import polars as pl
import pytest

import llmframe
from llmframe import ConfigError, Endpoint, RunConfig

from conftest import run_rows

KEY = "sk-proj-SECRET0123456789abcdef"


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("LLMF_SECRET_KEY", KEY)
    return "LLMF_SECRET_KEY"


def test_key_echoed_in_errors_and_answers_is_redacted_everywhere(mock_server, key_env, tmp_path):
    echo_ok = mock_server(echo_auth=True)
    echo_err = mock_server(echo_auth=True, faults={"500": 1.0})
    eps = [{"url": echo_ok.url, "api_key_env": key_env},
           {"url": echo_err.url, "api_key_env": key_env}]
    results, stats = run_rows([f"q{i}" for i in range(20)], eps, max_attempts=1)
    assert set(echo_ok.auth_seen) == {f"Bearer {KEY}"}  # the key was really sent
    text = repr(results) + repr(stats) + repr(RunConfig(eps))
    assert KEY not in text
    answered = [r for r in results.values() if r.error is None]
    assert answered and all("Bearer ***" in r.response for r in answered)
    failed = [r for r in results.values() if r.error is not None]
    assert failed and all("Bearer ***" in r.error for r in failed)

    # the polars error column and the CLI's outputs too
    out = pl.DataFrame({"p": ["a", "b", "c", "d"]}).llm.complete(
        "p", endpoints=eps, max_attempts=1, progress=False)
    assert KEY not in str(out.to_dicts())
    req = tmp_path / "r.jsonl"
    req.write_text("".join(json.dumps({"input": f"x{i}"}) + "\n" for i in range(10)))
    proc = subprocess.run(
        [sys.executable, "-m", "llmframe", "run", req, "-e",
         f"url={echo_ok.url},key_env={key_env}", "-e", f"url={echo_err.url},key_env={key_env}",
         "--max-attempts", "1", "--progress"],
        capture_output=True, text=True, timeout=60, env={**__import__("os").environ})
    everything = proc.stdout + proc.stderr + (tmp_path / "r.save.jsonl").read_text() + (
        tmp_path / "r.errors.jsonl").read_text()
    assert KEY not in everything and "Bearer ***" in everything


def test_keys_in_urls_are_not_shown(mock_server):
    srv = mock_server(faults={"500": 1.0})
    url = srv.url.replace("http://", "http://user:pa55word@") + "?api-key=sk-in-query"
    ep = Endpoint(url)
    assert "pa55word" not in repr(ep) and "sk-in-query" not in repr(ep)
    results, _ = run_rows(["a"], [url], max_attempts=1)
    assert "sk-in-query" not in results[0].error and "pa55word" not in results[0].error
    assert "sk-in-query" not in results[0].endpoint


def test_a_config_error_names_the_variable_not_the_value(monkeypatch):
    monkeypatch.setenv("SOME_KEY", "")
    with pytest.raises(ConfigError) as info:
        RunConfig([{"url": "http://127.0.0.1:1/v1", "api_key_env": "SOME_KEY"}])
    assert "SOME_KEY" in str(info.value)


@pytest.mark.parametrize("transport", ["auto", "fast", "aiohttp"])
def test_tls_verification_is_on_by_default(mock_server, transport):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    import ssl

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    srv = mock_server(ssl_context=server_ctx)
    assert srv.url.startswith("https://")
    results, _ = run_rows(["a"], [srv.url], max_attempts=1, transport=transport)
    assert results[0].error_type == "connection_error"
    assert "CERTIFICATE_VERIFY_FAILED" in results[0].error or "certificate" in results[0].error
    assert srv.counts["ok"] == 0


def test_public_names_do_not_leak_keys_in_exceptions(key_env):
    with pytest.raises(ConfigError) as info:
        llmframe.RunConfig([{"url": "ftp://x", "api_key_env": key_env}])
    assert KEY not in str(info.value)
