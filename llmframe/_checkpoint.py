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
from ._json import dumps
from ._results import Result
from ._sinks import JsonlWriter, clean_lines

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
    """Load what a checkpoint file holds; store new results in it (a result sink)."""

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
        self._check_header()

        def accept(record: Any) -> bool:
            index = record.get("index") if isinstance(record, dict) else None
            if isinstance(index, bool) or not isinstance(index, int):
                return False
            self.done[index] = record
            return True

        clean_lines(self.path, accept, skip_first=True)  # drops a torn last line
        return self.done

    def _check_header(self) -> None:
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

    def open(self) -> None:
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._writer = JsonlWriter(self.path, append=True)
        if fresh:
            self._writer.write(self.header)
            self._writer.flush()

    def write(self, result: Result) -> None:
        assert self._writer is not None
        self._writer.write(record_of(result))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()


def record_of(r: Result) -> dict[str, Any]:
    """A result as a checkpoint line (and as the polars columns read it back)."""
    response = r.response
    if response is not None and not isinstance(response, str):
        response = dumps(response).decode()
    return {
        "index": r.index, "response": response if r.error is None else None,
        "error": r.error, "attempts": r.attempts, "endpoint": r.endpoint,
        "latency_ms": None if r.latency is None else r.latency * 1000,
        "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
        "cached_tokens": r.cached_tokens, "reasoning_tokens": r.reasoning_tokens,
        "cost_usd": r.cost_usd,
        "finish_reason": r.finish_reason, "error_type": r.error_type, "status": r.status,
        "cached": r.cached, "raw_response": r.raw_response,
    }
