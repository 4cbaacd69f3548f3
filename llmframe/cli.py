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

from . import __version__
from ._cli_cache import cache
from ._cli_common import (
    EXIT_BUDGET,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_ROW_ERRORS,
    EXIT_TERMINATED,
    UsageProblem,
    load_endpoints_file,
    load_schema_file,
    parse_param,
)
from ._cli_mock import serve_mock, start_mocks
from ._config import Endpoint, parse_endpoint_spec
from ._exceptions import (
    BudgetReached,
    ConfigError,
    InputFileError,
    Interrupted,
    StoreError,
    WorkerError,
)
from ._files import default_paths, run_file
from ._proxy import check_proxy
from ._summary import format_summary


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
                   "concurrency timeout price_in price_out (USD per 1M tokens); for https "
                   "ca_bundle client_cert client_key (PEM files) verify (false: no TLS check, "
                   "loudly); proxy (URL, or none). rpm/tpm not set are learned from the "
                   "provider's rate-limit headers. Repeatable.")
@click.option("--request_url", "request_urls", multiple=True, hidden=True,
              help="The original tool's flag: same as --endpoint URL.")
@click.option("--endpoints-file", type=click.Path(path_type=Path),
              help="TOML file with a list of [[endpoints]] tables (url, weight, model, "
                   "api_key_env, rps, rpm, tpm, max_concurrency, timeout, price_in, price_out, "
                   "headers, ca_bundle, client_cert, client_key, verify, proxy).")
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
@click.option("--schema", "schema_file", type=click.Path(path_type=Path), metavar="FILE.json",
              help="Structured output: a JSON Schema (an object). Each answer is asked for as "
                   "JSON of that shape (response_format, in the form each server takes), "
                   "validated (retried if it breaks it), and saved as the parsed object.")
@click.option("--cache", "cache", is_flag=False, flag_value="", default=None, metavar="[PATH]",
              help="Response cache (SQLite): rows answered before are answered from it, free, "
                   "and new answers are stored. PATH: a file or directory [default: the "
                   "user's cache directory; see `llmframe cache info`]. Write --cache=PATH "
                   "or put --cache after REQUESTS. Also on with LLMFRAME_CACHE=1.")
@click.option("--no-cache", is_flag=True, help="No response cache (even with LLMFRAME_CACHE).")
@click.option("--cache-truncated", is_flag=True,
              help="Also cache answers cut by max_tokens (finish_reason length).")
@click.option("--resume", is_flag=True,
              help="Continue a run whose outputs exist: send only rows with no result yet.")
@click.option("--retry-errors", is_flag=True,
              help="Like --resume, but also send again the rows in the errors file (the old "
                   "errors file is kept as ERRORS.prev).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--grace", type=float, default=5.0,
              help="On Ctrl-C/SIGTERM: seconds to let in-flight requests finish before "
                   "cancelling them (a second Ctrl-C cancels at once).")
@click.option("--proxy", default=None, metavar="URL",
              help="HTTP proxy for every endpoint, http://[USER:PASSWORD@]HOST:PORT (https goes "
                   "through it with CONNECT, encrypted end to end), instead of HTTPS_PROXY / "
                   "HTTP_PROXY / ALL_PROXY / NO_PROXY, which are honoured by default. An "
                   "endpoint's proxy=URL|none wins. Prefer HTTPS_PROXY for a password: "
                   "command lines are visible to other users.")
@click.option("--no-proxy", "no_proxy", is_flag=True,
              help="Connect directly, ignoring HTTPS_PROXY / HTTP_PROXY / ALL_PROXY.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None,
              metavar="[auto|ADDRESS]",
              help="Run on Ray Data (pip install 'llmframe[ray]'): auto joins RAY_ADDRESS's "
                   "cluster (else a local Ray), or give the head's ADDRESS. --rps and "
                   "--concurrency hold for the whole job. Writes the same save and errors "
                   "files; each block's results are also kept in SAVE.ray/ for --resume.")
@click.option("--workers", type=click.IntRange(min=1, max=64), default=None,
              help="Processes to shard rows over (the rate and concurrency are split "
                   "between them exactly). Use 2+ only for thousands of requests/s. With "
                   "--ray: the number of Ray actors. [default: 1; with --ray: 2]")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar. [default: on when stderr is a terminal]")
