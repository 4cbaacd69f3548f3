"""JSONL <-> polars: ``read_jsonl`` and ``write_results``, in the CLI's formats.

``read_jsonl(path) -> llm.complete("input") -> write_results(df, save, errors)`` writes the
same lines as ``llmframe run path`` (the order of lines may differ: the CLI writes in
completion order; both carry ``index``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import orjson
import polars as pl

from ._engine import Result
from ._jsonl import JsonlWriter, error_record, iter_rows, success_record
from ._protocols import RowError, prepare

__all__ = ["read_jsonl", "write_results"]

#: columns llmframe adds; everything else is an input field that passes through
_OURS = ("index", "response", "error", "read_error", "raw_line", "attempts", "endpoint",
         "latency_ms", "prompt_tokens", "completion_tokens", "finish_reason",
         "error_type", "status")


def read_jsonl(path: str | os.PathLike[str], *, warn: bool = True) -> pl.DataFrame:
    """Read a requests file into a frame with ``index`` (0-based line number) first.

    A line that cannot become a request (not JSON, not an object, no string ``input``) is
    not fatal: its row has ``read_error`` (the reason) and ``raw_line`` (the line as JSON
    text), with ``input`` null so ``llm.complete`` sends nothing for it; ``write_results``
    writes it to the errors file. A warning says how many such lines there were.
    """
    good: list[dict[str, Any]] = []
    bad = 0
    for index, payload, reason in iter_rows(path):
        if reason is None:
            try:
                prepare(payload, "chat", system=None, params={})
            except RowError as exc:
                reason = str(exc)
        if reason is None:
            good.append({"index": index, **payload, "read_error": None, "raw_line": None})
        else:
            bad += 1
            good.append({"index": index, "read_error": reason,
                         "raw_line": orjson.dumps(payload).decode()})
    if bad and warn:
        warnings.warn(f"{path}: {bad} line(s) cannot be sent; see the read_error column",
                      stacklevel=2)
    if not good:
        return pl.DataFrame(schema={"index": pl.Int64, "input": pl.String,
                                    "read_error": pl.String, "raw_line": pl.String})
    df = pl.from_dicts(good, infer_schema_length=None, strict=False)
    if "input" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("input"))
    if df.schema["input"] != pl.String:
        df = df.with_columns(pl.col("input").cast(pl.String))
    front = ["index", "input"]
    return df.select(front + [c for c in df.columns if c not in front])


def write_results(df: pl.DataFrame, save_path: str | os.PathLike[str],
                  errors_path: str | os.PathLike[str]) -> tuple[int, int]:
    """Write answered rows to ``save_path`` and failed/unreadable rows to ``errors_path``.

    Null input fields are left out of the lines (as a missing field in the input would be).
    Returns ``(saved, errors)`` line counts.
    """
    if "index" not in df.columns:
        df = df.with_row_index("index")
    fields = [c for c in df.columns if c not in _OURS]
    saved = errors = 0
    with JsonlWriter(save_path) as save, JsonlWriter(errors_path) as errs:
        for row in df.iter_rows(named=True):
            payload: Any = {k: row[k] for k in fields if row[k] is not None}
            result = Result(
                row["index"], payload, response=row.get("response"), error=row.get("error"),
                attempts=row.get("attempts") or 0, endpoint=row.get("endpoint"),
                latency=None if row.get("latency_ms") is None else row["latency_ms"] / 1000,
                prompt_tokens=row.get("prompt_tokens"),
                completion_tokens=row.get("completion_tokens"),
                finish_reason=row.get("finish_reason"), error_type=row.get("error_type"),
                status=row.get("status"),
            )
            if row.get("read_error") is not None:
                result.payload = orjson.loads(row["raw_line"])
                result.error, result.error_type = row["read_error"], "invalid_input"
            if result.error is not None:
                errs.write(error_record(result))
                errors += 1
            elif result.response is not None:
                save.write(success_record(result))
                saved += 1
    return saved, errors
