"""Where results go as they complete: one interface (``write(result)``, ``flush()``,
``close()``), a JSONL writer of whole lines, and one reader that drops torn lines.

- :class:`JsonlWriter` appends lines with one ``os.write`` of whole lines on a file opened
  ``O_APPEND``, so several processes can append to one file without a line ever being
  split or interleaved, and a crash loses at most what was buffered since the last flush
  (the engine flushes every second).
- :class:`FileSink` writes answered rows to the save file and failed rows to the errors
  file, in the layout of ``_jsonl`` (the CLI, ``run_file`` and the workers use it).
- :func:`clean_lines` reads a JSONL file back, keeps the complete records a predicate
  accepts, and rewrites the file without the others (fsync'ed, atomic) — for ``--resume``
  and the polars checkpoint alike.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson

from ._json import dumps
from ._jsonl import error_record, success_record
from ._results import Result

__all__ = ["FileSink", "JsonlWriter", "Sink", "clean_lines"]


class Sink(Protocol):
    """Where results are stored the moment they exist. The engine calls ``write`` per
    result and ``flush`` every second and at the end; the owner calls ``close``."""

    def write(self, result: Result) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonlWriter:
    """Append JSON lines to a file; ``flush()`` writes what is buffered (a full buffer
    flushes itself)."""

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
        self._buf += dumps(record, newline=True)
        if len(self._buf) >= self.limit:
            self.flush()

    def flush(self) -> None:
        view = memoryview(self._buf)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        finally:
            view.release()
        self._buf.clear()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileSink:
    """Answered rows to ``save``, failed rows to ``errors``."""

    __slots__ = ("errors", "save")

    def __init__(self, save: str | os.PathLike[str], errors: str | os.PathLike[str], *,
                 append: bool = False) -> None:
        self.save = JsonlWriter(save, append=append)
        self.errors = JsonlWriter(errors, append=append)

    def write(self, result: Result) -> None:
        if result.error is None:
            self.save.write(success_record(result))
        else:
            self.errors.write(error_record(result))

    def flush(self) -> None:
        self.save.flush()
        self.errors.flush()

    def close(self) -> None:
        try:
            self.save.close()
        finally:
            self.errors.close()

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(OSError):  # already failing (StoreError): raise the cause
            self.close()


def clean_lines(path: Path, accept: Callable[[Any], bool], *, skip_first: bool = False) -> int:
    r"""Call ``accept(record)`` once for each complete JSON line of ``path``, in order; drop
    the lines it refuses and the torn ones (no newline, not JSON) by rewriting the file
    without them (fsync'ed, then atomically renamed). Returns how many were dropped.
    ``skip_first``: keep the first line (a header) without asking.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = p.write_bytes(b'{"index": 1}\n{"index": "x"}\n{"index": 2}\n{"ind')
    >>> clean_lines(p, lambda r: isinstance(r.get("index"), int)), p.read_bytes()
    (2, b'{"index": 1}\n{"index": 2}\n')
    """
    if not path.exists():
        return 0
    bad: set[int] = set()
    with path.open("rb") as f:
        for number, raw in enumerate(f):
            if skip_first and number == 0:
                continue
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw) if raw.endswith(b"\n") else None
            except orjson.JSONDecodeError:
                record = None
            if record is None or not accept(record):
                bad.add(number)
    if bad:
        tmp = path.with_name(path.name + ".tmp")
        with path.open("rb") as src, tmp.open("wb") as dst:
            for number, raw in enumerate(src):
                if number not in bad and raw.strip():
                    dst.write(raw)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, path)
    return len(bad)
