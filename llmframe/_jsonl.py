"""JSONL in and out, streaming.

Input: one JSON object per line, ``{"input": ...}`` or ``{"messages": [...]}``; other fields
pass through to the output. A line that cannot be read (bad UTF-8, not JSON) is not fatal:
it becomes a row with a reason, and so an error line in the errors file.

Output: ``{"index", <input fields>, "response", ...}`` lines in the save file and
``{"index", <input fields>, "error", ...}`` lines in the errors file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from ._engine import Result, Row
from ._exceptions import InputFileError

__all__ = ["JsonlWriter", "error_record", "iter_rows", "success_record"]

_BOM = b"\xef\xbb\xbf"


def iter_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """Yield ``(index, payload, reason)`` per non-blank line, reading one line at a time.

    ``index`` is the 0-based line number in the file. ``reason`` is None for a line that
    parsed; otherwise ``payload`` is ``{"input": <the line as text>}`` and ``reason`` says
    what is wrong, naming the file and line.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        msg = f"requests file not found: {path}"
        raise InputFileError(msg) from None
    except IsADirectoryError:
        msg = f"requests file is a directory: {path}"
        raise InputFileError(msg) from None
    except OSError as exc:
        msg = f"cannot open requests file {path}: {exc.strerror}"
        raise InputFileError(msg) from None
    with handle:
        for index, line in enumerate(handle):
            if index == 0 and line.startswith(_BOM):
                line = line[len(_BOM):]
            stripped = line.strip()
            if not stripped:
                continue
            try:
                payload = orjson.loads(stripped)
            except orjson.JSONDecodeError as exc:
                reason = _why_not_json(stripped, exc)
                text = stripped.decode("utf-8", "replace")
                yield index, {"input": text}, f"{path.name} line {index + 1}: {reason}"
                continue
            if not isinstance(payload, dict):
                yield index, payload, (
                    f"{path.name} line {index + 1}: expected a JSON object, "
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
    record: dict[str, Any] = {"index": result.index}
    if isinstance(result.payload, dict):
        record.update(result.payload)
    record["response"] = result.response
    record["attempts"] = result.attempts
    record["endpoint"] = result.endpoint
    record["latency_ms"] = None if result.latency is None else round(result.latency * 1000, 2)
    if result.finish_reason is not None:
        record["finish_reason"] = result.finish_reason
    if result.prompt_tokens is not None or result.completion_tokens is not None:
        record["usage"] = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
    return record


def error_record(result: Result) -> dict[str, Any]:
    """The errors-file line for a failed row."""
    record: dict[str, Any] = {"index": result.index}
    if isinstance(result.payload, dict):
        record.update(result.payload)
    else:
        record["input"] = result.payload
    record["error"] = result.error
    record["error_type"] = result.error_type
    record["status"] = result.status
    record["attempts"] = result.attempts
    record["endpoint"] = result.endpoint
    return record


class JsonlWriter:
    """Append JSON lines to a file, flushed at least every ``flush_every`` seconds."""

    __slots__ = ("_file", "_last_flush", "flush_every", "path")

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False,
                 flush_every: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = self.path.open("ab" if append else "wb")
        self.flush_every = flush_every
        self._last_flush = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def tick(self) -> None:
        """Flush if the last flush is older than ``flush_every``."""
        now = time.monotonic()
        if now - self._last_flush >= self.flush_every:
            self._file.flush()
            self._last_flush = now

    def close(self) -> None:
        self._file.flush()
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
