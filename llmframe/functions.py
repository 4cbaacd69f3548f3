"""The polars surface as plain functions: ``complete`` over a frame or an expression.

The namespace classes (``df.llm``, ``pl.col(...).llm``) only forward here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from ._checkpoint import Checkpoint
from ._config import API, EndpointLike, RunConfig
from ._engine import Result, Row, RunStats, stream_results
from ._exceptions import ConfigError, Interrupted
from ._runner import run_sync
from ._summary import Progress

__all__ = ["acomplete", "complete", "complete_expr", "recover"]

RESULT_DTYPE = pl.Struct({"response": pl.String, "error": pl.String})
_METADATA = {
    "attempts": pl.Int64, "endpoint": pl.String, "latency_ms": pl.Float64,
    "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "finish_reason": pl.String,
    "error_type": pl.String, "status": pl.Int64,
}
_last_partial: pl.DataFrame | None = None


@dataclass
class _Collected:
    """Per-row outputs, filled in place as results arrive (so an interrupt keeps them)."""

    n: int
    response: list[str | None] = field(init=False)
    error: list[str | None] = field(init=False)
    meta: dict[str, list[Any]] = field(init=False)
    answered: int = 0

    def __post_init__(self) -> None:
        self.response = [None] * self.n
        self.error = [None] * self.n
        self.meta = {name: [None] * self.n for name in _METADATA}

    def put(self, r: Result) -> None:
        i = r.index
        if r.error is None:
            resp = r.response
            self.response[i] = resp if isinstance(resp, str) or resp is None else (
                orjson.dumps(resp).decode())
        else:
            self.error[i] = r.error
        meta = self.meta
        meta["attempts"][i] = r.attempts
        meta["endpoint"][i] = r.endpoint
        meta["latency_ms"][i] = None if r.latency is None else r.latency * 1000
        meta["prompt_tokens"][i] = r.prompt_tokens
        meta["completion_tokens"][i] = r.completion_tokens
        meta["finish_reason"][i] = r.finish_reason
        meta["error_type"][i] = r.error_type
        meta["status"][i] = r.status
        self.answered += 1

    def record(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a checkpoint line."""
        rec = {"index": i, "response": self.response[i], "error": self.error[i]}
        rec.update((name, values[i]) for name, values in self.meta.items())
        return rec

    def restore(self, rec: Mapping[str, Any]) -> None:
        """Fill row ``rec["index"]`` from a checkpoint line."""
        i = rec["index"]
        if not 0 <= i < self.n:
            return
        self.response[i] = rec.get("response")
        self.error[i] = rec.get("error")
        for name, values in self.meta.items():
            values[i] = rec.get(name)
        self.answered += 1


def _prompts(df: pl.DataFrame, column: str | pl.Expr) -> pl.Series:
    expr = pl.col(column) if isinstance(column, str) else column
    if isinstance(column, str) and column not in df.columns:
        msg = f"column {column!r} not found; the frame has {', '.join(df.columns) or 'no columns'}"
        raise ConfigError(msg)
    return _check_strings(df.select(expr.alias("__llm_prompt")).to_series())


def _check_strings(series: pl.Series) -> pl.Series:
    if series.dtype not in (pl.String, pl.Null):
        msg = (f"the prompt column must be String, got {series.dtype}; cast it "
               "(pl.col(...).cast(pl.String)) or build text with pl.format(...)")
        raise ConfigError(msg)
    return series


def _rows(series: pl.Series, chunk_size: int,
          done: Mapping[int, Any] | None = None) -> Iterator[Row]:
    # one chunk of Python strings at a time: memory stays bounded by chunk_size
    for start in range(0, len(series), chunk_size):
        chunk = series.slice(start, chunk_size).to_list()
        for offset, text in enumerate(chunk):
            index = start + offset
            # null prompt: nothing is sent, the response stays null
            if text is not None and (done is None or index not in done):
                yield index, {"input": text}, None


