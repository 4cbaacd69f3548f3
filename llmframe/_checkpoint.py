"""``checkpoint=`` for ``df.llm.complete``: finished rows persist, so a crashed kernel can
resume the same call.

The file is JSONL: a header line naming the input (row count and a fingerprint of the
prompts), then one line per finished row, appended as results complete and flushed at
least every second. Calling ``complete`` again with the same frame and checkpoint loads the
finished rows and sends only the others. A torn last line (a crash mid-write) is dropped.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from ._exceptions import ConfigError
from ._jsonl import JsonlWriter

__all__ = ["Checkpoint", "fingerprint"]

_VERSION = 1


def fingerprint(series: pl.Series, chunk_size: int = 100_000) -> str:
    """A digest of the prompts (and their nulls), chunk by chunk."""
    h = hashlib.blake2b(digest_size=16)
    for start in range(0, len(series), chunk_size):
        for text in series.slice(start, chunk_size).to_list():
            h.update(b"\x00" if text is None else text.encode("utf-8", "surrogatepass") + b"\x01")
    return h.hexdigest()


class Checkpoint:
    """Load what a checkpoint file holds; append new results to it."""

    def __init__(self, path: str | os.PathLike[str], series: pl.Series) -> None:
        self.path = Path(path)
        self.header = {"llmframe_checkpoint": _VERSION, "rows": len(series),
                       "fingerprint": fingerprint(series)}
        self.done: dict[int, dict[str, Any]] = {}
        self._writer: JsonlWriter | None = None
        self._loaded = False

    def load(self) -> dict[int, dict[str, Any]]:
        """Finished rows by index (empty for a new checkpoint). Fails if the file belongs
        to another input."""
        if self._loaded:
            return self.done
        self._loaded = True
        if not self.path.exists() or self.path.stat().st_size == 0:
            return {}
        with self.path.open("rb") as f:
            first = f.readline()
            try:
                header = orjson.loads(first)
            except orjson.JSONDecodeError:
                header = None
            if not isinstance(header, dict) or "llmframe_checkpoint" not in header:
                msg = f"{self.path} is not an llmframe checkpoint; pass another path"
                raise ConfigError(msg)
            if (header.get("rows"), header.get("fingerprint")) != (
                    self.header["rows"], self.header["fingerprint"]):
                msg = (f"checkpoint {self.path} was written for a different input "
                       f"({header.get('rows')} rows, other prompts); delete it or pass "
                       "another path")
                raise ConfigError(msg)
            good = [first]
            torn = False
            for raw in f:
                try:
                    record = orjson.loads(raw) if raw.endswith(b"\n") else None
                except orjson.JSONDecodeError:
                    record = None
                if isinstance(record, dict) and isinstance(record.get("index"), int):
                    self.done[record["index"]] = record
                    good.append(raw)
                else:
                    torn = True
        if torn:  # rewrite without the torn line(s), atomically
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(b"".join(good))
            os.replace(tmp, self.path)
        return self.done

    def open(self) -> None:
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._writer = JsonlWriter(self.path, append=True)
        if fresh:
            self._writer.write(self.header)
            self._writer.flush()

    def write(self, record: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(record)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
