"""Keys never appear in any output, and TLS verification stays on."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import MutableMapping

import polars as pl
import pytest

from llmframe import ConfigError, Endpoint, RunConfig

from conftest import ROOT, run_rows

KEY = "sk-proj-SECRET0123456789abcdef"


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("LLMF_SECRET_KEY", KEY)
    return "LLMF_SECRET_KEY"


class _ReadRecorder(MutableMapping):
    """``os.environ`` that notes which variables are read."""

    def __init__(self, env):
        self.env, self.read = env, set()

    def __getitem__(self, name):
        self.read.add(name)
        return self.env[name]

    def __setitem__(self, name, value):
        self.env[name] = value

    def __delitem__(self, name):
        del self.env[name]

    def __iter__(self):
        return iter(self.env)

    def __len__(self):
        return len(self.env)

    def copy(self):
        return self.env.copy()


@pytest.fixture
def env_reads(monkeypatch):
    """The names of the environment variables read during the test."""
    recorder = _ReadRecorder(os.environ)
    monkeypatch.setattr(os, "environ", recorder)
    return recorder.read


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
        capture_output=True, text=True, timeout=60, env={**os.environ})
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


def test_a_config_error_names_the_variable_not_the_value(monkeypatch, key_env, env_reads):
    monkeypatch.delenv("LLMF_MISSING_KEY", raising=False)
    # the first endpoint's key is set and read; the second endpoint's variable is unset
    env_reads.clear()
    with pytest.raises(ConfigError) as info:
        RunConfig([{"url": "http://127.0.0.1:1/v1", "api_key_env": key_env},
                   {"url": "http://127.0.0.1:2/v1", "api_key_env": "LLMF_MISSING_KEY"}])
    assert key_env in env_reads  # the key was known when the error was raised
    message = str(info.value)
    assert "LLMF_MISSING_KEY" in message and "not set" in message
    assert KEY not in message

    # the key itself passed where the NAME of its variable belongs: refused, not echoed
    with pytest.raises(ConfigError) as info:
        RunConfig([{"url": "http://127.0.0.1:1/v1", "api_key_env": KEY}])
    message = str(info.value)
    assert "api_key_env" in message and "NAME of an environment variable" in message
    assert KEY not in message and KEY not in repr(info.value)


@pytest.mark.parametrize("value", [None, ""])
def test_an_unset_or_empty_key_variable_is_named(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("SOME_KEY", raising=False)
    else:
        monkeypatch.setenv("SOME_KEY", value)
    with pytest.raises(ConfigError) as info:
        RunConfig([{"url": "http://127.0.0.1:1/v1", "api_key_env": "SOME_KEY"}])
    assert "SOME_KEY" in str(info.value) and "not set" in str(info.value)


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
    assert results[0].error_type == "tls_error"
    assert "not signed by a CA this machine trusts" in results[0].error
    assert srv.counts["ok"] == 0


def _shown(exc: BaseException) -> str:
    """Everything an exception shows: message, repr, traceback (with its chain)."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def _later_key_unset(url: str, key_env: str) -> None:
    # keys are read in order when the config is built: the first one is read, then the
    # second endpoint's variable is found unset
    RunConfig([{"url": url, "api_key_env": key_env},
               {"url": url, "api_key_env": "LLMF_MISSING_KEY"}])


def _bad_column_after_the_keys(url: str, key_env: str) -> None:
    pl.DataFrame({"p": ["a"]}).llm.complete(
        "no_such_column", endpoints=[{"url": url, "api_key_env": key_env}], progress=False)


@pytest.mark.parametrize("fail", [_later_key_unset, _bad_column_after_the_keys])
def test_public_names_do_not_leak_keys_in_exceptions(mock_server, monkeypatch, key_env,
                                                     env_reads, fail):
    monkeypatch.delenv("LLMF_MISSING_KEY", raising=False)
    srv = mock_server()
    env_reads.clear()
    with pytest.raises(ConfigError) as info:
        fail(srv.url, key_env)
    assert key_env in env_reads  # the key had been read when the error was raised
    assert KEY not in _shown(info.value)
    assert srv.counts["requests"] == 0


