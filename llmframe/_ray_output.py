"""What a Ray job keeps in ``output=DIR`` (``llmframe.ray``, ``llmframe run --ray``).

Each block's results are a Parquet file ``DIR/part-<uuid>.parquet``, written whole or not
at all by the actor that ran it, keyed by row (``__llmframe_row`` for a DataFrame's
position, ``id_column`` for a Dataset, ``index`` for a file's line); ``DIR/llmframe.json``
records the options they were made with. A rerun reads what is there and sends only the
rows without a result; the functions here read it, check that it belongs to this job,
and (``retry_errors``) take the error rows out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypeVar

import polars as pl

from ._exceptions import ConfigError
from ._ray_actor import COST, Job, write_part

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)

__all__ = ["check_ids", "done_results", "forget_errors", "one_per_row", "output_dir",
           "part_files", "same_rows", "spent_before", "write_manifest"]

ROW = "__llmframe_row"  # a DataFrame's row position, the key of its results


def part_files(out_dir: str | os.PathLike[str]) -> list[Path]:
    """The part files of a results directory (``output=DIR``, ``SAVE.ray/``), by name."""
    return sorted(Path(out_dir).glob("part-*.parquet"))


def output_dir(output: str | os.PathLike[str]) -> str:
    path = Path(output).expanduser().resolve()
    if path.exists() and not path.is_dir():
        msg = f"llmframe.ray: output={str(output)!r} is a file; give a directory"
        raise ConfigError(msg)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"llmframe.ray: output={str(output)!r}: cannot create it ({exc})"
        raise ConfigError(msg) from None
    return str(path)


def write_manifest(job: Job, key: str) -> None:
    """``DIR/llmframe.json`` says how the results there were made; a rerun with other
    options would mix two kinds of rows: refused."""
    if job.out_dir is None:
        return
    schema = job.config.schema
    made = {"column": job.column, "key": key, "response_column": job.response,
            "error_column": job.error, "metadata": job.metadata, "api": job.config.api,
            "schema": None if schema is None else schema.key}
    path = Path(job.out_dir) / "llmframe.json"
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if before != made:
            changed = (", ".join(k for k in made if not before or before.get(k) != made[k])
                       if isinstance(before, dict) else "unreadable")
            msg = (f"llmframe.ray: output={job.out_dir!r} holds results made with other "
                   f"options ({changed}): give another directory, or delete it")
            raise ConfigError(msg)
    else:
        path.write_text(json.dumps(made))


def forget_errors(out_dir: str, error: str) -> None:
    """``retry_errors``: the rows whose result is an error leave the part files (each
    rewritten whole or not at all), so the run sends them again."""
    for part in part_files(out_dir):
        try:
            df = pl.read_parquet(part)
        except Exception:  # reported by _done, with the fix
            return
        if error not in df.columns:
            return
        keep = df.filter(pl.col(error).is_null())
        if keep.height == df.height:
            continue
        write_part(keep, part)


def done_results(job: Job, key: str, retry_errors: bool = False) -> pl.DataFrame | None:
    """The results already in the job's ``out_dir`` (one per ``key``), or None."""
    out_dir = job.out_dir
    if out_dir is not None and retry_errors:
        forget_errors(out_dir, job.error)
    files = [] if out_dir is None else part_files(out_dir)
    if not files:
        return None
    try:
        done = pl.read_parquet(files)
    except Exception as exc:  # a foreign or broken file: polars' own error types
        msg = (f"llmframe.ray: output={out_dir!r}: cannot read its part files ({exc}); "
               "give another directory, or remove the broken file")
        raise ConfigError(msg) from None
    if key not in done.columns:
        msg = (f"llmframe.ray: output={out_dir!r} holds part files llmframe did not write "
               f"(no {key!r} column): give another directory")
        raise ConfigError(msg)
    if COST not in done.columns:  # written before costs were kept
        done = done.with_columns(pl.lit(None, dtype=pl.Float64).alias(COST))
    if key != ROW:
        check_ids(done, key, job)
    return one_per_row(done, key, job.error)


def one_per_row(frame: Frame, key: str, error: str) -> Frame:
    """A block run twice (its actor died after writing it) has two results per row: an
    answer wins over an error, else the first.

    >>> f = pl.DataFrame({"i": [0, 1, 0], "error": ["boom", None, None]})
    >>> one_per_row(f, "i", "error").sort("i").rows()
    [(0, None), (1, None)]
    """
    frame = frame.sort(pl.col(error).is_not_null(), maintain_order=True)
    return frame.unique(subset=key, keep="first", maintain_order=True)


def check_ids(done: pl.DataFrame, id_column: str, job: Job) -> None:
    """A rerun matches rows by ``id_column``: a null id, or one id for two prompts, would
    leave rows out; refused, naming the id."""
    where = f"llmframe.ray: output={job.out_dir!r}, id_column {id_column!r}"
    if done[id_column].null_count():
        msg = (f"{where}: some rows have a null id, so a rerun cannot tell which of them "
               "have a result; give a column that names each row once")
        raise ConfigError(msg)
    twice = done.group_by(id_column).agg(pl.col(job.column).n_unique().alias("n")).filter(
        pl.col("n") > 1)
    if twice.height:
        msg = (f"{where}: the id {twice[id_column][0]!r} names rows with different "
               "prompts, so a rerun would leave rows out; give a column that names each "
               "row once")
        raise ConfigError(msg)


def same_rows(done: pl.DataFrame, table: pl.DataFrame, job: Job) -> pl.DataFrame:
    """The results in ``output`` DIR must be this frame's: same row count at most, and the
    same prompt at each position; else a ConfigError (another frame's DIR)."""
    where = f"llmframe.ray: output={job.out_dir!r}"
    beyond = done.filter(pl.col(ROW) >= table.height)
    if beyond.height:
        msg = (f"{where} holds results for rows up to {int(done[ROW].max()):,}, but the "
               f"frame has {table.height:,}: it was written for another frame; give "
               "another directory, or delete it")
        raise ConfigError(msg)
    mine = table.select(ROW, pl.col(job.column).alias("__now"))
    joined = done.select(ROW, job.column).join(mine, on=ROW, how="left")
    differ = joined.filter(pl.col(job.column).ne_missing(pl.col("__now")))
    if differ.height:
        msg = (f"{where} holds results for other prompts (row {int(differ[ROW][0])} "
               "differs): it was written for another frame; give another directory, or "
               "delete it")
        raise ConfigError(msg)
    return done


def spent_before(job: Job, done: pl.DataFrame | None) -> None:
    """The budget is for the whole job: what the results in ``output=`` cost counts."""
    if job.chunk and done is not None:
        import ray

        ray.get(job.hub.spent_before.remote(float(done[COST].sum() or 0.0)))  # before draws
