"""The job's held limits, split between the engines that have work.

In ``llmframe.ray`` the limits a request holds while it is in flight (``concurrency``, an
endpoint's ``max_concurrency``) and the endpoints' own rates (set, or learned from their
rate-limit headers) are each engine's ``share`` of the job's. A fixed ``1 / actors`` would
leave an actor that still has rows at half the limit while the other has finished; so the
share moves with the work: every ``PERIOD`` (``_signals``) each engine tells the job's
:class:`ShareBook` whether it has rows and how much of the limits it is using, and gets
its share back: an equal part for every engine with rows, never more than what the others
may still be using. So the shares never add up to more than the whole, even while they
change: an engine's old share counts until it has asked again under its new one (an
engine without rows puts its share down before it asks), and what it has in flight
counts until it is done. An engine not heard from for ``TTL`` seconds (it
died) gives its part back.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["TTL", "ShareBook", "part", "part_rate"]

TTL = 3.0


def part(limit: int, share: float) -> int:
    """An engine's part of an in-flight ``limit`` (rounded down: together never more).

    >>> part(10, 1 / 3), part(3, 1 / 3), part(10, 0.0)
    (3, 1, 0)
    """
    return math.floor(limit * share + 1e-9)


def part_rate(rate: float, share: float) -> float:
    """A process's part of an endpoint's rate when processes share it: one request a
    second less than its share, as a limiter of rate ``r`` lets ``r + 1`` through in
    some one-second window (one at its start): so the parts together keep to ``rate``
    (one process per request a second of it; a rate smaller than that is halved).

    >>> round(part_rate(20, 1 / 3), 2), part_rate(20, 1.0), part_rate(1.5, 1.0)
    (5.67, 19.0, 0.75)
    """
    mine = rate * share
    return max(mine - 1, mine / 2)


@dataclasses.dataclass
class _Member:
    busy: bool = False
    given: float = 0.0  # the share it was last told
    held: float = 0.0  # what it may be using until it asks again
    seen: float = 0.0


class ShareBook:
    """``ask(who, busy, use, now) -> share``; ``use``: the part of the limits ``who`` has
    in flight now (0..1).

    >>> book = ShareBook()
    >>> book.ask("a", True, 0.0, now=0.0)   # alone: all of it
    1.0
    >>> book.ask("b", True, 0.0, now=0.0)   # a may be using all of it until it asks again
    0.0
    >>> book.ask("a", True, 0.9, now=0.1)   # half now, but what it has in flight counts
    0.5
    >>> book.ask("b", True, 0.0, now=0.1)
    0.0
    >>> book.ask("a", True, 0.5, now=0.2), book.ask("b", True, 0.0, now=0.2)
    (0.5, 0.5)
    >>> book.ask("b", False, 0.0, now=0.3), book.ask("a", True, 0.5, now=0.3)  # b is done
    (0.0, 1.0)
    >>> book.ask("b", True, 0.0, now=0.4), book.ask("a", True, 1.0, now=0.4)  # rows again
    (0.0, 0.5)
    >>> book.ask("a", True, 0.5, now=0.5), book.ask("b", True, 0.0, now=0.5)
    (0.5, 0.5)
    >>> book.ask("a", True, 0.5, now=3.0)   # b is not heard from (dead?) ...
    0.5
    >>> book.ask("a", True, 0.5, now=3.6)   # ... for TTL: its part comes back
    1.0
    """

    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self.members: dict[str, _Member] = {}

    def ask(self, who: str, busy: bool, use: float, now: float) -> float:
        members = self.members
        for gone in [k for k, m in members.items() if now - m.seen > self.ttl]:
            del members[gone]
        me = members.setdefault(who, _Member())
        me.busy, me.seen = busy, now
        fair = 1.0 / sum(m.busy for m in members.values()) if busy else 0.0
        others = sum(m.held for k, m in members.items() if k != who)
        given = max(0.0, min(fair, 1.0 - others))
        # with rows, it runs with its last share until it hears; without, it has put its
        # share down before asking: only what it has in flight counts
        me.held = max(me.given, given, use) if busy else use
        me.given = given
        return given
