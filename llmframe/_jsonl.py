"""JSONL in and out, streaming.

Input: one JSON object per line, ``{"input": ...}`` or ``{"messages": [...]}``; other fields
pass through to the output. A line that cannot be read (bad UTF-8, not JSON) is not fatal:
it becomes a row with a reason, and so an error line in the errors file.

Output: ``{"index", <input fields>, "response", ...}`` lines in the save file and
``{"index", <input fields>, "error", ...}`` lines in the errors file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from ._engine import Result, Row
from ._exceptions import InputFileError

__all__ = ["JsonlWriter", "error_record", "iter_rows", "success_record"]

_BOM = b"\xef\xbb\xbf"


def iter_rows(path: str | os.PathLike[str],
              keep: Callable[[int], bool] | None = None) -> Iterator[Row]:
    """Yield ``(index, payload, reason)`` per non-blank line, reading one line at a time.

    ``index`` is the 0-based line number in the file. ``reason`` is None for a line that
    parsed; otherwise ``payload`` is ``{"input": <the line as text>}`` and ``reason`` says
    what is wrong, naming the file and line. ``keep(index)`` false skips a line before it
    is parsed (a worker's shard, or rows a resumed run already has).
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
            if keep is not None and not keep(index):
                continue
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
    """Append JSON lines to a file; ``flush()`` writes what is buffered (the run calls it
    every second, and a full buffer flushes itself).

    Lines are buffered and written with one ``os.write`` of whole lines on a file opened
    ``O_APPEND``, so several processes can append to the same file without a line ever
    being split or interleaved, and a crash loses at most the last second of lines (never
    leaves half a line but for a torn last write, which readers skip).
    """

    __slots__ = ("_buf", "_fd", "limit", "path")

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False,
                 limit: int = 1 << 18) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
        self._fd = os.open(self.path, flags, 0o644)
        self._buf = bytearray()
        self.limit = limit

    def write(self, record: dict[str, Any]) -> None:
        self._buf += orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if len(self._buf) >= self.limit:
            self.flush()

    def flush(self) -> None:
        view = memoryview(self._buf)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        view.release()
        self._buf.clear()

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