def run(requests: Path | None, requests_alias: Path | None, endpoint_specs: tuple[str, ...],
        request_urls: tuple[str, ...], endpoints_file: Path | None, mock: int | None,
        mock_latency: str, mock_faults: str,
        rps: float, concurrency: int, tpm: float | None, budget: float | None,
        output_tokens: int, tokenizer: str, dry_run: bool,
        max_attempts: int, save: Path | None, errors: Path | None,
        api: str, model: str | None, system: str | None, params: tuple[str, ...],
        max_tokens: int | None, timeout: float, schema_file: Path | None, cache: str | None,
        no_cache: bool, cache_truncated: bool, resume: bool, retry_errors: bool,
        overwrite: bool, grace: float, proxy: str | None, no_proxy: bool,
        ray_address: str | None, workers: int | None, progress: bool | None) -> None:
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
    Structured output and a free rerun:
      llmframe run data/cities.jsonl --mock 1 --schema data/city.schema.json --cache

    \b
    Exit codes: 0 all rows ok; 1 some rows ended as errors; 2 bad usage or configuration
    (nothing sent); 3 stopped by the budget; 130 interrupted (Ctrl-C), 143 terminated
    (SIGTERM): finished rows are saved, rerun with --resume.
    """
    if requests and requests_alias and requests != requests_alias:
        msg = "give the requests file once: REQUESTS or --requests_filepath"
        raise UsageProblem(msg)
    path = requests or requests_alias
    if path is None and cache and cache.endswith(".jsonl"):  # `--cache requests.jsonl`
        path, cache = Path(cache), ""
    if path is None:
        msg = "no requests file: llmframe run REQUESTS.jsonl (see llmframe run --help)"
        raise UsageProblem(msg)
    body_params = dict(parse_param(p) for p in params)
    if max_tokens is not None:
        body_params["max_tokens"] = max_tokens
    try:
        endpoints = [parse_endpoint_spec(s) for s in (*endpoint_specs, *request_urls)]
        if endpoints_file is not None:
            endpoints += load_endpoints_file(endpoints_file)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None
    if not endpoints and not mock:
        msg = ("no endpoints: give --endpoint URL (repeatable), --endpoints-file FILE, "
               "or --mock N for local test endpoints")
        raise UsageProblem(msg)
    if mock and (workers or 1) > 1:
        msg = "--workers needs endpoints in their own processes; use serve-mock, not --mock"
        raise UsageProblem(msg)
    if progress is None:
        progress = sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        labels: dict[str, str] = {}
        if mock:
            endpoints += start_mocks(stack, mock, mock_latency, mock_faults, labels)
            click.echo(f"llmframe: using {mock} local test endpoint(s) started by --mock "
                       "(not a real LLM: answers echo the prompt)", err=True)
        options = {"rps": rps, "concurrency": concurrency, "max_attempts": max_attempts,
                   "timeout": timeout, "api": api, "model": model, "system": system,
                   "params": body_params, "tpm": tpm, "budget": budget,
                   "output_tokens": output_tokens, "tokenizer": tokenizer,
                   "proxy": _proxy_option(proxy, no_proxy),
                   **_output_options(schema_file, cache, no_cache, cache_truncated)}
        if ray_address is not None and not dry_run:  # a dry run sends nothing anywhere
            sys.exit(_ray_run(path, endpoints, options, ray_address, save, errors, resume,
                              retry_errors, overwrite, workers))
        if dry_run:
            sys.exit(_dry_run(path, endpoints, options, save=save, errors=errors,
                              resume=resume, retry_errors=retry_errors, overwrite=overwrite))
        code = _run(path, endpoints, options, labels, save=save, errors=errors,
                    resume=resume, retry_errors=retry_errors, overwrite=overwrite,
                    workers=workers or 1, progress=progress, grace=grace)
    sys.exit(code)


def _ray_run(path: Path, endpoints: list[Endpoint], options: dict[str, Any], address: str,
             save: Path | None, errors: Path | None, resume: bool, retry_errors: bool,
             overwrite: bool, workers: int | None) -> int:
    """``--ray``: the run on Ray Data (``_cli_ray``), ``workers`` actors (default 2)."""
    from ._cli_ray import run_on_ray

    if (resume or retry_errors) and overwrite:
        msg = "--overwrite cannot be combined with --resume or --retry-errors"
        raise UsageProblem(msg)
    save_path, errors_path = default_paths(path, save, errors)
    try:
        return run_on_ray(path, endpoints, {**options, "actors": workers or 2},
                          address=address, save=save_path,
                          errors=errors_path, resume=resume or retry_errors,
                          retry_errors=retry_errors, overwrite=overwrite,
                          echo=lambda text: click.echo(text, err=True))
    except (ConfigError, ImportError) as exc:
        raise UsageProblem(str(exc)) from None


def _proxy_option(proxy: str | None, no_proxy: bool) -> str | bool | None:
    """--proxy / --no-proxy as the run's ``proxy`` (checked now: nothing is sent otherwise)."""
    if proxy is not None and no_proxy:
        msg = "give --proxy or --no-proxy, not both"
        raise UsageProblem(msg)
    try:
        return False if no_proxy else check_proxy(proxy, "--proxy")
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None


def _output_options(schema_file: Path | None, cache: str | None, no_cache: bool,
                    cache_truncated: bool) -> dict[str, Any]:
    """The run options of --schema and --cache/--no-cache (checked now)."""
    if no_cache and cache is not None:
        msg = "give --cache or --no-cache, not both"
        raise UsageProblem(msg)
    options: dict[str, Any] = {"cache_truncated": cache_truncated}
    if schema_file is not None:
        options["schema"] = load_schema_file(schema_file)
    if no_cache:
        options["cache"] = False
    elif cache is not None:
        options["cache"] = cache or True
    return options


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



cli.add_command(serve_mock)
cli.add_command(cache)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
