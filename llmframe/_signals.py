"""What one process learns about an endpoint, shared with the others of the job.

In ``llmframe.ray`` every actor has its own engine, so its own view of each endpoint's
health. The strong signals are shared through one board (in the job's hub actor), so a
429, a Retry-After or a broken server seen by one actor reaches the others within
``PERIOD`` seconds, and an actor that starts late (a restart, an autoscaled one) learns
them before its first request:

- **pause**: refusals dominate an endpoint's answers, it is paused for the Retry-After
  asked (traffic moves to the other endpoints);
- **cooldown**: the endpoint is broken (refused connections, timeouts, 5xx in a row): out
  of rotation until its cooldown ends, then one probe per process;
- **hold**: its rate-limit headers said nothing is left until the reset;
- **out**: told to wait past ``max_retry_after``, or its quota is spent (with why).

Deadlines cross processes as wall-clock times (each process converts with one fixed
offset from its loop's clock, so a deadline read back is the one written); the board keeps
the latest of each. :func:`read` and :func:`apply` are plain functions of a pool and the
clocks, tested with made-up times.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PERIOD", "Board", "apply", "read"]

PERIOD = 0.1  # seconds between two exchanges with the board

#: one endpoint's signals: pause, cooldown, hold, out deadlines (wall clock), out_for, why
Signal = tuple[float, float, float, float, float, str | None]
_EPS = 1e-3


def read(pool: Any, now: float, offset: float) -> dict[int, Signal]:
    """The signals in force at ``pool``'s endpoints (``now``: the loop's clock; ``offset``:
    wall clock minus loop clock), by endpoint index; endpoints with none are left out.

    >>> from types import SimpleNamespace as NS
    >>> from llmframe._health import Health
    >>> t = NS(index=0, health=Health(10), hold_until=0.0)
    >>> t.health.leave("quota spent")
    >>> read(NS(targets=[t]), 5.0, 1000.0)
    {0: (0.0, 0.0, 0.0, inf, 0.0, 'quota spent')}
    """
    out: dict[int, Signal] = {}
    for t in pool.targets:
        h = t.health
        times = [x + offset if x > now else 0.0 for x in
                 (h.paused_until, h.cooldown_until, t.hold_until, h.out_until)]
        if any(times):
            out[t.index] = (*times, h.out_for, h.out_why)  # type: ignore[assignment]
    return out


def apply(pool: Any, board: dict[int, Signal], now: float, offset: float) -> None:
    """Put the board's signals in force at ``pool``'s endpoints (only those later than
    the ones already there).

    >>> from types import SimpleNamespace as NS
    >>> from llmframe._health import Health
    >>> t = NS(index=0, health=Health(10), hold_until=0.0, stats=NS(note=None))
    >>> apply(NS(targets=[t]), {0: (1003.0, 0.0, 1002.0, 0.0, 0.0, None)}, 1.0, 1000.0)
    >>> t.health.allowed(2.0), t.hold_until, t.health.allowed(3.5)   # paused until 3.0
    (0, 2.0, 10)
    """
    for t in pool.targets:
        signal = board.get(t.index)
        if signal is None:
            continue
        pause, cool, hold, out = (x - offset if x else 0.0 for x in signal[:4])
        h = t.health
        if pause > max(h.paused_until, now) + _EPS:
            h.paused_until, h.pause_began = pause, now  # a 429 sent before never extends it
        if cool > max(h.cooldown_until, now) + _EPS:
            # broken, says another process: out of rotation, then one probe from here too;
            # failures of requests sent before now do not trip it again
            h.cooldown_until, h.probing, h._tripped_at = cool, True, now
        if hold > t.hold_until + _EPS:
            t.hold_until = hold
        if out > max(h.out_until, now) + _EPS:
            h.out_until, h.out_for, h.out_why = out, signal[4], signal[5]
            if t.stats.note is None:
                t.stats.note = "out (learned from another process)"


class Board:
    """The job's signals (kept by one process; the others :meth:`merge` into it).

    >>> b = Board()
    >>> b.merge({0: (10.0, 0.0, 0.0, 0.0, 0.0, None)})
    {0: (10.0, 0.0, 0.0, 0.0, 0.0, None)}
    >>> b.merge({0: (8.0, 0.0, 0.0, 99.0, 90.0, 'quota spent')})[0]   # the latest of each
    (10.0, 0.0, 0.0, 99.0, 90.0, 'quota spent')
    """

    def __init__(self) -> None:
        self.signals: dict[int, Signal] = {}

    def merge(self, news: dict[int, Signal]) -> dict[int, Signal]:
        for index, new in news.items():
            old = self.signals.get(index)
            if old is None:
                self.signals[index] = new
                continue
            latest = [max(a, b) for a, b in zip(old[:3], new[:3], strict=True)]
            out = new if new[3] > old[3] else old
            self.signals[index] = (*latest, out[3], out[4], out[5])  # type: ignore[assignment]
        return self.signals
