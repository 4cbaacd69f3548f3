"""The file workflow: requests JSONL in, save and errors JSONL out, as results complete.

:func:`run_file` is the library's whole ``llmframe run``: validate, decide what to do
with existing outputs (refuse, resume, retry errors, overwrite), run (in this process or
sharded over ``workers``), and return the :class:`~llmframe.RunStats` summary. The CLI
parses arguments, calls it, and prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._config import EndpointLike, RunConfig, run_config
from ._engine import RunControl, stream_results
from ._exceptions import BudgetReached, ConfigError, InputFileError, Interrupted
from ._jsonl import iter_rows
from ._results import RunStats
from ._resume import prepare_outputs, read_scan
from ._runner import run_sync
from ._sinks import FileSink
from ._summary import Progress

__all__ = ["FileRun", "count_lines", "default_paths", "progress_total", "run_file",
           "run_file_async"]


def default_paths(requests: Path, save: str | os.PathLike[str] | None = None,
                  errors: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """The output files: ``save``/``errors`` if given, else ``data/x.jsonl`` ->
    ``data/x.save.jsonl``, ``data/x.errors.jsonl``."""
    stem = requests.name[: -len(".jsonl")] if requests.name.endswith(".jsonl") else requests.name
    return (Path(save) if save is not None else requests.with_name(f"{stem}.save.jsonl"),
            Path(errors) if errors is not None else requests.with_name(f"{stem}.errors.jsonl"))


def count_lines(path: Path, limit_bytes: int = 2 << 30) -> int | None:
    """Line count for the progress total (None for very large files)."""
    try:
        if path.stat().st_size > limit_bytes:
            return None
        count = 0
        last = b"\n"
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
        return count + (last != b"\n")
    except OSError:
        return None


@dataclass
class FileRun:
    """One run over a requests file. ``stats`` fills in as the run goes."""

    requests: Path
    save: Path
    errors: Path
    config: RunConfig
    progress: bool = True
    stats: RunStats = field(default_factory=RunStats)
    append: bool = False
    keep: Callable[[int], bool] | None = None
    control: RunControl = field(default_factory=RunControl)
    share: float = 1.0  # of limits learned from headers (a worker of N: 1/N)


def progress_total(run: FileRun) -> int | None:
    """Rows the progress bar expects: the file's lines, less those a resumed run has."""
    if not run.progress:
        return None
    total = count_lines(run.requests)
    if total is None:
        return None
    return total - len(getattr(run.keep, "done", ()))


async def run_file_async(run: FileRun) -> RunStats:
    """Stream ``run.requests`` through the engine, storing each result as it completes."""
    rows = iter_rows(run.requests, run.keep)
    total = progress_total(run)
    with FileSink(run.save, run.errors, append=run.append) as sink:
        bar = Progress(run.stats, total, enabled=run.progress,
                       desc=os.fspath(run.requests.name))
        try:
            async for batch in stream_results(rows, run.config, run.stats, run.control,
                                              sink=sink, label=LineLabel(run.requests.name),
                                              share=run.share):
                bar.update(len(batch))
        finally:
            bar.close()
    return run.stats


