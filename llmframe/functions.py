"""The polars surface as plain functions: ``complete`` over a frame or an expression.

The namespace classes (``df.llm``, ``pl.col(...).llm``) only forward here. Every run
option comes from one place, :class:`~llmframe.RunConfig`: pass ``config=RunConfig(...)``,
or its fields as keywords (``rps=``, ``concurrency=``, ``max_attempts=``, ``timeout=``,
``model=``, ``system=``, ``params=``, ``api=``, ``max_retry_after=``, ``backoff_initial=``,
``backoff_max=``, ``transport=``), or both (the keywords win).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from ._checkpoint import Checkpoint, record_of
from ._columns import struct_column
from ._config import EndpointLike, RunConfig, run_config
from ._engine import stream_results
from ._exceptions import ConfigError, Interrupted
from ._files import budget_left, budget_reached
from ._json import loads
from ._results import NOT_SENT, Result, Row, RunStats
from ._runner import run_sync
from ._summary import Progress, format_summary

__all__ = ["acomplete", "complete", "complete_expr", "recover"]

RESULT_DTYPE = pl.Struct({"response": pl.String, "error": pl.String})
_METADATA = {
    "attempts": pl.Int64, "endpoint": pl.String, "latency_ms": pl.Float64,
    "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "cached_tokens": pl.Int64,
    "reasoning_tokens": pl.Int64, "cost_usd": pl.Float64, "finish_reason": pl.String,
    "error_type": pl.String, "status": pl.Int64, "cached": pl.Boolean,
    "raw_response": pl.String,
}
_last_partial: pl.DataFrame | None = None
_NOT_SENT = NOT_SENT


@dataclass
class _Collected:
    """Per-row outputs, filled in place as results arrive (so an interrupt keeps them)."""

    n: int
    schema: Any = None  # the run's Schema: responses are parsed objects of its dtype
    stats: RunStats = field(default_factory=RunStats)
    response: list[str | None] = field(init=False)
    error: list[str | None] = field(init=False)
    meta: dict[str, list[Any]] = field(init=False)
    answered: int = 0

    def __post_init__(self) -> None:
        self.response = [None] * self.n
        self.error = [None] * self.n
        self.meta = {name: [None] * self.n for name in _METADATA}

    @property
    def dtype(self) -> pl.DataType:
        return pl.String() if self.schema is None else self.schema.dtype

    def response_column(self, name: str) -> pl.Series:
        """The responses as a column: text, or the schema's Struct (a value polars still
        refuses makes its row an error, the others are kept)."""
        if self.schema is None:
            return pl.Series(name, self.response, dtype=pl.String)
        column, refused = struct_column(name, self.response, self.schema.dtype)
        for i, why in refused.items():
            raw = self.response[i]
            self.response[i] = None
            self.error[i] = f"the answer does not fit the column's dtype: {why}"
            self.meta["error_type"][i] = "invalid_output"
            self.meta["raw_response"][i] = orjson.dumps(raw, default=str).decode()
        return column

    def put(self, r: Result) -> None:
        record = record_of(r)
        if self.schema is not None:
            record["response"] = r.response  # parsed already
        self.restore(record)

    def mark_unanswered(self, series: pl.Series, why: str) -> None:
        """Give every row that was to be sent but has no result the error ``why``."""
        for i, text in enumerate(series.to_list()):
            if text is not None and self.response[i] is None and self.error[i] is None:
                self.error[i] = why

    def restore(self, rec: Mapping[str, Any]) -> None:
        """Fill row ``rec["index"]`` from a result or checkpoint line."""
        i = rec["index"]
        if not 0 <= i < self.n:
            return
        response = rec.get("response")
        if self.schema is not None and isinstance(response, str):  # from a checkpoint
            try:
                response = self.schema.restore(response)  # validated when stored
            except ValueError as exc:
                msg = (f"checkpoint row {i}: its response does not fit schema= (was the "
                       f"checkpoint written with another schema?): {exc}")
                raise ConfigError(msg) from None
        self.response[i] = response
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


def _payload(text: str, api: str) -> tuple[Any, str | None]:
    if api != "raw":
        return {"input": text}, None
    try:  # raw: the value is the request body itself
        body = loads(text.encode())
    except orjson.JSONDecodeError as exc:
        return {"input": text}, f"api='raw' needs a JSON object per row: {exc}"
    return body, None


def _rows(series: pl.Series, chunk_size: int, api: str,
          done: Mapping[int, Any] | None = None) -> Iterator[Row]:
    # one chunk of Python strings at a time: memory stays bounded by chunk_size
    for start in range(0, len(series), chunk_size):
        chunk = series.slice(start, chunk_size).to_list()
        for offset, text in enumerate(chunk):
            index = start + offset
            # null prompt: nothing is sent, the response stays null
            if text is not None and (done is None or index not in done):
                yield (index, *_payload(text, api))


def _row_label(index: int) -> str:
    return f"row {index}"


async def _run_series(series: pl.Series, config: RunConfig, chunk_size: int, progress: bool,
                      out: _Collected, checkpoint: Checkpoint | None = None) -> None:
    stats = out.stats
    done = checkpoint.load() if checkpoint is not None else {}
    spent = 0.0
    for record in done.values():
        out.restore(record)
        spent += record.get("cost_usd") or 0.0
    if checkpoint is not None and config.budget is not None:  # for the whole job
        config = budget_left(config, spent, checkpoint.path, None)
    total = len(series) - series.null_count() - len(done)
    bar = Progress(stats, total, enabled=progress and total > 0, desc="llm")
    if checkpoint is not None:
        checkpoint.open()
    try:
        rows = _rows(series, chunk_size, config.api, done)
        async for batch in stream_results(rows, config, stats, on_result=out.put,
                                          sink=checkpoint, label=_row_label):
            bar.update(len(batch))
    except BaseException:
        if checkpoint is not None:  # already failing: keep what can be kept, raise the cause
            with contextlib.suppress(OSError):
                checkpoint.close()
        raise
    else:
        if checkpoint is not None:
            checkpoint.close()
    finally:
        bar.close()
    if progress and total > 0:  # the summary, under the bar (in Jupyter too)
        print(format_summary(stats, [e.weight for e in stats.endpoints]), file=sys.stderr)


def _frame_out(df: pl.DataFrame, out: _Collected, *, output: str, error: str,
               metadata: bool) -> pl.DataFrame:
    cols = [out.response_column(output), pl.Series(error, out.error, dtype=pl.String)]
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


def _check_collisions(df: pl.DataFrame, output: str, error: str, metadata: bool) -> None:
    """The columns a call adds must not replace the frame's own: fail before sending."""
    added = [output, error, *(_METADATA if metadata else ())]
    taken = [c for c in added if c in df.columns]
    if taken:
        msg = (f"the frame already has column(s) {', '.join(map(repr, taken))}, which this "
               "call would overwrite; rename them, or pass output=/error= names that are "
               "free" + (" (metadata=True adds " + ", ".join(_METADATA) + ")" if metadata
                         else ""))
        raise ConfigError(msg)


