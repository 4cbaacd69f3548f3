"""JSONL in and out, streaming, in a layout where nothing collides.

Input: one JSON object per line, ``{"input": ...}`` or ``{"messages": [...]}`` (or, for
``--api raw``, any request body), with any other fields. A line that cannot be read (bad
UTF-8, not JSON, not an object) is not fatal: it becomes a row with a reason, and so an
error line in the errors file.

Output: the top level of every line holds only llmframe's keys; the input line itself is
kept, verbatim, under ``request`` — so an input field named ``index``, ``status``,
``error`` or anything else can never be overwritten::

    save:   {"index": 7, "request": {...the input line...}, "response": ..., "attempts": 1,
             "endpoint": ..., "latency_ms": ..., "finish_reason": ..., "usage": {...},
             "cost_usd": ..., "cached": true}
    errors: {"index": 7, "input": ..., "request": {...}, "error": ..., "error_type": ...,
             "status": ..., "attempts": ..., "endpoint": ..., "raw_response": ...}

With a schema, ``response`` is the parsed JSON object. ``cached`` appears (true) only on
answers from the response cache; ``raw_response`` only on rows whose answer broke the
schema.

``index`` is the 0-based line number in the requests file (what ``--resume`` matches on).
In the errors file ``input`` repeats the request's ``input`` (null when it has none), or is
the text of a line that is not JSON (whose ``request`` is then null).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from ._exceptions import InputFileError
from ._json import loads
from ._results import Result, Row

__all__ = ["NotJson", "error_record", "iter_rows", "rows_of", "success_record"]

_BOM = b"\xef\xbb\xbf"


class NotJson(str):
    """The text of an input line that is not JSON (a row payload that is no request)."""

    __slots__ = ()


def _open(path: Path) -> Any:
    try:
        return path.open("rb")
    except FileNotFoundError:
        msg = f"requests file not found: {path}"
        raise InputFileError(msg) from None
    except IsADirectoryError:
        msg = f"requests file is a directory: {path}"
        raise InputFileError(msg) from None
    except OSError as exc:
        msg = f"cannot open requests file {path}: {exc.strerror}"
        raise InputFileError(msg) from None


def iter_rows(path: str | os.PathLike[str],
              keep: Callable[[int], bool] | None = None) -> Iterator[Row]:
    """Yield ``(index, payload, reason)`` per non-blank line, reading one line at a time.

    ``index`` is the 0-based line number in the file. ``reason`` is None for a line that
    parsed to an object; otherwise it says what is wrong, naming the file and line, and
    ``payload`` is the parsed value, or :class:`NotJson` text for a line that is not JSON.
    ``keep(index)`` false skips a line before it is parsed (a worker's shard, or rows a
    resumed run already has).
    """
    path = Path(path)
    with _open(path) as handle:
        yield from rows_of(handle, path.name, keep=keep)


def rows_of(lines: Iterable[bytes], name: str, first: int = 0,
            keep: Callable[[int], bool] | None = None) -> Iterator[Row]:
    """:func:`iter_rows` of some lines of file ``name``, the first being line index
    ``first`` (a part of the file read on its own, by a Ray task say).

    >>> [r[0] for r in rows_of([b'{"input": "a"}\\n', b"\\n", b"[1]\\n"], "f", first=7)]
    [7, 9]
    """
    for index, line in enumerate(lines, first):
        if keep is not None and not keep(index):
            continue
        if index == 0 and line.startswith(_BOM):
            line = line[len(_BOM):]
        stripped = line.strip()
        if not stripped:
            continue
        try:
            payload = loads(stripped)
        except orjson.JSONDecodeError as exc:
            reason = _why_not_json(stripped, exc)
            text = NotJson(stripped.decode("utf-8", "replace"))
            yield index, text, f"{name} line {index + 1}: {reason}"
            continue
        if not isinstance(payload, dict):
            yield index, payload, (
                f"{name} line {index + 1}: expected a JSON object, "
                f"got {type(payload).__name__}"
            )
            continue
        yield index, payload, None


def _why_not_json(line: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as ude:
        return f"not valid UTF-8 (byte {ude.start})"
    return f"not valid JSON ({exc})"


def success_record(result: Result) -> dict[str, Any]:
    """The save-file line for a successful result."""
    record: dict[str, Any] = {
        "index": result.index, "request": result.payload, "response": result.response,
        "attempts": result.attempts, "endpoint": result.endpoint,
        "latency_ms": None if result.latency is None else round(result.latency * 1000, 2),
    }
    if result.finish_reason is not None:
        record["finish_reason"] = result.finish_reason
    if result.prompt_tokens is not None or result.completion_tokens is not None:
        usage = record["usage"] = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        if result.cached_tokens is not None:
            usage["cached_tokens"] = result.cached_tokens
        if result.reasoning_tokens is not None:
            usage["reasoning_tokens"] = result.reasoning_tokens
    if result.cost_usd is not None:
        record["cost_usd"] = result.cost_usd
        if result.cost_estimated:
            record["cost_estimated"] = True
    if result.cached:
        record["cached"] = True
    return record


def error_record(result: Result) -> dict[str, Any]:
    """The errors-file line for a failed row."""
    payload = result.payload
    if isinstance(payload, NotJson):
        text, request = str(payload), None
    else:
        text = payload.get("input") if isinstance(payload, dict) else None
        request = payload
    record = {
        "index": result.index, "input": text, "request": request, "error": result.error,
        "error_type": result.error_type, "status": result.status,
        "attempts": result.attempts, "endpoint": result.endpoint,
    }
    if result.raw_response is not None:  # the answer that broke the schema, verbatim
        record["raw_response"] = result.raw_response
        record["finish_reason"] = result.finish_reason
    if result.cost_usd is not None:  # what its answers cost, though none was kept
        record["cost_usd"] = result.cost_usd
    return record
