"""The actor side of ``llmframe.ray``: the job's hub and the ``map_batches`` class.

Kept apart from ``llmframe.ray`` (the driver side) so an actor imports only what it runs.
Ray is imported lazily: this module loads without it.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from ._config import RunConfig
from ._exceptions import ConfigError
from ._json import loads
from ._jsonl import NotJson
from ._lease import LeaseBook, LeasedPacer, LeasedTokens
from ._protocols import RowError, prepare
from ._purse import Purse, SharedBudget
from ._results import NOT_SENT, Row
from ._shares import ShareBook
from ._signals import Board, Signal

__all__ = ["COST", "Completer", "Hub", "Job", "check_names", "own_columns", "write_part"]

COST = "__llmframe_cost"  # each row's cost (USD), for the job's budget; not shown


class Hub:
    """What the job's actors share (a Ray actor): the rps and tpm leases (``grant``,
    ``grant_tokens``: ``want`` -> ``(given, wait)``), the budget (``draw``), the endpoints'
    signals and the held limits' shares (``swap(news, who, busy, use)`` -> the board and
    ``who``'s share)."""

    def __init__(self, rps: float | None, tpm: float | None, budget: float | None) -> None:
        import ray

        self.book = None if rps is None else LeaseBook(rps)
        self.tokens = None if tpm is None else LeaseBook(tpm / 60)
        self.board = Board()
        self.shares = ShareBook()
        self.purse = None if budget is None else Purse(budget)
        if self.purse is not None and ray.get_runtime_context().was_current_actor_reconstructed:
            # restarted: what was handed out before is unknown, so nothing more is (the
            # job stops by the budget rather than risk spending it twice)
            self.purse.given = budget  # type: ignore[assignment]

    def draw(self, amount: float) -> float:
        assert self.purse is not None
        return self.purse.draw(amount)

    def spent_before(self, amount: float) -> None:
        """What the results already in ``output=`` cost: the budget is for the job."""
        assert self.purse is not None
        self.purse.given += amount

    def grant(self, want: int) -> tuple[int, float]:
        assert self.book is not None
        return self.book.grant(want, time.monotonic())

    def grant_tokens(self, want: int) -> tuple[int, float]:
        assert self.tokens is not None
        return self.tokens.grant(want, time.monotonic())

    def swap(self, news: dict[int, Signal], who: str, busy: bool, use: float
             ) -> tuple[dict[int, Signal], float]:
        return self.board.merge(news), self.shares.ask(who, busy, use, time.monotonic())


@dataclasses.dataclass(frozen=True)
class Job:
    """What every actor needs to know (pickled into each)."""

    column: str
    config: RunConfig
    hub: Any  # the Hub actor's handle
    want: int  # requests leased at a time (a slice's worth of this actor's share of rps)
    want_tokens: int  # tokens leased at a time (the same for tpm)
    response: str
    error: str
    metadata: bool
    out_dir: str | None
    actors: int
    chunk: float  # of the budget, drawn at a time (0: no budget)
    #: a requests file's lines (``llmframe run --ray``): ``column`` holds each whole line
    #: as JSON, ``read_error`` why a line cannot be sent; the results go to ``out_dir``
    #: only, and a batch gives back its counts (``rows``, ``ok``, ``errors``, ``not_sent``,
    #: ``node``)
    lines: str | None = None  # the requests file's name
    done: Any = None  # a rerun's results already in out_dir (an object ref), by id_column
    id_column: str | None = None
    #: the endpoints' api_key_env variables as the driver has them (the actors' own
    #: environment is the cluster's, not the shell's where the job was started)
    env: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    keep_cost: bool = True  # COST in the rows given back (a DataFrame's budget needs it)


_AT = "__llmframe_at"  # a row's place in its batch


def _line_rows(df: pl.DataFrame, column: str, name: str, config: RunConfig) -> list[Row]:
    """A file's lines as rows: each line's own request (as ``llmframe run`` sends it),
    or why it cannot be sent, naming the line."""
    rows: list[Row] = []
    lines = df.select(column, "read_error", "raw_line", "index").rows()
    for i, (text, why, raw, index) in enumerate(lines):
        payload = NotJson(raw or "") if text is None else loads(text.encode())
        if why is None:
            try:
                prepare(payload, config.api, system=config.system, params=config.params)
            except RowError as exc:
                why = f"{name} line {index + 1}: {exc}"
        rows.append((i, payload, why))
    return rows


def write_part(frame: pl.DataFrame, path: Path) -> None:
    """Results to the part file ``path``, whole or not at all (written aside, renamed)."""
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)


def own_columns(metadata: bool) -> set[str]:
    """The columns llmframe.ray adds to a batch besides the response and error ones."""
    from .functions import _METADATA

    return {COST, *((*_METADATA, "node") if metadata else ())}