def _begin(df: pl.DataFrame, column: str | pl.Expr, chunk_size: int, output: str, error: str,
           metadata: bool, checkpoint: str | os.PathLike[str] | None, config: RunConfig
           ) -> tuple[pl.Series, _Collected, Checkpoint | None]:
    """Validate everything, before anything is sent; build the run's pieces."""
    _check(chunk_size, output, error)
    _check_collisions(df, output, error, metadata)
    series = _prompts(df, column)
    ckpt = Checkpoint(checkpoint, series) if checkpoint is not None else None
    if ckpt is not None:
        ckpt.load()  # a checkpoint of another input fails here
    return series, _Collected(len(series), config.schema), ckpt


def complete(
    df: pl.DataFrame,
    column: str | pl.Expr,
    *,
    endpoints: EndpointLike | Iterable[EndpointLike] | None = None,
    config: RunConfig | None = None,
    output: str = "response",
    error: str = "error",
    metadata: bool = False,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    chunk_size: int = 10_000,
    **options: Any,
) -> pl.DataFrame:
    """Send one request per row of ``column`` and add ``output`` and ``error`` columns.

    Run options: ``config=RunConfig(...)`` and/or its fields as keywords (``rps``,
    ``concurrency``, ``max_attempts``, ``timeout``, ``model``, ``system``, ``params``,
    ``api``, ``max_retry_after``, ``backoff_initial``, ``backoff_max``, ``transport``).
    Rows stay aligned with the input whatever order answers arrive in. ``error`` is null
    where the row succeeded. A null prompt sends nothing: its response and error are null.
    ``metadata=True`` adds attempts, endpoint, latency_ms, prompt_tokens, completion_tokens,
    cached_tokens, reasoning_tokens, cost_usd (from the endpoint's prices), finish_reason,
    error_type, status, cached (answered from the response cache), raw_response (the text
    of an answer that broke the schema). A column the call would add that the frame already
    has is refused before anything is sent.
    ``schema=`` (a pydantic model, a ``pl.Struct`` or a JSON Schema dict) asks for JSON of
    that shape and makes ``output`` a Struct column of it; ``cache=True`` (or a path)
    answers rows already answered from the response cache, free (see RunConfig).
    Works in scripts and inside Jupyter's running loop (the run has its own loop in a
    worker thread). On Ctrl-C / kernel interrupt it stops promptly and raises
    :class:`llmframe.Interrupted`; the rows answered so far are in ``exc.partial`` and in
    ``llmframe.recover()``. With ``checkpoint="path.jsonl"`` finished rows are also
    persisted as they complete (flushed every second); calling again with the same frame
    and path — after a crash, in a new kernel — sends only the rows not yet finished.

    Examples
    --------
    >>> from llmframe.testing import MockServer
    >>> df = pl.DataFrame({"text": ["a cat", None]})
    >>> with MockServer() as srv:
    ...     out = df.llm.complete(pl.format("Describe {}", pl.col("text")),
    ...                           endpoints=[srv.url], rps=50, progress=False)
    >>> out["response"].to_list()
    ['echo: Describe a cat', None]
    """
    config = run_config(endpoints, config, **options)
    series, out, ckpt = _begin(df, column, chunk_size, output, error, metadata, checkpoint,
                               config)
    try:
        run_sync(lambda: _run_series(series, config, chunk_size, progress, out, ckpt))
    except KeyboardInterrupt:
        partial = _interrupted_frame(df, series, out, output=output, error=error,
                                     metadata=metadata)
        msg = (f"interrupted: {out.answered:,} of {len(series) - series.null_count():,} rows "
               "answered; the partial frame is in exc.partial and llmframe.recover()")
        raise Interrupted(msg, partial) from None
    _check_budget(df, series, out, ckpt is not None, output=output, error=error,
                  metadata=metadata)
    return _frame_out(df, out, output=output, error=error, metadata=metadata)


