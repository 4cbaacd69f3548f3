"""JSONL <-> polars: ``read_jsonl`` and ``write_results``, in the CLI's formats.

``read_jsonl(path) -> llm.complete("input", metadata=True) -> write_results(df, save,
errors)`` writes the same lines as ``llmframe run path`` (but ``latency_ms``, and the
order of lines: the CLI writes in completion order; both carry ``index``).

The frame mirrors the file layout, so nothing collides: ``index`` (the line number),
``input`` (the text to send), ``request`` (the whole input line as JSON text, verbatim —
decode it with ``pl.col("request").str.json_decode()`` to get its fields as a Struct),
``read_error`` and ``raw_line`` for lines that cannot be sent.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from ._json import dumps, loads
from ._jsonl import NotJson, iter_rows
from ._protocols import RowError, prepare
from ._results import Result, Row
from ._sinks import FileSink

__all__ = ["read_jsonl", "request_frame", "write_results", "write_rows"]

_SCHEMA = {"index": pl.Int64, "input": pl.String, "request": pl.String,
           "read_error": pl.String, "raw_line": pl.String}


def read_jsonl(path: str | os.PathLike[str], *, api: str = "chat",
               warn: bool = True) -> pl.DataFrame:
    """Read a requests file into a frame: ``index``, ``input``, ``request``, ``read_error``,
    ``raw_line``.

    A line that cannot become a request for ``api`` (not JSON, not an object; for
    ``chat``/``completions`` also no string ``input``) is not fatal: its row has
    ``read_error`` (the reason) and ``input`` null, so ``llm.complete`` sends nothing for
    it, and ``write_results`` writes it to the errors file. A line that is not JSON keeps
    its text in ``raw_line``. For ``api="raw"`` any object is a request: pass
    ``pl.col("request")`` to ``complete(..., api="raw")``. A warning says how many lines
    cannot be sent.
    """
    df = request_frame(iter_rows(path), Path(path).name, api)
    bad = df["read_error"].is_not_null().sum()
    if bad and warn:
        warnings.warn(f"{path}: {bad} line(s) cannot be sent; see the read_error column",
                      stacklevel=2)
    return df


def request_frame(rows: Iterable[Row], name: str, api: str = "chat", *,
                  check: bool = True) -> pl.DataFrame:
    """:func:`read_jsonl`'s frame of some rows (``iter_rows``/``rows_of``) of file
    ``name``. ``check=False``: only lines that are no JSON object have a ``read_error``
    (the engine judges the rest, as ``llmframe run`` does)."""
    out: list[dict[str, Any]] = []
    for index, payload, reason in rows:
        if reason is None and api != "raw" and check:
            try:
                prepare(payload, api, system=None, params={})
            except RowError as exc:
                reason = f"{name} line {index + 1}: {exc}"
            else:
                if not isinstance(payload.get("input"), str):
                    reason = (f"{name} line {index + 1}: a \"messages\" row; "
                              "df.llm.complete sends the \"input\" text only: send such "
                              "rows with llmframe run or llmframe.run_file")
        text = payload.get("input") if reason is None and isinstance(payload, dict) else None
        text = text if isinstance(text, str) else None
        out.append({
            "index": index, "input": text,
            "request": None if isinstance(payload, NotJson) else dumps(payload).decode(),
            "read_error": reason,
            "raw_line": str(payload) if isinstance(payload, NotJson) else None,
        })
    return pl.DataFrame(out, schema=_SCHEMA)


def _result(row: dict[str, Any]) -> Result:
    request = row.get("request")
    payload: Any = NotJson(row.get("raw_line") or "") if request is None else loads(
        request.encode())
    latency = row.get("latency_ms")
    result = Result(
        row["index"], payload, response=row.get("response"), error=row.get("error"),
        attempts=row.get("attempts") or 0, endpoint=row.get("endpoint"),
        latency=None if latency is None else latency / 1000,
        prompt_tokens=row.get("prompt_tokens"), completion_tokens=row.get("completion_tokens"),
        cached_tokens=row.get("cached_tokens"), reasoning_tokens=row.get("reasoning_tokens"),
        cost_usd=row.get("cost_usd"), finish_reason=row.get("finish_reason"),
        error_type=row.get("error_type"), status=row.get("status"),
        cached=bool(row.get("cached")), raw_response=row.get("raw_response"),
    )
    if row.get("read_error") is not None:
        result.error, result.error_type = row["read_error"], "invalid_input"
    return result


def write_results(df: pl.DataFrame, save_path: str | os.PathLike[str],
                  errors_path: str | os.PathLike[str], *, api: str = "chat") -> tuple[int, int]:
    """Write answered rows to ``save_path`` and failed/unreadable rows to ``errors_path``.

    ``df`` is a frame from :func:`read_jsonl` after ``llm.complete`` (any frame with
    ``response``/``error`` works: without ``index`` the row number is used, without
    ``request`` the ``input`` column becomes the request). A row counts as answered when it
    has no error and either a response or, with ``metadata=True``, attempts — so an answer
    whose content was null is written too. With ``api="raw"`` the response (JSON text in
    the frame) is written as the JSON object it is, as ``llmframe run --api raw`` does.
    Returns ``(saved, errors)`` line counts.
    """
    if "index" not in df.columns:
        df = df.with_row_index("index")
    if "request" not in df.columns:
        df = df.with_columns(pl.when(pl.col("input").is_not_null()).then(
            pl.struct(pl.col("input")).struct.json_encode()).alias("request"))
    with FileSink(save_path, errors_path) as sink:  # type: ignore[arg-type]
        return write_rows(df, sink, api=api)


def write_rows(df: pl.DataFrame, sink: FileSink, *, api: str = "chat") -> tuple[int, int]:
    """:func:`write_results` into an open sink (the frame has an ``index`` and a
    ``request`` column)."""
    saved = errors = 0
    for row in df.iter_rows(named=True):
        result = _result(row)
        if api == "raw" and isinstance(result.response, str):
            result.response = loads(result.response.encode())
        if result.error is None and result.response is None and not row.get("attempts"):
            continue  # not sent (a null prompt)
        sink.write(result)
        if result.error is None:
            saved += 1
        else:
            errors += 1
    return saved, errors