async def _run_series(series: pl.Series, config: RunConfig, chunk_size: int, progress: bool,
                      out: _Collected, checkpoint: Checkpoint | None = None) -> None:
    stats = RunStats()
    done = checkpoint.load() if checkpoint is not None else {}
    for record in done.values():
        out.restore(record)
    total = len(series) - series.null_count() - len(done)
    bar = Progress(stats, total, enabled=progress and total > 0, desc="llm")
    flusher = None
    if checkpoint is not None:
        checkpoint.open()

        async def flush_every_second() -> None:
            while True:
                await asyncio.sleep(1.0)
                checkpoint.flush()

        flusher = asyncio.get_running_loop().create_task(flush_every_second())
    def store(r: Result) -> None:
        out.put(r)
        if checkpoint is not None:
            checkpoint.write(out.record(r.index))

    try:
        rows = _rows(series, chunk_size, done)
        async for batch in stream_results(rows, config, stats, on_result=store):
            bar.update(len(batch))
    finally:
        if flusher is not None:
            flusher.cancel()
        if checkpoint is not None:
            checkpoint.close()
        bar.close()


def _frame_out(df: pl.DataFrame, out: _Collected, *, output: str, error: str,
               metadata: bool) -> pl.DataFrame:
    cols = [pl.Series(output, out.response, dtype=pl.String),
            pl.Series(error, out.error, dtype=pl.String)]
    if metadata:
        cols += [pl.Series(name, out.meta[name], dtype=dtype) for name, dtype in _METADATA.items()]
    return df.with_columns(cols)


def _check(chunk_size: int, output: str, error: str) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        msg = f"chunk_size must be an integer >= 1, got {chunk_size!r}"
        raise ConfigError(msg)
    if output == error:
        msg = f"output and error must be different column names, both are {output!r}"
        raise ConfigError(msg)


def _begin(df: pl.DataFrame, column: str | pl.Expr, chunk_size: int, output: str, error: str,
           checkpoint: str | os.PathLike[str] | None, **run: Any
           ) -> tuple[RunConfig, pl.Series, _Collected, Checkpoint | None]:
    """Validate everything, before anything is sent; build the run's pieces."""
    _check(chunk_size, output, error)
    config = RunConfig(run.pop("endpoints"), **run)
    series = _prompts(df, column)
    ckpt = Checkpoint(checkpoint, series) if checkpoint is not None else None
    if ckpt is not None:
        ckpt.load()  # a checkpoint of another input fails here
    return config, series, _Collected(len(series)), ckpt


def complete(
    df: pl.DataFrame,
    column: str | pl.Expr,
    *,
    endpoints: EndpointLike | Iterable[EndpointLike],
    rps: float | None = None,
    concurrency: int = 256,
    max_attempts: int = 5,
    chunk_size: int = 10_000,
    timeout: float = 60.0,
    model: str | None = None,
    system: str | None = None,
    params: Mapping[str, Any] | None = None,
    api: API = "chat",
    output: str = "response",
    error: str = "error",
    metadata: bool = False,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
) -> pl.DataFrame:
    """Send one request per row of ``column`` and add ``output`` and ``error`` columns.

    Rows stay aligned with the input whatever order answers arrive in. ``error`` is null
    where the row succeeded. A null prompt sends nothing: its response and error are null.
    ``metadata=True`` adds attempts, endpoint, latency_ms, prompt_tokens, completion_tokens,
    finish_reason, error_type, status.
    Works in scripts and inside Jupyter's running loop (the run has its own loop in a
    worker thread). On Ctrl-C / kernel interrupt it stops promptly and raises
    :class:`llmframe.Interrupted`; the rows answered so far are in ``exc.partial`` and in
    ``llmframe.recover()``. With ``checkpoint="path.jsonl"`` finished rows are also
    persisted as they complete (flushed every second); calling again with the same frame
    and path — after a crash, in a new kernel — sends only the rows not yet finished.

    Examples
    --------
    >>> df = pl.DataFrame({"text": ["a cat", "a dog"]})  # doctest: +SKIP
    >>> df.llm.complete(pl.format("Describe {}", pl.col("text")),
    ...                 endpoints=["http://127.0.0.1:8000/v1"], rps=50)  # doctest: +SKIP
    """
    config, series, out, ckpt = _begin(
        df, column, chunk_size, output, error, checkpoint, endpoints=endpoints, rps=rps,
        concurrency=concurrency, max_attempts=max_attempts, timeout=timeout, model=model,
        system=system, params=params or {}, api=api)
    try:
        run_sync(lambda: _run_series(series, config, chunk_size, progress, out, ckpt))
    except KeyboardInterrupt:
        partial = _interrupted_frame(df, series, out, output=output, error=error,
                                     metadata=metadata)
        msg = (f"interrupted: {out.answered:,} of {len(series) - series.null_count():,} rows "
               "answered; the partial frame is in exc.partial and llmframe.recover()")
        raise Interrupted(msg, partial) from None
    return _frame_out(df, out, output=output, error=error, metadata=metadata)


