"""The ``llmframe`` command line.

Exit codes of ``llmframe run``: 0 every row answered; 1 some rows ended as errors; 2 bad
usage or configuration (nothing sent); 3 stopped by the budget; 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from . import __version__
from ._config import Endpoint, coerce_endpoints, parse_endpoint_spec
from ._exceptions import (
    BudgetReached,
    ConfigError,
    InputFileError,
    Interrupted,
    StoreError,
    WorkerError,
)
from ._files import default_paths, run_file
from ._json import loads
from ._summary import format_summary

EXIT_OK, EXIT_ROW_ERRORS, EXIT_USAGE, EXIT_BUDGET = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


class UsageProblem(click.ClickException):
    """A problem the user can fix; exit code 2, nothing was sent."""

    exit_code = EXIT_USAGE


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        msg = f"--param expects KEY=VALUE, got {text!r}"
        raise UsageProblem(msg)
    try:
        parsed = loads(value.encode())
    except orjson.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _load_endpoints_file(path: Path) -> list[Endpoint]:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"endpoints file not found: {path}"
        raise UsageProblem(msg) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        msg = f"endpoints file {path}: not valid TOML ({exc})"
        raise UsageProblem(msg) from None
    specs = doc.get("endpoints", doc.get("endpoint"))
    if not isinstance(specs, list) or not specs:
        msg = (f"endpoints file {path}: expected a list of [[endpoints]] tables, "
               'each with at least url = "http://..."')
        raise UsageProblem(msg)
    try:
        return coerce_endpoints(specs)
    except ConfigError as exc:
        msg = f"endpoints file {path}: {exc}"
        raise UsageProblem(msg) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="llmframe")
def cli() -> None:
    """Send one LLM request per JSONL line (or polars row) to OpenAI-compatible endpoints,
    balanced by weight, rate-limited and retried; every row ends in one response or one
    error."""


@cli.command(context_settings={"show_default": True})
@click.argument("requests", required=False, type=click.Path(path_type=Path))
@click.option("--requests_filepath", "requests_alias", type=click.Path(path_type=Path),
              help="Same as REQUESTS (the original tool's flag).")
@click.option("--endpoint", "-e", "endpoint_specs", multiple=True, metavar="SPEC",
              help="Endpoint URL, or key=value pairs joined by commas, e.g. "
                   "url=URL,weight=3,tpm=30000. Keys: url weight model key_env rps rpm tpm "
                   "concurrency timeout price_in price_out (USD per 1M tokens). rpm/tpm not "
                   "set are learned from the provider's rate-limit headers. Repeatable.")
@click.option("--request_url", "request_urls", multiple=True, hidden=True,
              help="The original tool's flag: same as --endpoint URL.")
@click.option("--endpoints-file", type=click.Path(path_type=Path),
              help="TOML file with a list of [[endpoints]] tables (url, weight, model, "
                   "api_key_env, rps, rpm, tpm, max_concurrency, timeout, price_in, price_out, "
                   "headers).")
@click.option("--mock", type=click.IntRange(min=1, max=64), default=None, metavar="N",
              help="Start N local test endpoints (weights 1..N) in this process and use them.")
@click.option("--mock-latency", default="0.02,0.2", metavar="S[,S2]", show_default=True,
              help="Latency of the --mock endpoints: fixed, or a random range.")
@click.option("--mock-faults", default="", metavar="KIND=RATE,...",
              help="Faults of the --mock endpoints, e.g. 429=0.02,500=0.01,drop=0.01.")
@click.option("--rps", "--max_requests_per_second", "rps", type=float, default=500.0,
              help="Global limit on requests per second (retries included).")
@click.option("--concurrency", type=int, default=256, help="Global limit on requests in flight.")
@click.option("--tpm", type=float, default=None,
              help="Global limit on tokens per minute (prompt + answer, as the answers' usage "
                   "counts them); endpoints may have their own tpm=/rpm=.")
@click.option("--budget", type=float, default=None, metavar="USD",
              help="Stop sending before the spend would pass USD (needs price_in/price_out on "
                   "every endpoint); exit code 3. For the whole job: --resume counts what the "
                   "saved answers cost; --workers split it.")
@click.option("--output-tokens", type=int, default=512,
              help="Answer tokens reserved per request that sets no max_tokens, until answers "
                   "show the real size (token limits, budget, --dry-run).")
@click.option("--tokenizer", type=click.Choice(["chars", "tiktoken"]), default="chars",
              help="Prompt token estimates: characters/4, or tiktoken when it is installed "
                   "with its encoding file already cached (never downloaded).")
@click.option("--dry-run", is_flag=True,
              help="Read the whole file and report rows, invalid rows, tokens, cost per "
                   "endpoint, where --budget stops and time at the limits; send and write "
                   "nothing (with --resume: only the rows without a result).")
@click.option("--max-attempts", "--max_attempts", "max_attempts", type=int, default=5,
              help="Attempts per row, the first included.")
@click.option("--save", "--save_filepath", "save", type=click.Path(path_type=Path),
              help="Where answers go. [default: REQUESTS with .save.jsonl]")
@click.option("--errors", type=click.Path(path_type=Path),
              help="Where failed rows go. [default: REQUESTS with .errors.jsonl]")
@click.option("--api", type=click.Choice(["chat", "completions", "raw"]), default="chat",
              help="chat: {'input'} -> chat completion; completions: -> prompt; raw: POST the "
                   "line as the body and keep the response JSON.")
@click.option("--model", help="Model name sent with each request (an endpoint's own wins).")
@click.option("--system", help="System prompt for chat requests.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Extra body parameter, VALUE parsed as JSON if it can be (temperature=0.2).")
@click.option("--max-tokens", type=click.IntRange(min=1),
              help="Shortcut for --param max_tokens=N.")
@click.option("--timeout", type=float, default=60.0, help="Seconds per attempt.")
@click.option("--resume", is_flag=True,
              help="Continue a run whose outputs exist: send only rows with no result yet.")
@click.option("--retry-errors", is_flag=True,
              help="Like --resume, but also send again the rows in the errors file (the old "
                   "errors file is kept as ERRORS.prev).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--grace", type=float, default=5.0,
              help="On Ctrl-C/SIGTERM: seconds to let in-flight requests finish before "
                   "cancelling them (a second Ctrl-C cancels at once).")
@click.option("--workers", type=click.IntRange(min=1, max=64), default=1,
              help="Processes to shard rows over (the rate and concurrency are split "
                   "between them exactly). Use 2+ only for thousands of requests/s.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar. [default: on when stderr is a terminal]")
def run(requests: Path | None, requests_alias: Path | None, endpoint_specs: tuple[str, ...],
        request_urls: tuple[str, ...], endpoints_file: Path | None, mock: int | None,
        mock_latency: str, mock_faults: str,
        rps: float, concurrency: int, tpm: float | None, budget: float | None,
        output_tokens: int, tokenizer: str, dry_run: bool,
        max_attempts: int, save: Path | None, errors: Path | None,
        api: str, model: str | None, system: str | None, params: tuple[str, ...],
        max_tokens: int | None, timeout: float, resume: bool, retry_errors: bool,
        overwrite: bool, grace: float, workers: int, progress: bool | None) -> None:
    """Run every line of REQUESTS (JSONL: {"input": "..."} per line) and write the answers.

    \b
    Examples:
      llmframe run data/requests.jsonl --mock 3
      llmframe run requests.jsonl -e http://127.0.0.1:8000/v1 -e url=http://127.0.0.1:8001/v1,weight=3
      llmframe run --requests_filepath r.jsonl --max_requests_per_second 100 --max_attempts 5 \\
          --save_filepath out.jsonl -e url=https://api.openai.com/v1,key_env=OPENAI_API_KEY

    \b
    Existing outputs are never overwritten silently: pass --resume (send only rows without a
    result; safe after a crash or kill -9), --retry-errors, or --overwrite.

    \b
    \b
    Paid providers: -e url=https://api.openai.com/v1,key_env=OPENAI_API_KEY,tpm=30000,
    rpm=500,price_in=0.15,price_out=0.6 --budget 5 (see --dry-run first).

    \b
    Exit codes: 0 all rows ok; 1 some rows ended as errors; 2 bad usage or configuration
    (nothing sent); 3 stopped by the budget; 130 interrupted (Ctrl-C), 143 terminated
    (SIGTERM): finished rows are saved, rerun with --resume.
    """
    if requests and requests_alias and requests != requests_alias:
        msg = "give the requests file once: REQUESTS or --requests_filepath"
        raise UsageProblem(msg)
    path = requests or requests_alias
    if path is None:
        msg = "no requests file: llmframe run REQUESTS.jsonl (see llmframe run --help)"
        raise UsageProblem(msg)
    body_params = dict(_parse_param(p) for p in params)
    if max_tokens is not None:
        body_params["max_tokens"] = max_tokens
    try:
        endpoints = [parse_endpoint_spec(s) for s in (*endpoint_specs, *request_urls)]
        if endpoints_file is not None:
            endpoints += _load_endpoints_file(endpoints_file)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None
    if not endpoints and not mock:
        msg = ("no endpoints: give --endpoint URL (repeatable), --endpoints-file FILE, "
               "or --mock N for local test endpoints")
        raise UsageProblem(msg)
    if mock and workers > 1:
        msg = "--workers needs endpoints in their own processes; use serve-mock, not --mock"
        raise UsageProblem(msg)
    if progress is None:
        progress = sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        labels: dict[str, str] = {}
        if mock:
            endpoints += _start_mocks(stack, mock, mock_latency, mock_faults, labels)
            click.echo(f"llmframe: using {mock} local test endpoint(s) started by --mock "
                       "(not a real LLM: answers echo the prompt)", err=True)
        options = {"rps": rps, "concurrency": concurrency, "max_attempts": max_attempts,
                   "timeout": timeout, "api": api, "model": model, "system": system,
                   "params": body_params, "tpm": tpm, "budget": budget,
                   "output_tokens": output_tokens, "tokenizer": tokenizer}
        if dry_run:
            sys.exit(_dry_run(path, endpoints, options, save=save, errors=errors,
                              resume=resume, retry_errors=retry_errors, overwrite=overwrite))
        code = _run(path, endpoints, options, labels, save=save, errors=errors,
                    resume=resume, retry_errors=retry_errors, overwrite=overwrite,
                    workers=workers, progress=progress, grace=grace)
    sys.exit(code)


def _run(path: Path, endpoints: list[Endpoint], options: dict[str, Any],
         labels: dict[str, str], **kwargs: Any) -> int:
    """Call ``run_file``, print its summary, and return the exit code."""
    signals: list[int] = []

    def on_term(signum: int, frame: Any) -> None:
        signals.append(signum)
        raise KeyboardInterrupt

    def note(text: str) -> None:
        click.echo(f"llmframe: {text}", err=True)

    previous = signal.signal(signal.SIGTERM, on_term)
    interrupted, stopped = False, None
    try:
        stats = run_file(path, endpoints=endpoints, on_note=note, **options, **kwargs)
    except Interrupted as exc:
        interrupted, stats = True, exc.partial
    except BudgetReached as exc:
        stats, stopped = exc.partial, str(exc)
    except (ConfigError, InputFileError) as exc:
        raise UsageProblem(str(exc)) from None
    except (StoreError, WorkerError) as exc:
        click.echo(f"llmframe: error: {exc}; the results stored before are kept: fix the "
                   "cause and rerun with --resume", err=True)
        return EXIT_ROW_ERRORS
    finally:
        signal.signal(signal.SIGTERM, previous)
    save, errors = default_paths(path, kwargs["save"], kwargs["errors"])
    if stats.rows == 0 and not interrupted:
        click.echo(f"llmframe: {path} has no requests (empty file); nothing to do", err=True)
        return EXIT_OK
    weights = [ep.weight for ep in endpoints]
    click.echo(format_summary(stats, weights, labels=labels, interrupted=interrupted), err=True)
    verb = "appended" if kwargs["resume"] or kwargs["retry_errors"] else "lines"
    click.echo(f"  answers: {save}  ({stats.ok:,} {verb})", err=True)
    click.echo(f"  errors:  {errors}  ({stats.errors:,} {verb})", err=True)
    if interrupted:
        click.echo("  not finished: rerun the same command with --resume to send the rest",
                   err=True)
        return EXIT_TERMINATED if signal.SIGTERM in signals else EXIT_INTERRUPTED
    if stopped is not None:
        click.echo(f"llmframe: {stopped}", err=True)
        return EXIT_BUDGET
    return EXIT_ROW_ERRORS if stats.errors else EXIT_OK


def _dry_run(path: Path, endpoints: list[Endpoint], options: dict[str, Any],
             **outputs: Any) -> int:
    """``--dry-run``: print the estimate of what this run would send; nothing is sent or
    written (with --resume: only the rows without a result)."""
    from ._config import run_config
    from ._estimate import estimate_file

    if not path.is_file():
        raise UsageProblem(f"requests file not found: {path}")
    try:
        report = estimate_file(path, run_config(endpoints, **options), **outputs)
    except (ConfigError, InputFileError) as exc:
        raise UsageProblem(str(exc)) from None
    click.echo(str(report))
    return EXIT_OK


def _parse_latency(text: str) -> float | tuple[float, float]:
    """``"0.05"`` -> 0.05; ``"0.02,0.2"`` -> a random range (ValueError if neither)."""
    parts = [float(x) for x in text.split(",")]
    if len(parts) not in (1, 2):
        msg = f"latency must be S or S1,S2, got {text!r}"
        raise ValueError(msg)
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _start_mocks(stack: contextlib.ExitStack, n: int, latency: str, faults: str,
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
        out.append(Endpoint(srv.url, weight=i + 1))
    return out


@cli.command("serve-mock", context_settings={"show_default": True})
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, default=8000, help="0 picks a free port (printed).")
@click.option("--latency", default="0", metavar="S[,S2]", help="Fixed latency or a random range.")
@click.option("--fault", "faults", multiple=True, metavar="KIND=RATE",
              help="429, 500, 503, drop, hang, malformed, badgzip or badgzip_close, at a rate "
                   "in [0, 1]. Repeatable.")
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
@click.option("--seed", type=int, default=0)
@click.option("--require-key", envvar="LLMFRAME_MOCK_KEY", default=None,
              help="Answer 401 unless this bearer key is sent (env LLMFRAME_MOCK_KEY).")
def serve_mock(host: str, port: int, latency: str, faults: tuple[str, ...],
               first_fault: str | None, retry_after: float, rpm: float | None,
               tpm: float | None, window: float, ratelimit_headers: str | None,
               quota: int | None, seed: int, require_key: str | None) -> None:
    """Serve a local OpenAI-compatible test endpoint until interrupted.

    Answers are "echo: <prompt>" with usage; /v1/models and /v1/_stats (counters) are
    served too. Provider mode (--rpm, --tpm, --quota) acts like a paid provider: limits
    with x-ratelimit-* headers and 429 + Retry-After, and a quota that runs out.
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
                          window=window, ratelimit_headers=ratelimit_headers, quota=quota)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(serve(state, host, port))
    actual = server.sockets[0].getsockname()[1]
    click.echo(f"llmframe mock endpoint listening on http://{host}:{actual}/v1", err=False)
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        loop.add_signal_handler(signal.SIGTERM, loop.stop)
        loop.run_forever()
    server.close()
    loop.close()
    click.echo(f"served: {dict(state.counts)}", err=True)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
