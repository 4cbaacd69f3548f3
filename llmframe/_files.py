"""The file workflow: requests JSONL in, save and errors JSONL out, as results complete."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._config import RunConfig
from ._engine import RunControl, RunStats, stream_results
from ._jsonl import JsonlWriter, error_record, iter_rows, success_record
from ._summary import Progress

__all__ = ["FileRun", "count_lines", "default_paths", "progress_total", "run_file_async"]


def default_paths(requests: Path) -> tuple[Path, Path]:
    """``data/x.jsonl`` -> ``data/x.save.jsonl``, ``data/x.errors.jsonl``."""
    stem = requests.name[: -len(".jsonl")] if requests.name.endswith(".jsonl") else requests.name
    return requests.with_name(f"{stem}.save.jsonl"), requests.with_name(f"{stem}.errors.jsonl")


def count_lines(path: Path, limit_bytes: int = 2 << 30) -> int | None:
    """Non-blank-ish line count for the progress total (None for very large files)."""
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


def progress_total(run: FileRun) -> int | None:
    """Rows the progress bar expects: the file's lines, less those a resumed run has."""
    if not run.progress:
        return None
    total = count_lines(run.requests)
    if total is None:
        return None
    return total - len(getattr(run.keep, "done", ()))


async def run_file_async(run: FileRun) -> RunStats:
    """Stream ``run.requests`` through the engine, writing both files as results complete."""
    rows = iter_rows(run.requests, run.keep)
    total = progress_total(run)
    with JsonlWriter(run.save, append=run.append) as save, \
            JsonlWriter(run.errors, append=run.append) as errors:
        bar = Progress(run.stats, total, enabled=run.progress, desc=os.fspath(run.requests.name))

        async def flush_every_second() -> None:
            # durable as they complete: even with no new batch, nothing waits > 1 s in memory
            while True:
                await asyncio.sleep(1.0)
                save.flush()
                errors.flush()

        flusher = asyncio.get_running_loop().create_task(flush_every_second())
        try:
            async for batch in stream_results(rows, run.config, run.stats, run.control):
                for result in batch:
                    if result.error is None:
                        save.write(success_record(result))
                    else:
                        errors.write(error_record(result))
                bar.update(len(batch))
        finally:
            flusher.cancel()
            bar.close()
    return run.stats