def _interrupted_frame(df: pl.DataFrame, series: pl.Series, out: _Collected, **kw: Any
                       ) -> pl.DataFrame:
    global _last_partial
    for i, text in enumerate(series.to_list()):
        if text is not None and out.response[i] is None and out.error[i] is None:
            out.error[i] = "not answered: the run was interrupted"
    _last_partial = _frame_out(df, out, **kw)
    return _last_partial


def recover() -> pl.DataFrame | None:
    """The partial frame of the last interrupted ``complete`` call (None if none was)."""
    return _last_partial


async def acomplete(
    df: pl.DataFrame,
    column: str | pl.Expr,
    *,
    endpoints: EndpointLike | Iterable[EndpointLike],
    rps: float | None = None,
    concurrency: int = 256,
    max_attempts: int = 5,
    chunk_size: int = 10_000,
    timeout: float = 60.0,
    model: str | None = None,
    system: str | None = None,
    params: Mapping[str, Any] | None = None,
    api: API = "chat",
    output: str = "response",
    error: str = "error",
    metadata: bool = False,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
) -> pl.DataFrame:
    """``complete`` for async code: ``await df.llm.acomplete(...)`` on the caller's loop."""
    config, series, out, ckpt = _begin(
        df, column, chunk_size, output, error, checkpoint, endpoints=endpoints, rps=rps,
        concurrency=concurrency, max_attempts=max_attempts, timeout=timeout, model=model,
        system=system, params=params or {}, api=api)
    try:
        await _run_series(series, config, chunk_size, progress, out, ckpt)
    except asyncio.CancelledError:
        _interrupted_frame(df, series, out, output=output, error=error, metadata=metadata)
        raise
    return _frame_out(df, out, output=output, error=error, metadata=metadata)


def complete_expr(
    expr: pl.Expr,
    *,
    endpoints: EndpointLike | Iterable[EndpointLike],
    rps: float | None = None,
    concurrency: int = 256,
    max_attempts: int = 5,
    chunk_size: int = 10_000,
    timeout: float = 60.0,
    model: str | None = None,
    system: str | None = None,
    params: Mapping[str, Any] | None = None,
    api: API = "chat",
    progress: bool = True,
) -> pl.Expr:
    """``pl.col("prompt").llm.complete(...)``: a Struct ``{response, error}`` expression.

    The whole column is one run (one rate limit, one progress bar). ``return_dtype`` is
    given to ``map_batches`` so polars never calls the function on dummy data to learn the
    output type (which would send requests).
    """
    _check(chunk_size, "response", "error")
    config = RunConfig(endpoints, rps=rps, concurrency=concurrency, max_attempts=max_attempts,
                       timeout=timeout, model=model, system=system, params=params or {},
                       api=api)

    def run(series: pl.Series) -> pl.Series:
        _check_strings(series)
        out = _Collected(len(series))
        run_sync(lambda: _run_series(series, config, chunk_size, progress, out))
        return pl.Series(series.name, [
            {"response": r, "error": e} for r, e in zip(out.response, out.error, strict=True)
        ], dtype=RESULT_DTYPE)

    return expr.map_batches(run, return_dtype=RESULT_DTYPE)
