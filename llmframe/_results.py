"""What a run produces: one :class:`Result` per row, and counters (:class:`RunStats`).

These types are shared by the engine, the file layer, the summary, the workers and the
polars path; they live here so none of those imports the engine to name them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NOT_SENT", "EndpointStats", "Result", "Row", "RunStats"]

#: the error of a row a budget stopped the run before (it has no result: rerun it)
NOT_SENT = "not sent: stopped by the budget"

#: An input row: (index, payload, reason). ``reason`` is set for a line that could not even
#: be read (not JSON, bad encoding); such a row becomes an error result without a request.
Row = tuple[int, Any, "str | None"]

_RESERVOIR = 20_000


@dataclass(slots=True)
class Result:
    """The one outcome of one row: a response or an error (never both)."""

    index: int
    payload: Any
    response: Any = None
    error: str | None = None
    error_type: str | None = None
    status: int | None = None
    attempts: int = 0
    endpoint: str | None = None
    latency: float | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    cost_estimated: bool = False  # no usage: cost_usd is the worst case the budget charged
    raw_response: str | None = None  # an answer that broke the schema, as the model wrote it
    cached: bool = False  # answered from the response cache: no request was sent

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class EndpointStats:
    """Per-endpoint figures: attempts sent, answered, failed, cooldowns, 429s, latencies,
    tokens (as the answers' ``usage`` reports them) and spend (None: no prices)."""

    name: str
    weight: float = 1.0
    sent: int = 0
    ok: int = 0
    failed_attempts: int = 0
    cooldowns: int = 0
    throttled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    note: str | None = None  # why the endpoint left the run, or what it learned
    via: str | None = None  # the proxy its requests go through (shown without password)
    priced: bool = False
    latencies: list[float] = field(default_factory=list)
    _seen: int = 0

    def record_usage(self, result: Result) -> None:
        self.prompt_tokens += result.prompt_tokens or 0
        self.completion_tokens += result.completion_tokens or 0
        if result.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + result.cost_usd

    def record_latency(self, value: float) -> None:
        # reservoir sample: bounded memory on runs of millions of rows
        self._seen += 1
        if len(self.latencies) < _RESERVOIR:
            self.latencies.append(value)
        else:
            j = random.randrange(self._seen)
            if j < _RESERVOIR:
                self.latencies[j] = value


@dataclass(slots=True)
class RunStats:
    """Counters a run keeps up to date; read them for progress and the final summary.

    ``rows`` read, ``ok`` answered (``cached`` of them from the response cache, free),
    ``errors`` ended as errors, ``retries`` attempts after
    the first, ``unfinished`` rows a stopped run left without a result, ``unsent`` rows
    not even read because the run stopped (``stopped_by == "budget"``), ``endpoints`` one
    :class:`EndpointStats` each; ``prompt_tokens``, ``completion_tokens`` and
    ``cost_usd`` add them up. ``str(stats)`` is the summary ``llmframe run`` prints.

    >>> s = RunStats(rows=3, ok=2, errors=1)
    >>> s.done, s.seconds, s.cost_usd
    (3, 0.0, None)
    """

    rows: int = 0
    ok: int = 0
    errors: int = 0
    retries: int = 0
    in_flight: int = 0
    unfinished: int = 0
    started: float = 0.0
    finished: float = 0.0
    endpoints: list[EndpointStats] = field(default_factory=list)
    unsent: int = 0
    stopped_by: str | None = None
    budget: float | None = None
    cached: int = 0
    cache_path: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(e.prompt_tokens for e in self.endpoints)

    @property
    def completion_tokens(self) -> int:
        return sum(e.completion_tokens for e in self.endpoints)

    @property
    def cost_usd(self) -> float | None:
        """Total spend in USD (None when no endpoint has prices)."""
        costs = [e.cost_usd for e in self.endpoints if e.cost_usd is not None]
        return sum(costs) if costs else None

    @property
    def not_sent(self) -> int:
        """Rows a stopped run never sent: read but left (``unfinished``) plus never read."""
        return self.unfinished + self.unsent

    @property
    def done(self) -> int:
        return self.ok + self.errors

    @property
    def seconds(self) -> float:
        """Wall time of the run (0 until it has finished)."""
        return max(self.finished - self.started, 0.0) if self.finished else 0.0

    def __str__(self) -> str:
        from ._summary import format_summary

        return format_summary(self, [e.weight for e in self.endpoints])
