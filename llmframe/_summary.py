"""Progress bar and end-of-run summary."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ._results import RunStats

__all__ = ["Progress", "format_summary", "spend_line", "usd"]


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


@dataclass(slots=True)
class EndpointLine:
    name: str
    weight: float
    sent: int
    ok: int
    failed_attempts: int
    cooldowns: int
    throttled: int
    p50_ms: float | None
    p95_ms: float | None
    tokens: int = 0
    cost_usd: float | None = None
    note: str | None = None


def endpoint_lines(stats: RunStats, weights: list[float]) -> list[EndpointLine]:
    lines = []
    for ep, weight in zip(stats.endpoints, weights, strict=True):
        lat = sorted(ep.latencies)
        p50, p95 = _quantile(lat, 0.5), _quantile(lat, 0.95)
        lines.append(EndpointLine(
            ep.name, weight, ep.sent, ep.ok, ep.failed_attempts, ep.cooldowns, ep.throttled,
            None if p50 is None else p50 * 1000, None if p95 is None else p95 * 1000,
            ep.prompt_tokens + ep.completion_tokens, ep.cost_usd,
            " ".join(x for x in (ep.note, ep.via and f"(via proxy {ep.via})") if x) or None,
        ))
    return lines


def usd(value: float | None) -> str:
    """Dollars for people: ``$0.0123``, ``$12.35``, ``-`` for unknown.

    >>> usd(0.012345), usd(12.345), usd(None)
    ('$0.0123', '$12.35', '-')
    """
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def spend_line(stats: RunStats) -> str | None:
    """``tokens 1,200 in + 300 out, $0.0012 spent (budget $1.00)``, or None without usage."""
    tokens_in, tokens_out = stats.prompt_tokens, stats.completion_tokens
    if not tokens_in and not tokens_out and stats.cost_usd is None:
        return None
    line = f"tokens {tokens_in:,} in + {tokens_out:,} out"
    if stats.cost_usd is not None or stats.budget is not None:
        line += f", {usd(stats.cost_usd or 0.0)} spent"
        unpriced = sum(e.prompt_tokens + e.completion_tokens for e in stats.endpoints
                       if not e.priced)
        if unpriced:
            line += f" ({unpriced:,} tokens at endpoints without prices not counted)"
    if stats.budget is not None:
        line += f" (budget {usd(stats.budget)})"
    return line


def format_summary(stats: RunStats, weights: list[float], *, labels: dict[str, str] | None = None,
                   interrupted: bool = False) -> str:
    """A few lines a person reads at the end of a run."""
    elapsed = stats.seconds
    # the loop clock has millisecond resolution: no rate for a run that sent nothing
    rate = f"{stats.done / elapsed:,.0f} rows/s" if elapsed >= 0.05 else "- rows/s"
    head = "interrupted after" if interrupted else "done:"
    count = f"{stats.done:,} of {stats.rows:,} rows"
    left = f", {stats.unfinished:,} not finished" if stats.unfinished else ""
    if stats.stopped_by == "budget":
        head = "stopped by the budget after"
        count = f"{stats.done:,} row" + ("" if stats.done == 1 else "s")
        left = f", {stats.not_sent:,} not sent" if stats.not_sent else ""
    out = [
        f"{head} {count} in {elapsed:.1f} s ({rate}): "
        f"{stats.ok:,} ok, {stats.errors:,} errors, {stats.retries:,} retries{left}"
    ]
    if stats.cache_path is not None:
        out.append(f"  cached {stats.cached:,} (answered from the cache, free; "
                   f"{stats.cache_path})")
    spend = spend_line(stats)
    if spend:
        out.append(f"  {spend}")
    rows = endpoint_lines(stats, weights)
    if rows:
        out += _endpoint_table(rows, labels or {}, tokens=spend is not None,
                               money=stats.cost_usd is not None)
    return "\n".join(out)


def _endpoint_table(rows: list[EndpointLine], labels: dict[str, str], *, tokens: bool,
                    money: bool) -> list[str]:
    width = max(len(r.name) for r in rows)
    extra = (f"  {'tokens':>11}" if tokens else "") + (f"  {'USD':>9}" if money else "")
    out = [f"  {'endpoint':<{width}}  weight  {'sent':>8}  {'ok':>8}  {'failed':>7}  "
           f"{'429s':>5}  {'cooldowns':>9}  {'share':>6}  {'p50 ms':>8}  {'p95 ms':>8}" + extra]
    total_ok = sum(r.ok for r in rows) or 1
    for r in rows:
        p50 = "-" if r.p50_ms is None else f"{r.p50_ms:.1f}"
        p95 = "-" if r.p95_ms is None else f"{r.p95_ms:.1f}"
        notes = " ".join(x for x in (labels.get(r.name, ""), r.note or "") if x)
        money_cols = ((f"  {r.tokens:>11,}" if tokens else "")
                      + (f"  {usd(r.cost_usd):>9}" if money else ""))
        out.append(
            f"  {r.name:<{width}}  {r.weight:>6g}  {r.sent:>8,}  {r.ok:>8,}  "
            f"{r.failed_attempts:>7,}  {r.throttled:>5,}  {r.cooldowns:>9,}  "
            f"{r.ok / total_ok:>6.1%}  {p50:>8}  {p95:>8}" + money_cols
            + (f"  {notes}" if notes else "")
        )
    return out


class Progress:
    """A tqdm bar fed with result batches; shows rate, ok, errors, retries, in flight."""

    def __init__(self, stats: RunStats, total: int | None, *, enabled: bool, desc: str = "llm",
                 **tqdm_kwargs: Any) -> None:
        self.stats = stats
        self.bar = tqdm(total=total, disable=not enabled, unit="row", desc=desc,
                        dynamic_ncols=True, mininterval=0.25, **tqdm_kwargs)
        self._last = 0.0

    def update(self, n: int) -> None:
        self.bar.update(n)
        now = time.monotonic()
        if now - self._last > 0.25:
            self._last = now
            self._postfix()

    def _postfix(self) -> None:
        s = self.stats
        extra = {}
        tokens = s.prompt_tokens + s.completion_tokens
        if tokens:
            extra["tokens"] = f"{tokens:,}"
        if s.cost_usd is not None:
            extra["spent"] = usd(s.cost_usd)
        if s.cached:
            extra["cached"] = f"{s.cached:,}"
        self.bar.set_postfix(ok=str(s.ok), err=str(s.errors), retries=str(s.retries),
                             inflight=str(s.in_flight), **extra, refresh=False)

    def close(self) -> None:
        self._postfix()
        self.bar.close()
