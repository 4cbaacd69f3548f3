"""A dry run: what a run would send, cost and take, without sending or writing anything.

:func:`estimate` reads every row (a requests file, or a column of a frame), builds each
request as the real run would (so the invalid rows and their reasons are the same), counts
its tokens the way the run reserves them (prompt: characters/4 or tiktoken; answer:
``max_tokens``, else ``output_tokens``), splits the rows over the endpoints by weight for
the cost, and works out how long the configured limits (``rps``, ``rpm``, ``tpm``, global
and per endpoint) make the run at least take. Latency and ``concurrency`` add to that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._cached import CHUNK, RequestKeys
from ._config import EndpointLike, RunConfig, run_config
from ._jsonl import iter_rows
from ._meter import Meter
from ._protocols import Prepared, RowError, prepare
from ._results import Row
from ._summary import usd

__all__ = ["EndpointEstimate", "Estimate", "estimate", "estimate_rows"]

_SHOW_INVALID = 10


@dataclass(slots=True)
class EndpointEstimate:
    """One endpoint's share of the rows (by weight), its tokens and cost."""

    name: str
    weight: float
    rows: float
    input_tokens: float
    output_tokens: float
    cost_usd: float | None


@dataclass(slots=True)
class Estimate:
    """What :func:`estimate` found. ``str()`` is the report ``llmframe run --dry-run``
    prints; ``seconds`` is None when no limit bounds the run."""

    rows: int = 0
    invalid: int = 0
    reasons: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    endpoints: list[EndpointEstimate] = field(default_factory=list)
    seconds: float | None = None
    seconds_min: float | None = None
    output_default: int = 0
    output_defaulted: int = 0
    budget: float | None = None
    spent_before: float = 0.0
    already_done: int = 0
    cached: int = 0

    @property
    def cost_usd(self) -> float | None:
        costs = [e.cost_usd for e in self.endpoints if e.cost_usd is not None]
        return sum(costs) if len(costs) == len(self.endpoints) and costs else None

    def __str__(self) -> str:
        out = [f"dry run: {self.rows:,} rows to send, {self.invalid:,} invalid (nothing sent, "
               "nothing written)"]
        if self.already_done:
            out.append(f"  resuming: {self.already_done:,} rows already have a result")
        if self.cached:
            out.append(f"  cached: {self.cached:,} more rows are answered by the response "
                       "cache (free, not counted below)")
        out += [f"  invalid: {r}" for r in self.reasons]
        if self.invalid > len(self.reasons):
            out.append(f"  ... and {self.invalid - len(self.reasons):,} more invalid rows")
        out.append(f"  tokens: ~{self.input_tokens:,} in + up to {self.output_tokens:,} out")
        if self.output_defaulted:
            out.append(f"  ({self.output_defaulted:,} rows set no max_tokens: "
                       f"{self.output_default:,} out each assumed; see output_tokens)")
        width = max((len(e.name) for e in self.endpoints), default=8)
        out.append(f"  {'endpoint':<{width}}  weight  {'rows':>10}  {'tokens':>12}  "
                   f"{'USD':>10}")
        for e in self.endpoints:
            out.append(f"  {e.name:<{width}}  {e.weight:>6g}  {e.rows:>10,.0f}  "
                       f"{e.input_tokens + e.output_tokens:>12,.0f}  {usd(e.cost_usd):>10}")
        total = usd(self.cost_usd) if self.cost_usd is not None else "- (set price_in/price_out)"
        out.append(f"  estimated cost: {total}")
        if self.budget is not None:
            out.append(self._budget_line())
        if self.seconds is None:
            out.append("  time: no rate or token limit set: bounded by latency and concurrency")
        elif self.seconds_min is not None and self.seconds_min < self.seconds * 0.95:
            out.append(f"  time: {_duration(self.seconds_min)} to {_duration(self.seconds)} at "
                       "the configured limits (the longer if answers fill max_tokens), plus "
                       "latency")
        else:
            out.append(f"  time: at least {_duration(self.seconds)} at the configured limits "
                       "(plus latency)")
        return "\n".join(out)

    def _budget_line(self) -> str:
        left = (self.budget or 0.0) - self.spent_before
        before = f" (${self.spent_before:.4f} already spent)" if self.spent_before else ""
        cost = self.cost_usd
        if cost is None or not self.rows or cost <= left:
            return f"  budget {usd(self.budget)}{before}: the estimated cost fits"
        rows = int(self.rows * max(left, 0.0) / cost)
        return (f"  budget {usd(self.budget)}{before}: covers at least ~{rows:,} of "
                f"{self.rows:,} rows (more if answers are shorter than reserved); the run "
                "stops when it is spent (exit 3)")

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"


