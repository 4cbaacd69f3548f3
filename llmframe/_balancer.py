"""Weighted choice of endpoint: smooth weighted round-robin (nginx's algorithm).

Deterministic proportions: with weights 1:2:3 every run of 6 picks holds exactly 1, 2 and 3
of each, spread out rather than in bursts. Endpoints that are not eligible right now (rate or
concurrency limit reached, cooling down, the one that just failed) are skipped for this pick
and keep their credit, so the shares still hold over the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["SmoothWeightedRoundRobin"]


class SmoothWeightedRoundRobin:
    """Pick indices ``0..n-1`` in proportion to ``weights``.

    >>> rr = SmoothWeightedRoundRobin([1, 2, 3])
    >>> "".join("abc"[rr.pick()] for _ in range(6))
    'cbacbc'
    """

    __slots__ = ("_current", "_total", "_weights")

    def __init__(self, weights: Sequence[float]) -> None:
        if not weights or any(w <= 0 for w in weights):
            msg = "weights must be a non-empty sequence of numbers > 0"
            raise ValueError(msg)
        self._weights = [float(w) for w in weights]
        self._current = [0.0] * len(weights)
        self._total = sum(self._weights)

    def pick(self, eligible: Callable[[int], bool] | None = None) -> int | None:
        """The next index, among those for which ``eligible(i)`` is true; None if none are."""
        weights, current = self._weights, self._current
        best = -1
        best_value = 0.0
        total = 0.0
        for i, w in enumerate(weights):
            if eligible is not None and not eligible(i):
                continue
            value = current[i] + w
            current[i] = value
            total += w
            if best < 0 or value > best_value:
                best, best_value = i, value
        if best < 0:
            return None
        current[best] -= total
        return best
