"""``llmframe run requests.jsonl --ray [auto|ADDRESS]``: the file run on Ray Data.

Ray tasks read the file in parts (``_ray_file``: every line keeps its index; a line that
is not a JSON object becomes an error row), the actors send each line's request as
``llmframe run`` does (``input`` or ``messages``, extra fields) with the job-wide limits
(``llmframe.ray.plan``), and write each block's results to ``SAVE.ray/`` the moment it is
done; the save and errors files are written from there at the end, the same lines as a
local run. ``--resume`` after a crash of the driver sends only the rows without a result;
the driver never holds the file or its results.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl

from ._cli_common import EXIT_BUDGET, EXIT_OK, EXIT_ROW_ERRORS, UsageProblem
from ._config import Endpoint
from ._exceptions import ConfigError
from ._files import budget_reached
from ._ray_actor import COST
from ._ray_file import dataset_of, done_lines, line_ranges, write_parts
from ._ray_output import forget_errors, part_files, write_manifest

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
    if not path.is_file():
        raise ConfigError(f"requests file not found: {path}")
    if not ray.is_initialized():
        _reachable(address)
        ray.init(address=None if address == "auto" else address, logging_level="ERROR",
                 log_to_driver=False)
    if overwrite:
        shutil.rmtree(parts, ignore_errors=True)
    if retry_errors and errors.is_file():  # as a local --retry-errors: the old one kept
        shutil.copyfile(errors, errors.with_name(errors.name + ".prev"))
    started = time.monotonic()
    counts = _run(ray, path, parts, endpoints, options, retry_errors)
    api = options.get("api", "chat")
    saved, failed = write_parts(parts, save, errors, api)
    seconds = time.monotonic() - started
    echo(f"done on Ray: {saved + failed:,} rows in {seconds:.1f} s: {saved:,} ok, "
         f"{failed:,} errors ({counts['rows']:,} rows run now, by "
         f"{options.get('actors', 2)} actors on {counts['nodes']} nodes)\n"
         f"  answers: {save}  ({saved:,} lines)\n  errors:  {errors}  ({failed:,} lines)\n"
         f"  blocks:  {parts}/ (kept for --resume)")
    if counts["not_sent"]:
        spent = _spent(parts)
        stopped = budget_reached(counts["not_sent"], spent, None,
                                 "--resume and a larger --budget")
        echo(f"llmframe: {stopped} (${spent:.4f} spent by the job)")
        return EXIT_BUDGET
    return EXIT_ROW_ERRORS if failed else EXIT_OK


def _run(ray: Any, path: Path, parts: Path, endpoints: list[Endpoint],
         options: dict[str, Any], retry_errors: bool) -> dict[str, int]:
    """Send the file's rows without a result in ``parts``; the counts of what was sent."""
    from tqdm.auto import tqdm

    from ._config import run_config
    from .ray import plan

    options = dict(options)
    actors = options.pop("actors", 2)
    config = run_config(endpoints=endpoints, **options)
    run = plan(ray, config, "request", actors=actors, output=parts, batch_size=256,
               max_concurrency=8, num_cpus=0.25, response_column="response",
               error_column="error", metadata=True, retry_errors=retry_errors, lines=path.name)
    write_manifest(run.job, "index")
    if retry_errors:
        forget_errors(str(parts), "error")
    if config.budget is not None:  # the budget is for the whole job
        ray.get(run.job.hub.spent_before.remote(_spent(parts)))
    try:
        ranges, total = line_ranges(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    done = done_lines(parts)
    counts = {"rows": 0, "ok": 0, "errors": 0, "not_sent": 0, "nodes": 0}
    if not ranges:  # an empty file
        return counts
    nodes: set[str] = set()
    with tqdm(total=max(total - len(done), 0), unit="row", disable=None) as bar:
        for batch in run(dataset_of(ray, path, ranges, done, config.api)).iter_batches(
                batch_format="numpy", batch_size=None):
            for key in ("rows", "ok", "errors", "not_sent"):
                counts[key] += int(batch[key].sum())
            nodes.update(batch["node"].tolist())
            bar.update(int(batch["rows"].sum()))
    counts["nodes"] = len(nodes)
    return counts


def _spent(parts: Path) -> float:
    """What the results in ``parts`` cost (USD)."""
    files = part_files(parts)
    if not files:
        return 0.0
    return float(pl.scan_parquet(files).select(pl.col(COST).sum()).collect().item() or 0.0)