def _interrupted_frame(df: pl.DataFrame, series: pl.Series, out: _Collected, *,
                       why: str = "not answered: the run was interrupted", **kw: Any
                       ) -> pl.DataFrame:
    global _last_partial
    out.mark_unanswered(series, why)
    _last_partial = _frame_out(df, out, **kw)
    return _last_partial


def _check_budget(df: pl.DataFrame, series: pl.Series, out: _Collected, checkpoint: bool,
                  **kw: Any) -> None:
    """A run the budget stopped raises BudgetReached with the partial frame."""
    if out.stats.stopped_by != "budget":
        return
    partial = _interrupted_frame(df, series, out, why=_NOT_SENT, **kw)
    how = ("the same checkpoint= and a larger budget= (it sends only the rest)" if checkpoint
           else f"a larger budget= on the rows of exc.partial whose error is {_NOT_SENT!r} "
                "(or pass checkpoint= so that a rerun sends only the rest)")
    raise budget_reached(out.stats.not_sent, out.stats.cost_usd, partial, how)


def recover() -> pl.DataFrame | None:
    """The partial frame of the last interrupted ``complete`` call (None if none was)."""
    return _last_partial


async def acomplete(
    df: pl.DataFrame,
    column: str | pl.Expr,
    *,
    endpoints: EndpointLike | Iterable[EndpointLike] | None = None,
    config: RunConfig | None = None,
    output: str = "response",
    error: str = "error",
    metadata: bool = False,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    chunk_size: int = 10_000,
    **options: Any,
) -> pl.DataFrame:
    """``complete`` for async code: ``await df.llm.acomplete(...)`` on the caller's loop."""
    config = run_config(endpoints, config, **options)
    series, out, ckpt = _begin(df, column, chunk_size, output, error, metadata, checkpoint,
                               config)
    try:
        await _run_series(series, config, chunk_size, progress, out, ckpt)
    except asyncio.CancelledError:
        _interrupted_frame(df, series, out, output=output, error=error, metadata=metadata)
        raise
    _check_budget(df, series, out, ckpt is not None, output=output, error=error,
                  metadata=metadata)
    return _frame_out(df, out, output=output, error=error, metadata=metadata)


def complete_expr(
    expr: pl.Expr,
    *,
    endpoints: EndpointLike | Iterable[EndpointLike] | None = None,
    config: RunConfig | None = None,
    progress: bool = True,
    chunk_size: int = 10_000,
    **options: Any,
) -> pl.Expr:
    """``pl.col("prompt").llm.complete(...)``: a Struct ``{response, error}`` expression.

    Takes the same run options as :func:`complete`. The whole column is one run (one rate
    limit, one progress bar). When a ``budget`` stops it, the rows not sent have the error
    "not sent: stopped by the budget" (an expression cannot raise with a partial frame).
    ``return_dtype`` is given to ``map_batches`` so polars never calls the function on
    dummy data to learn the output type (which would send requests).
    """
    _check(chunk_size, "response", "error")
    config = run_config(endpoints, config, **options)

    def run(series: pl.Series) -> pl.Series:
        _check_strings(series)
        out = _Collected(len(series), config.schema)
        run_sync(lambda: _run_series(series, config, chunk_size, progress, out))
        if out.stats.stopped_by == "budget":  # no frame to carry: the rows say it
            out.mark_unanswered(series, _NOT_SENT)
        response = out.response_column("response")
        return pl.struct(response, pl.Series("error", out.error, dtype=pl.String),
                         eager=True).alias(series.name)

    dtype = result_dtype(config.schema)
    return expr.map_batches(run, return_dtype=dtype)


def result_dtype(schema: Any = None) -> pl.Struct:
    """The expression form's dtype: ``{response, error}``, ``response`` of the schema's
    Struct dtype when there is one.

    >>> result_dtype()
    Struct({'response': String, 'error': String})
    """
    if schema is None:
        return RESULT_DTYPE
    return pl.Struct({"response": schema.dtype, "error": pl.String})
