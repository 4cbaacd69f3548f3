"""The actor side of ``llmframe.ray``: the job's hub and the ``map_batches`` class.

Kept apart from ``llmframe.ray`` (the driver side) so an actor imports only what it runs.
Ray is imported lazily: this module loads without it.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from ._config import RunConfig
from ._json import loads
from ._jsonl import NotJson
from ._lease import LeaseBook, LeasedPacer, LeasedTokens
from ._purse import Purse, SharedBudget
from ._results import NOT_SENT, Row
from ._signals import Board, Signal

__all__ = ["COST", "Completer", "Hub", "Job"]

COST = "__llmframe_cost"  # each row's cost (USD), for the job's budget; not shown


class Hub:
    """What the job's actors share (a Ray actor): the rps and tpm leases (``grant``,
    ``grant_tokens``: ``want`` -> ``(given, wait)``), the budget (``draw``) and the
    endpoints' signals (``swap(news)`` -> the board)."""

    def __init__(self, rps: float | None, tpm: float | None, budget: float | None) -> None:
        self.book = None if rps is None else LeaseBook(rps)
        self.tokens = None if tpm is None else LeaseBook(tpm / 60)
        self.board = Board()
        self.purse = None if budget is None else Purse(budget)

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

    def swap(self, news: dict[int, Signal]) -> dict[int, Signal]:
        return self.board.merge(news)


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
    #: only, and a batch gives back its counts (``rows``, ``ok``, ``errors``, ``not_sent``)
    lines: bool = False


def _line_rows(df: pl.DataFrame, column: str) -> list[Row]:
    """A file's lines as rows: each line's own request (as ``llmframe run`` sends it),
    or its ``read_error``."""
    rows: list[Row] = []
    for i, (text, why, raw) in enumerate(df.select(column, "read_error", "raw_line").rows()):
        if why is not None:
            rows.append((i, NotJson(raw or "") if text is None else loads(text.encode()), why))
        else:
            rows.append((i, loads(text.encode()), None))
    return rows


class Completer:
    """The ``map_batches`` callable class: one engine for the actor's life."""

    def __init__(self, job: Job) -> None:
        import ray

        from ._live import LiveEngine, Shared

        self.job = job
        self.node = ray.get_runtime_context().get_node_id()
        hub = job.hub

        async def lease(n: int) -> tuple[int, float]:
            return await hub.grant.remote(n)

        async def exchange(news: dict[int, Signal]) -> dict[int, Signal]:
            return await hub.swap.remote(news)

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
        from . import functions as f

        job = self.job
        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)
        out = f._Collected(len(df), job.config.schema)
        if job.lines:
            rows = _line_rows(df, job.column)
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
        frame = frame.with_columns(pl.Series(COST, cost, dtype=pl.Float64))
        if job.out_dir is not None:  # this block's results, whole or not at all
            part = Path(job.out_dir) / f"part-{uuid.uuid4().hex}.parquet"
            tmp = part.with_suffix(".tmp")
            # a row the budget left unsent has no result: a rerun sends it
            frame.filter(pl.col(job.error).ne_missing(NOT_SENT)).write_parquet(tmp)
            os.replace(tmp, part)
        if job.lines:
            error = frame[job.error]
            unsent = int((error == NOT_SENT).sum())
            return pl.DataFrame({"rows": [len(frame)], "ok": [error.null_count()],
                                 "errors": [len(frame) - error.null_count() - unsent],
                                 "not_sent": [unsent]}).to_arrow()
        return frame.to_arrow()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