def _duration(seconds: float) -> str:
    """``75.0`` -> ``1 min 15 s``.

    >>> _duration(3.2), _duration(75), _duration(7322)
    ('3.2 s', '1 min 15 s', '2 h 2 min')
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def estimate_rows(rows: Iterable[Row], config: RunConfig, label: Any = None) -> Estimate:
    """The :class:`Estimate` of sending ``rows`` ((index, payload, reason) tuples)."""
    meter = Meter(config)
    est = Estimate(output_default=config.output_tokens, budget=config.budget)

    def count(bodies: list[dict[str, Any]]) -> None:
        for body in bodies:
            est.rows += 1
            est.input_tokens += meter.prompt_tokens(body)
            cap = meter.answer_cap(body)
            est.output_tokens += cap or config.output_tokens
            est.output_defaulted += cap is None

    with _Hits(config) as hits:
        for index, payload, reason in rows:
            if reason is None:
                try:
                    prepared = prepare(payload, config.api, system=config.system,
                                       params=config.params)
                except RowError as exc:
                    reason = f"{label(index)}: {exc}" if label else f"row {index}: {exc}"
            if reason is not None:
                est.invalid += 1
                if len(est.reasons) < _SHOW_INVALID:
                    est.reasons.append(reason)
                continue
            count(hits.misses(prepared))
        count(hits.rest())
        est.cached = hits.found
    _split(est, config)
    return est


class _Hits:
    """With a response cache: which rows it already answers (read only; looked up 512 at
    a time, with the run's own keys). ``misses`` takes each row and gives back the bodies
    of rows to send."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.cache: Any = None
        self.held: list[tuple[bytes, dict[str, Any]]] = []
        self.found = 0

    def __enter__(self) -> _Hits:
        path = self.config.cache
        if path and Path(path).exists():
            from ._cache import ResponseCache

            self.cache = ResponseCache(path, readonly=True)  # type: ignore[arg-type]
            self.keys = RequestKeys(self.config)
        return self

    def misses(self, prepared: Prepared) -> list[dict[str, Any]]:
        if self.cache is None:
            return [prepared.body]
        self.held.append((self.keys(prepared), prepared.body))
        return self._lookup() if len(self.held) >= CHUNK else []

    def _lookup(self) -> list[dict[str, Any]]:
        held, self.held = self.held, []
        found = self.cache.get_many([key for key, _ in held])
        self.found += sum(key in found for key, _ in held)
        return [body for key, body in held if key not in found]

    def __exit__(self, *exc: object) -> None:
        if self.cache is not None:
            self.cache.close()

    def rest(self) -> list[dict[str, Any]]:
        return self._lookup() if self.cache is not None and self.held else []


def _split(est: Estimate, config: RunConfig) -> None:
    endpoints = config.endpoints
    total_weight = sum(ep.weight for ep in endpoints)
    for ep in endpoints:
        share = ep.weight / total_weight
        tokens_in, tokens_out = est.input_tokens * share, est.output_tokens * share
        est.endpoints.append(EndpointEstimate(
            ep.name, ep.weight, est.rows * share, tokens_in, tokens_out,
            ep.cost(tokens_in, tokens_out)))  # type: ignore[arg-type]
    est.seconds = _seconds(est, config, est.input_tokens + est.output_tokens)
    est.seconds_min = _seconds(est, config, est.input_tokens)


def _seconds(est: Estimate, config: RunConfig, tokens: float) -> float | None:
    """The least time the configured limits allow for ``est.rows`` requests and ``tokens``
    (None when nothing is limited)."""
    endpoints = config.endpoints
    bounds = [est.rows / config.rps if config.rps else 0.0,
              tokens / (config.tpm / 60) if config.tpm else 0.0]
    rates = [ep.request_rate for ep in endpoints]
    if all(rates):
        bounds.append(est.rows / sum(rates))  # type: ignore[arg-type]
    if all(ep.tpm for ep in endpoints):
        bounds.append(tokens / (sum(ep.tpm for ep in endpoints) / 60))  # type: ignore[misc]
    return max(bounds) if any(bounds) else None


def estimate_file(path: Path, config: RunConfig, *, save: Path | None = None,
                  errors: Path | None = None, resume: bool = False,
                  retry_errors: bool = False, overwrite: bool = False) -> Estimate:
    """``llmframe run --dry-run``: the estimate of what that run would send — with
    ``resume``/``retry_errors`` only the rows it would send, against the budget left —
    deciding about existing outputs as the run would, but reading them only."""
    from ._files import LineLabel, default_paths
    from ._resume import plan_outputs, read_scan

    save, errors = default_paths(path, save, errors)
    keep = plan_outputs(save, errors, resume=resume, retry_errors=retry_errors,
                        overwrite=overwrite)
    est = estimate_rows(iter_rows(path, keep), config, LineLabel(path.name))
    if keep is not None:
        est.already_done = len(keep.done)  # type: ignore[attr-defined]
        est.spent_before = read_scan(save).spent
    return est


def estimate(data: Any, column: str | None = None, *,
             endpoints: EndpointLike | Iterable[EndpointLike] | None = None,
             config: RunConfig | None = None, **options: Any) -> Estimate:
    """What a run over ``data`` would send, cost and take — sending nothing.

    ``data`` is a polars DataFrame with the prompt ``column`` (as in ``df.llm.complete``)
    or the path of a requests JSONL file (as in ``llmframe run``). Run options as in
    ``complete``: ``config=`` and/or keywords (``rps``, ``tpm``, ``params``, ...).

    >>> import polars as pl
    >>> df = pl.DataFrame({"q": ["What is 2+2?", None, "Name a colour."]})
    >>> est = estimate(df, "q", endpoints=[{"url": "http://127.0.0.1:9/v1", "price_in": 1,
    ...                "price_out": 4, "rpm": 60}], params={"max_tokens": 50})
    >>> est.rows, est.input_tokens, est.output_tokens, est.seconds
    (2, 21, 100, 2.0)
    >>> round(est.cost_usd, 6)
    0.000421
    """
    cfg = run_config(endpoints, config, **options)
    if isinstance(data, (str, os.PathLike)):
        from ._files import LineLabel

        path = Path(data)
        return estimate_rows(iter_rows(path), cfg, LineLabel(path.name))
    from .functions import _prompts, _rows

    if column is None:
        from ._exceptions import ConfigError

        msg = "estimate(df, column): name the prompt column"
        raise ConfigError(msg)
    series = _prompts(data, column)
    return estimate_rows(_rows(series, 10_000, cfg.api), cfg, lambda i: f"row {i}")
