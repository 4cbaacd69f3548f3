"""``llmframe run requests.jsonl --ray [auto|ADDRESS]``: the file run on Ray Data.

The driver reads the file (``read_jsonl``: a line that cannot be sent becomes an error
row), ``llmframe.ray.complete`` runs it over the cluster's actors with the job-wide limits,
and the answers and errors are written to the same save and errors files as a local run.
Each block's results are also kept as Parquet in ``SAVE.ray/`` the moment the block is
done, so ``--resume`` after a crash of the driver sends only the rows without a result.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl

from ._cli_common import EXIT_BUDGET, EXIT_OK, EXIT_ROW_ERRORS, UsageProblem
from ._config import Endpoint
from ._exceptions import BudgetReached, ConfigError
from ._results import NOT_SENT

__all__ = ["run_on_ray"]


def results_dir(save: Path) -> Path:
    """Where the blocks' results are kept: ``x.save.jsonl`` -> ``x.save.jsonl.ray/``."""
    return save.with_name(save.name + ".ray")


def _reachable(address: str) -> None:
    """A head that does not answer: say so now (Ray itself retries for minutes)."""
    import socket

    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageProblem(f"--ray {address}: expected auto or HOST:PORT of the Ray head")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        msg = (f"--ray {address}: cannot reach the Ray head there ({exc}); start it with "
               "`ray start --head` or give its address")
        raise UsageProblem(msg) from None


def _quiet(ray: Any) -> None:
    """Ray Data's own progress logs and hints would bury the run's summary."""
    import logging
    import warnings

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # "progress bars disabled"
    warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\..*")


def run_on_ray(path: Path, endpoints: list[Endpoint], options: dict[str, Any], *,
               address: str, save: Path, errors: Path, resume: bool, overwrite: bool,
               echo: Any, retry_errors: bool = False) -> int:
    """Run ``path`` on Ray; returns the exit code (0 all answered, 1 some errors, 3 the
    budget stopped it)."""
    from . import ray as llm_ray
    from ._frame_io import read_jsonl, write_results

    parts = results_dir(save)
    existing = [p for p in (save, errors, parts)
                if (p.is_dir() and any(p.iterdir())) or (p.is_file() and p.stat().st_size)]
    if existing and not (resume or overwrite):
        msg = (f"outputs already exist: {', '.join(map(str, existing))}. Pass --resume to "
               "send only the rows without a result, or --overwrite to replace them")
        raise UsageProblem(msg)
    if resume and existing and parts not in existing:
        msg = (f"{save} was written by a run without --ray (no {parts}/): resume it the way "
               "it was run, or pass --overwrite")
        raise UsageProblem(msg)
    ray = llm_ray._ray()
    _quiet(ray)
    if not ray.is_initialized():
        _reachable(address)
        ray.init(address=None if address == "auto" else address, logging_level="ERROR",
                 log_to_driver=False)
    if overwrite:
        shutil.rmtree(parts, ignore_errors=True)
    api = options.get("api", "chat")
    try:
        frame = read_jsonl(path, api=api, warn=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if retry_errors and errors.is_file():  # as a local --retry-errors: the old one kept
        shutil.copyfile(errors, errors.with_name(errors.name + ".prev"))
    started = time.monotonic()
    column = "request" if api == "raw" else "input"
    stopped = None
    try:
        out = llm_ray.complete(frame, column, endpoints=endpoints, output=parts,
                               metadata=True, retry_errors=retry_errors, **options)
    except BudgetReached as exc:  # the rows not sent have no result: --resume sends them
        stopped = exc
        out = exc.partial.filter(pl.col("error").ne_missing(NOT_SENT))
    saved, failed = write_results(out, save, errors, api=api)
    seconds = time.monotonic() - started
    echo(f"done on Ray: {saved + failed:,} rows in {seconds:.1f} s: {saved:,} ok, "
         f"{failed:,} errors ({options.get('actors', 2)} actors on "
         f"{out['node'].drop_nulls().n_unique()} nodes)\n"
         f"  answers: {save}  ({saved:,} lines)\n  errors:  {errors}  ({failed:,} lines)\n"
         f"  blocks:  {parts}/ (kept for --resume)")
    if stopped is not None:
        echo(f"llmframe: stopped by the budget (${stopped.spent:.4f} spent by the job): "
             f"{stopped.not_sent:,} rows not sent; rerun with --resume and a larger --budget")
        return EXIT_BUDGET
    return EXIT_ROW_ERRORS if failed else EXIT_OK
