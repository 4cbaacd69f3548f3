"""A budget shared by many processes: allowances drawn from one purse.

``llmframe.ray``'s ``budget=`` is for the whole job. One :class:`Purse` (in the job's hub
actor) holds it; each actor's :class:`SharedBudget` is the run's ordinary budget (the
worst case of every request reserved before it is sent, settled by what the provider
billed) whose limit is what it has drawn so far. When a request does not fit, it draws
``chunk`` more (or what that request needs); once the purse cannot give what was asked,
the actor spends what it holds and then stops like a local run. The purse never gives
more than the budget, so the job never spends more, whoever dies or starts; the price is
what the actors hold when the purse is empty (at most ``chunk`` each, a few percent of the
budget), which may be left unspent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ._meter import Budget

__all__ = ["Purse", "SharedBudget"]

log = logging.getLogger("llmframe")


class Purse:
    """The job's budget, handed out: ``draw(amount)`` -> what it gives (less when low).

    >>> p = Purse(1.0)
    >>> p.draw(0.4), p.draw(0.4), round(p.draw(0.4), 2), p.draw(0.4)
    (0.4, 0.4, 0.2, 0.0)
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.given = 0.0

    def draw(self, amount: float) -> float:
        given = max(0.0, min(amount, self.limit - self.given))
        self.given += given
        return given


class SharedBudget(Budget):
    """A :class:`~llmframe._meter.Budget` whose limit is drawn from a purse as needed.
    ``draw(amount)``: an ``async`` call to the purse. ``asking``: a draw is under way
    (the run waits for it rather than stopping); ``wake()`` is called when it is back.

    >>> async def demo():
    ...     purse = Purse(1.0)
    ...     async def draw(amount):
    ...         return purse.draw(amount)
    ...     b = SharedBudget(draw, chunk=0.25)
    ...     first = b.fits(0.1)          # nothing drawn yet: asks for a chunk
    ...     await asyncio.sleep(0)
    ...     return first, b.asking, b.fits(0.1), b.limit
    >>> asyncio.run(demo())
    (False, False, True, 0.25)
    """

    __slots__ = ("_draw", "_task", "chunk", "dry", "wake")

    def __init__(self, draw: Callable[[float], Awaitable[float]], *, chunk: float) -> None:
        super().__init__(0.0)
        self._draw = draw
        self._task: asyncio.Task[None] | None = None
        self.chunk = chunk
        self.dry = False  # the purse gave less than asked: what is held is all there is
        self.wake: Callable[[], None] = lambda: None  # rung when a draw is back

    @property
    def asking(self) -> bool:
        return self._task is not None and not self._task.done()

    def fits(self, cost: float) -> bool:
        if super().fits(cost):
            return True
        if not self.dry and not self.asking:
            need = self.spent + self.reserved + cost - self.limit
            self._task = asyncio.get_running_loop().create_task(
                self._more(max(need, self.chunk)))
        return False

    async def _more(self, amount: float) -> None:
        try:
            given = await self._draw(amount)
        except Exception as exc:  # the purse is gone: spend what is held, then stop
            log.warning("llmframe: cannot draw on the job's budget (%s: %s)",
                        type(exc).__name__, exc)
            given = 0.0
        self.limit += given
        if given < amount:
            self.dry = True
        self.wake()
