"""A request rate shared by many processes: tokens leased in slices.

One :class:`LeaseBook` (in a Ray actor, for ``llmframe.ray``) holds the job's rate (one
for requests, ``rps``; one for tokens, ``tpm``: :class:`LeasedTokens`); each
process's :class:`LeasedPacer` asks it for a slice's worth of tokens at a time (``SLICE``
seconds, ~20 calls a second per process, not one per request) and spends them locally;
tokens not spent within the slice they were leased for are dropped. So the endpoint never
sees more than ``rps`` in any one second, however many processes there are and whenever
they start or die: the book grants at ``rps / (1 + 2 * SLICE)`` with a slice's worth of
burst, which bounds any window of one second of sends (the leases of 1 + SLICE seconds)
by ``rps``. The price: ~9% below ``rps`` at steady state.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

__all__ = ["SLICE", "LeaseBook", "LeasedPacer", "LeasedTokens"]

SLICE = 0.05


class LeaseBook:
    """The job's token bucket. ``grant(want, now)`` returns ``(tokens, wait)``: how many
    were leased now, and (when none) how long until ``want`` of them are due.

    >>> book = LeaseBook(1000)
    >>> book.grant(100, 0.0)      # the burst: one slice's worth
    (45, 0.0)
    >>> book.grant(100, 0.0)[0], book.grant(100, 0.1)[0]
    (0, 45)
    """

    def __init__(self, rps: float) -> None:
        self.rate = rps / (1 + 2 * SLICE)
        self.burst = max(1.0, self.rate * SLICE)
        self.tokens = self.burst
        self.last: float | None = None

    def grant(self, want: int, now: float) -> tuple[int, float]:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        want = max(want, 1)
        given = min(want, math.floor(self.tokens + 1e-9))
        if given <= 0:  # come back when a whole lease is due, not to poll for crumbs
            return 0, (min(want, self.burst) - self.tokens) / self.rate
        self.tokens -= given
        return given, 0.0


Lease = Callable[[int], Awaitable[tuple[int, float]]]


async def _lease_once(lease: Lease, want: int) -> int:
    """One lease: the tokens given; when none, after waiting until some are due (at
    most a slice, so a lease freed by another process is seen soon)."""
    tokens, wait = await lease(want)
    if not tokens:
        await asyncio.sleep(min(max(wait, 0.001), SLICE))
    return tokens


class LeasedPacer:
    """``await acquire()`` returns when one more request keeps to the shared rate.
    ``lease(want) -> (tokens, wait)`` asks the book (a coroutine: a remote call).

    >>> async def demo():
    ...     book = LeaseBook(200)
    ...     loop = asyncio.get_running_loop()
    ...     async def lease(want):
    ...         return book.grant(want, loop.time())
    ...     pacer = LeasedPacer(lease, want=10)
    ...     for _ in range(12):
    ...         await pacer.acquire()
    ...     return pacer.leases
    >>> asyncio.run(demo()) >= 2
    True
    """

    __slots__ = ("_lease", "_pending", "expires", "leases", "tokens", "want")

    def __init__(self, lease: Lease, *, want: int = 1) -> None:
        self._lease = lease
        self.want = max(1, want)  # tokens asked for at a time (a slice at the full rate)
        self.tokens = 0
        self.expires = 0.0
        self.leases = 0
        self._pending: asyncio.Future[None] | None = None

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.tokens > 0 and loop.time() < self.expires:
                self.tokens -= 1
                return
            if self._pending is not None:  # another request is already asking
                await asyncio.shield(self._pending)
                continue
            self._pending = loop.create_future()
            try:
                tokens = await _lease_once(self._lease, self.want)
            finally:
                pending, self._pending = self._pending, None
                pending.set_result(None)
            self.leases += 1
            if tokens:
                self.tokens, self.expires = tokens, loop.time() + SLICE


class LeasedTokens:
    """The job's ``tpm`` in one process, leased: the run's token bucket (the interface of
    :class:`~llmframe._pacer.TokenBucket` the dispatcher uses), fed by leases of a slice's
    worth at a time. A request may go while the level is positive and takes its estimate
    (the level may go below zero); its answer settles the difference. Leased tokens not
    taken within the slice are dropped; a debt is kept and paid from the next leases.

    >>> async def demo():
    ...     book = LeaseBook(6000)
    ...     loop = asyncio.get_running_loop()
    ...     async def lease(want):
    ...         return book.grant(want, loop.time())
    ...     tokens = LeasedTokens(lease, want=500)
    ...     first = tokens.try_take(100, loop.time())   # nothing leased yet
    ...     await tokens.acquire(400)                   # leases, then takes
    ...     return first, tokens.leases, tokens.level <= 0
    >>> asyncio.run(demo())
    (False, 1, True)
    """

    __slots__ = ("_lease", "expires", "leases", "level", "want")

    def __init__(self, lease: Lease, *, want: int) -> None:
        self._lease = lease
        self.want = max(1, want)
        self.level = 0.0
        self.expires = 0.0
        self.leases = 0

    def _expire(self, now: float) -> None:
        if self.level > 0 and now >= self.expires:
            self.level = 0.0

    def try_take(self, cost: float, now: float) -> bool:
        self._expire(now)
        if self.level > 0:
            self.level -= cost
            return True
        return False

    def settle(self, delta: float) -> None:
        """``delta`` = reserved - used: positive gives tokens back, negative adds debt."""
        self.level += delta

    async def acquire(self, cost: float) -> None:
        loop = asyncio.get_running_loop()
        while not self.try_take(cost, loop.time()):
            want = self.want + max(0, math.ceil(-self.level))  # and pay the debt
            tokens = await _lease_once(self._lease, want)
            self.leases += 1
            if tokens:
                self.level += tokens
                self.expires = loop.time() + SLICE
