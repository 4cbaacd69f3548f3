"""``llmframe serve-mock`` and ``llmframe run --mock N``: local test endpoints."""

from __future__ import annotations

import contextlib
import signal
import ssl
import sys

import click

from ._cli_common import UsageProblem
from ._config import Endpoint

__all__ = ["serve_mock", "start_mocks"]


def _parse_latency(text: str) -> float | tuple[float, float]:
    """``"0.05"`` -> 0.05; ``"0.02,0.2"`` -> a random range (ValueError if neither)."""
    parts = [float(x) for x in text.split(",")]
    if len(parts) not in (1, 2):
        msg = f"latency must be S or S1,S2, got {text!r}"
        raise ValueError(msg)
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def start_mocks(stack: contextlib.ExitStack, n: int, latency: str, faults: str,
                 labels: dict[str, str]) -> list[Endpoint]:
    from .testing import MockServer

    try:
        lat = _parse_latency(latency)
        fault_rates = {k: float(v) for k, v in (f.split("=", 1) for f in faults.split(",") if f)}
        servers = [stack.enter_context(MockServer(latency=lat, faults=fault_rates, seed=i,
                                                  name=f"mock-{i + 1}")) for i in range(n)]
    except ValueError as exc:
        msg = f"--mock options: {exc}"
        raise UsageProblem(msg) from None
    out = []
    for i, srv in enumerate(servers):
        labels[srv.url] = "(local test endpoint)"
        out.append(Endpoint(srv.url, weight=i + 1, proxy=False))  # in this process
    return out


@click.command("serve-mock", context_settings={"show_default": True})
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, default=8000, help="0 picks a free port (printed).")
@click.option("--latency", default="0", metavar="S[,S2]", help="Fixed latency or a random range.")
@click.option("--fault", "faults", multiple=True, metavar="KIND=RATE",
              help="429, 500, 503, drop, hang, malformed, badgzip, badgzip_close, or for "
                   "structured requests badjson (JSON breaking the schema) and notjson (prose), "
                   "at a rate in [0, 1]. Repeatable.")
@click.option("--first-fault", default=None, metavar="KIND",
              help="Answer the first request of each distinct prompt with this fault (e.g. 429); "
                   "later requests with that prompt go on as usual.")
@click.option("--retry-after", type=float, default=1.0, help="Retry-After seconds sent with 429.")
@click.option("--rpm", type=float, default=None,
              help="Provider mode: requests per minute, a bucket holding --window seconds' "
                   "worth; over it, 429 with Retry-After.")
@click.option("--tpm", type=float, default=None,
              help="Provider mode: tokens per minute (each answer's prompt + completion "
                   "tokens, charged at arrival); same kind of bucket.")
@click.option("--window", type=float, default=60.0,
              help="Seconds' worth of --rpm/--tpm the buckets hold (the burst); the refill "
                   "stays limit/60 per second. 1-2 s makes limits bite quickly.")
@click.option("--ratelimit-headers", type=click.Choice(["openai", "anthropic"]), default=None,
              help="Rate-limit header style on answers (default openai with --rpm/--tpm).")
@click.option("--quota", type=click.IntRange(min=0), default=None,
              help="Provider mode: after this many answers, every POST gets 429 "
                   "insufficient_quota (no Retry-After).")
@click.option("--response-formats", default="json_schema,json_object", metavar="FORMS",
              help="response_format forms accepted: json_object alone acts like llama.cpp's "
                   "server (500 for json_schema), json_schema alone like a strict OpenAI-like "
                   "one (400 for json_object); '' refuses both; 'ignore' ignores the field.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="PEM", help="Serve https with this certificate chain (PEM; with "
              "--tls-key, or the key in the same file).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="PEM", help="The private key of --tls-cert.")
@click.option("--seed", type=int, default=0)
@click.option("--require-key", envvar="LLMFRAME_MOCK_KEY", default=None,
              help="Answer 401 unless this bearer key is sent (env LLMFRAME_MOCK_KEY).")
def serve_mock(host: str, port: int, latency: str, faults: tuple[str, ...],
               first_fault: str | None, retry_after: float, rpm: float | None,
               tpm: float | None, window: float, ratelimit_headers: str | None,
               quota: int | None, response_formats: str, tls_cert: str | None,
               tls_key: str | None, seed: int, require_key: str | None) -> None:
    """Serve a local OpenAI-compatible test endpoint until interrupted.

    Answers are "echo: <prompt>" with usage; /v1/models and /v1/_stats (counters) are
    served too. Provider mode (--rpm, --tpm, --quota) acts like a paid provider: limits
    with x-ratelimit-* headers and 429 + Retry-After, and a quota that runs out. A request
    with a response_format (json_schema or json_object with a schema) is answered with JSON
    built from the schema and the prompt.
    """
    import asyncio

    from ._runner import new_event_loop
    from .testing import MockState, serve

    try:
        lat = _parse_latency(latency)
        rates = {}
        for f in faults:
            kind, _, rate = f.partition("=")
            rates[kind] = float(rate)
        state = MockState(latency=lat, faults=rates, retry_after=retry_after, seed=seed,
                          require_key=require_key, first_fault=first_fault, rpm=rpm, tpm=tpm,
                          window=window, ratelimit_headers=ratelimit_headers, quota=quota,
                          response_formats=(None if response_formats == "ignore"
                                            else response_formats))
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    context = None
    if tls_cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(tls_cert, tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise UsageProblem(f"--tls-cert/--tls-key: cannot load them ({exc})") from None
    elif tls_key is not None:
        raise UsageProblem("--tls-key needs --tls-cert")
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(serve(state, host, port, ssl_context=context))
    actual = server.sockets[0].getsockname()[1]
    scheme = "https" if context is not None else "http"
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address
    click.echo(f"llmframe mock endpoint listening on {scheme}://{shown}:{actual}/v1", err=False)
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        loop.add_signal_handler(signal.SIGTERM, loop.stop)
        loop.run_forever()
    server.close()
    loop.close()
    click.echo(f"served: {dict(state.counts)}", err=True)