class LineLabel:
    """``label(index)`` -> ``"requests.jsonl line 8"`` (picklable, for ``--workers``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, index: int) -> str:
        return f"{self.name} line {index + 1}"


def _paths(requests: str | os.PathLike[str], save: str | os.PathLike[str] | None,
           errors: str | os.PathLike[str] | None) -> tuple[Path, Path, Path]:
    path = Path(requests)
    if not path.exists():
        msg = f"requests file not found: {path}"
        raise InputFileError(msg)
    if path.is_dir():
        msg = f"requests file is a directory: {path}"
        raise InputFileError(msg)
    save_path, errors_path = default_paths(path, save, errors)
    resolved = {p.resolve() for p in (path, save_path, errors_path)}
    if len(resolved) < 3:
        msg = "the requests, save and errors files must be three different files"
        raise ConfigError(msg)
    return path, save_path, errors_path


def run_file(
    requests: str | os.PathLike[str],
    *,
    endpoints: EndpointLike | Iterable[EndpointLike] | None = None,
    config: RunConfig | None = None,
    save: str | os.PathLike[str] | None = None,
    errors: str | os.PathLike[str] | None = None,
    resume: bool = False,
    retry_errors: bool = False,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
    grace: float = 5.0,
    on_note: Callable[[str], None] | None = None,
    **options: Any,
) -> RunStats:
    """Send every line of ``requests`` and write ``save`` and ``errors`` JSONL files.

    Run options as in ``df.llm.complete``: ``config=RunConfig(...)`` and/or its fields as
    keywords (``rps``, ``concurrency``, ``max_attempts``, ``model``, ...). The outputs
    default to ``REQUESTS.save.jsonl`` / ``REQUESTS.errors.jsonl``; existing outputs are
    refused (:class:`ConfigError`) unless ``resume`` (send only rows without a result),
    ``retry_errors`` (also send the failed rows again) or ``overwrite``. ``workers > 1``
    shards the rows over processes. Returns the run's :class:`RunStats` (``rows``, ``ok``,
    ``errors``, ``retries``, ``endpoints``; ``str()`` is the summary). Ctrl-C / SIGTERM
    stop it gracefully (``grace`` seconds for requests in flight) and raise
    :class:`Interrupted` with the stats in ``exc.partial``; a ``budget`` that stops the
    run raises :class:`BudgetReached` (stats in ``exc.partial``; resume to send the rest).
    ``on_note`` receives notes such as "resuming: 120 rows already answered".

    >>> import tempfile, pathlib
    >>> from llmframe.testing import MockServer
    >>> req = pathlib.Path(tempfile.mkdtemp()) / "requests.jsonl"
    >>> _ = req.write_text('{"input": "hi", "id": 7}\\n{"input": "bye"}\\n')
    >>> with MockServer() as srv:
    ...     stats = run_file(req, endpoints=[srv.url], rps=100)
    >>> stats.rows, stats.ok, stats.errors
    (2, 2, 0)
    >>> sorted(req.with_name("requests.save.jsonl").read_text().splitlines())[0][:64]
    '{"index":0,"request":{"input":"hi","id":7},"response":"echo: hi"'
    """
    from ._workers import run_sharded

    config = run_config(endpoints, config, **options)
    path, save_path, errors_path = _paths(requests, save, errors)
    if overwrite and (resume or retry_errors):
        msg = "overwrite cannot be combined with resume or retry_errors"
        raise ConfigError(msg)
    keep, append, note = prepare_outputs(save_path, errors_path, resume=resume,
                                         retry_errors=retry_errors, overwrite=overwrite)
    if note and on_note is not None:
        on_note(note)
    if append and config.budget is not None:
        config = budget_left(config, read_scan(save_path).spent, save_path, on_note)
    job = FileRun(path, save_path, errors_path, config, progress=progress, append=append,
                  keep=keep)
    try:
        if workers > 1:
            run_sharded(job, workers, grace=grace)
        else:
            run_sync(lambda: run_file_async(job), grace=grace,
                     on_interrupt=job.control.stop_threadsafe)
    except KeyboardInterrupt:
        msg = (f"interrupted: {job.stats.done:,} rows finished and saved; run again with "
               "resume=True (--resume) to send the rest")
        raise Interrupted(msg, job.stats) from None
    if job.stats.stopped_by == "budget":
        stats = job.stats
        raise budget_reached(stats.not_sent, stats.cost_usd, stats,
                             "--resume and a larger --budget")
    return job.stats


def budget_left(config: RunConfig, spent: float, where: Path,
                on_note: Callable[[str], None] | None) -> RunConfig:
    """The budget is for the whole job: what the answers already saved in ``where`` (the
    save file, a checkpoint) cost counts."""
    if not spent:
        return config
    left = config.budget - spent  # type: ignore[operator]
    if on_note is not None:
        on_note(f"budget: ${spent:.4f} already spent by the answers in {where.name}; "
                f"${max(left, 0):.4f} of ${config.budget:.4f} left")
    return replace(config, budget=max(left, 1e-12))  # nothing fits: stops at once


def budget_reached(not_sent: int, spent: float | None, partial: Any, how: str
                   ) -> BudgetReached:
    """The exception of a run the budget stopped (``how``: how to send the rest)."""
    msg = f"stopped by the budget: {not_sent:,} rows not sent; rerun with {how}"
    return BudgetReached(msg, partial, not_sent=not_sent, spent=spent or 0.0)