INTERRUPTED_RUN = textwrap.dedent("""
    import sys, traceback
    import polars as pl, llmframe
    echo, hang, key_env, checkpoint = sys.argv[1:5]
    eps = [{"url": echo, "api_key_env": key_env}, {"url": hang, "api_key_env": key_env}]
    df = pl.DataFrame({"p": [f"q{i}" for i in range(20)]})
    try:
        df.llm.complete("p", endpoints=eps, max_attempts=1, timeout=600, metadata=True,
                        checkpoint=checkpoint, progress=False)
    except llmframe.Interrupted as exc:
        print("".join(traceback.format_exception(exc)))
        print(repr(exc), exc.partial.to_dicts(), llmframe.recover().to_dicts())
    else:
        print("finished without an interrupt")
""")


def test_an_interrupted_run_does_not_leak_keys(mock_server, key_env, tmp_path):
    # one endpoint refuses the key with a 401 that echoes the Authorization header back, the
    # other never answers: the run can only end by the interrupt, and the exception carries
    # the echoes in its partial frame
    echo = mock_server(require_key="another-key", echo_auth=True)
    hang = mock_server(faults={"hang": 1.0})
    script, ckpt = tmp_path / "interrupted.py", tmp_path / "run.ckpt.jsonl"
    script.write_text(INTERRUPTED_RUN)
    proc = subprocess.Popen([sys.executable, script, echo.url, hang.url, key_env, ckpt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=os.environ.copy())

    def stored() -> int:  # rows the run has finished (a 401) and stored: checkpoint lines
        return ckpt.read_bytes().count(b"\n") - 1 if ckpt.exists() else 0

    try:
        deadline = time.monotonic() + 60
        while not (stored() > 0 and hang.counts["hang"]) and proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"no stored 401s and hanging requests after 60 s: {stored()} "
                            f"stored, {dict(echo.counts)}, {dict(hang.counts)}")
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the run did not stop within 60 s of the interrupt")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert set(echo.auth_seen) == {f"Bearer {KEY}"}  # the key was really sent
    assert "Interrupted" in out, out + err
    assert "Authorization: Bearer ***" in out  # the echoed header is in it, redacted
    assert KEY not in out + err + ckpt.read_text()


def test_keys_with_stray_characters_fail_at_config_time_without_echoing(monkeypatch,
                                                                        mock_server):
    """A copy-pasted key: a trailing newline is stripped; a curly quote or an inner space is
    a ConfigError that names the variable, never the key."""
    srv = mock_server(require_key="sk-clean-0123456789")
    monkeypatch.setenv("LLMF_NL_KEY", "sk-clean-0123456789\n")
    results, _ = run_rows(["a"], [{"url": srv.url, "api_key_env": "LLMF_NL_KEY"}])
    assert results[0].response == "echo: a"
    assert srv.auth_seen == {"Bearer sk-clean-0123456789": 1}
    for bad in ("sk-curly\u2019quote-0123456789", "sk-inner space-0123456789"):
        monkeypatch.setenv("LLMF_BAD_KEY", bad)
        with pytest.raises(ConfigError) as info:
            RunConfig([{"url": srv.url, "api_key_env": "LLMF_BAD_KEY"}])
        assert "LLMF_BAD_KEY" in str(info.value) and bad not in str(info.value)


def test_a_key_pasted_as_the_variable_name_is_not_echoed():
    key = "AIzaSyD3x9kQ0abcdefGHIJklmn"
    with pytest.raises(ConfigError) as info:
        Endpoint("http://127.0.0.1:1/v1", api_key_env=key)
    assert key not in str(info.value) and "NAME of an environment variable" in str(info.value)


def test_a_key_straddling_the_excerpt_cut_leaves_no_part_behind(monkeypatch):
    """Outside finding: the body excerpt was cut, then redacted: the first half of a key at
    the cut survived."""
    from llmframe.testing import MockTransport

    key = "sk-proj-" + "A1b2C3d4" * 8
    monkeypatch.setenv("LLMF_CUT_KEY", key)
    for status, offset in ((500, 290), (200, 190)):
        body = b"x" * offset + key.encode()
        results, _ = run_rows(["a"], [{"url": "http://llm.invalid/v1",
                                       "api_key_env": "LLMF_CUT_KEY"}], max_attempts=1,
                              transport=lambda url, headers, b=body, s=status: MockTransport(
                                  lambda _: (s, {}, b)))
        error = results[0].error
        assert error and key[:12] not in error and key[-12:] not in error, error