def check_names(names: Sequence[str], job: Job) -> None:
    """The prompt column is there and the output columns are free: on the driver when the
    Dataset's schema is known without running it, else in the actors, batch by batch."""
    if job.column not in names:
        msg = f"column {job.column!r} not found; the dataset has {', '.join(names)}"
        raise ConfigError(msg)
    taken = set(names) & {job.response, job.error, *own_columns(job.metadata)}
    if job.lines:  # a requests file's own columns
        taken -= {"index", "request", "read_error", "raw_line"}
    if taken:
        msg = (f"the dataset already has a column named {', '.join(sorted(taken))}: pass "
               "response_column=/error_column= names that are free, or rename it")
        raise ConfigError(msg)


def _split_done(df: pl.DataFrame, done: pl.DataFrame, job: Job
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(rows to send, rows with their stored results)``, each with its place in the
    batch; a stored row whose prompt is not this row's is refused (another dataset's)."""
    key = job.id_column
    assert key is not None
    df = df.with_row_index(_AT)
    have = df[key].is_in(done[key].implode())
    made = done.select(key, *(c for c in done.columns if c not in df.columns))
    stored = df.filter(have).join(made, on=key, how="left")
    old = done.select(key, pl.col(job.column).alias("__was"))
    differ = df.filter(have).join(old, on=key).filter(
        pl.col(job.column).ne_missing(pl.col("__was")))
    if differ.height:
        msg = (f"llmframe.ray: output={job.out_dir!r} holds a result for id "
               f"{differ[key][0]!r} made for another prompt: it was written for another "
               "dataset; give another directory, or delete it")
        raise ConfigError(msg)
    return df.filter(~have), stored


class Completer:
    """The ``map_batches`` callable class: one engine for the actor's life."""

    def __init__(self, job: Job) -> None:
        import ray

        from ._live import LiveEngine, Shared

        self.job = job
        os.environ.update(job.env)
        self.node = ray.get_runtime_context().get_node_id()
        self.done = None if job.done is None else pl.from_arrow(ray.get(job.done))
        hub = job.hub

        async def lease(n: int) -> tuple[int, float]:
            return await hub.grant.remote(n)

        me = uuid.uuid4().hex

        async def exchange(news: dict[int, Signal], busy: bool, use: float
                           ) -> tuple[dict[int, Signal], float]:
            return await hub.swap.remote(news, me, busy, use)

        async def draw(amount: float) -> float:
            return await hub.draw.remote(amount)

        async def lease_tokens(n: int) -> tuple[int, float]:
            return await hub.grant_tokens.remote(n)

        self.engine = LiveEngine(job.config, Shared(
            pacer=LeasedPacer(lease, want=job.want) if job.want else None,
            tokens=LeasedTokens(lease_tokens, want=job.want_tokens) if job.want_tokens
            else None,
            budget=SharedBudget(draw, chunk=job.chunk) if job.chunk else None,
            exchange=exchange, share=1 / job.actors))

    def __call__(self, batch: Any) -> Any:
        job = self.job
        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)
        check_names(df.columns, job)
        stored = None
        if self.done is not None:  # a rerun over output=DIR: rows with a result keep it
            df, stored = _split_done(df, self.done, job)
        frame = self._run(df)
        if job.out_dir is not None and len(frame):  # this block's results, whole or none
            # a row the budget left unsent has no result: a rerun sends it
            write_part(frame.filter(pl.col(job.error).ne_missing(NOT_SENT)).drop(
                _AT, strict=False), Path(job.out_dir) / f"part-{uuid.uuid4().hex}.parquet")
        if job.lines:
            error = frame[job.error]
            unsent = int((error == NOT_SENT).sum())
            return pl.DataFrame({"rows": [len(frame)], "ok": [error.null_count()],
                                 "errors": [len(frame) - error.null_count() - unsent],
                                 "not_sent": [unsent], "node": [self.node]}).to_arrow()
        if stored is not None:  # back in the batch's order
            frame = pl.concat([frame, stored], how="diagonal_relaxed").sort(_AT).drop(_AT)
        return (frame if job.keep_cost else frame.drop(COST)).to_arrow()

    def _run(self, df: pl.DataFrame) -> pl.DataFrame:
        """Send ``df``'s rows; the frame with their results (and each one's cost)."""
        from . import functions as f

        job = self.job
        out = f._Collected(len(df), job.config.schema)
        if job.lines:
            rows = _line_rows(df, job.column, job.lines, job.config)
        else:
            series = f._prompts(df, job.column)
            rows = list(f._rows(series, max(len(series), 1), job.config.api))
        cost: list[float | None] = [None] * len(df)
        for result in self.engine.run(rows):
            if result is not None:
                out.put(result)
                cost[result.index] = result.cost_usd
        if job.config.cache:
            self.engine.flush()
        frame = f._frame_out(df, out, output=job.response, error=job.error,
                             metadata=job.metadata)
        if job.metadata:
            frame = frame.with_columns(pl.lit(self.node, dtype=pl.String).alias("node"))
        return frame.with_columns(pl.Series(COST, cost, dtype=pl.Float64))

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
