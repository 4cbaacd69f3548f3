"""Run a coroutine from synchronous code, in a script or inside Jupyter's running loop.

The coroutine always runs on a fresh event loop (uvloop where available) in a worker thread.
That works the same whether or not the calling thread already runs a loop (Jupyter's
kernel does), needs no patching of the caller's loop (nest-asyncio is archived and cannot
patch uvloop), and leaves the calling thread free to receive Ctrl-C / a kernel interrupt: on
an interrupt the run's task is cancelled, given ``grace`` seconds to clean up, and
``KeyboardInterrupt`` is re-raised in the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["new_event_loop", "run_sync"]

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new uvloop loop where uvloop is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_sync(main: Callable[[], Awaitable[T]], *, grace: float = 10.0,
             on_interrupt: Callable[[], None] | None = None) -> T:
    """Run ``main()`` to completion on its own loop in a worker thread and return its value.

    On Ctrl-C: without ``on_interrupt`` the run is cancelled at once. With it (called on the
    calling thread; it should ask the run to wind down, e.g. ``RunControl.stop_threadsafe``),
    the run gets ``grace`` seconds to finish what is in flight; a second Ctrl-C or the end of
    the grace period cancels it. Either way ``KeyboardInterrupt`` is re-raised afterwards.
    """
    box: dict[str, Any] = {}
    ready = threading.Event()
    # Wait on an Event, never on Thread.join: a KeyboardInterrupt raised inside join() can
    # make CPython 3.11 mark a still-running thread as stopped (bpo-45274's fix), and then
    # we would stop waiting for the run to flush.
    finished = threading.Event()

    def target() -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            task = loop.create_task(_as_coro(main))
            box["loop"], box["task"] = loop, task
            ready.set()
            box["value"] = loop.run_until_complete(task)
        except BaseException as exc:
            box["error"] = exc
        finally:
            ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                finished.set()

    thread = threading.Thread(target=target, name="llmframe-run", daemon=True)
    thread.start()
    def cancel() -> None:
        ready.wait()
        loop, task = box.get("loop"), box.get("task")
        if loop is not None and task is not None and not loop.is_closed():
            # RuntimeError: the loop closed in between, so there is nothing left to cancel
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    try:
        while not finished.wait(0.05):
            pass
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt()
            try:
                deadline = time.monotonic() + grace
                while not finished.wait(0.05) and time.monotonic() < deadline:
                    pass
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: stop waiting
        cancel()
        finished.wait(grace)
        raise
    error = box.get("error")
    if error is not None:
        raise error
    return box["value"]


async def _as_coro(main: Callable[[], Awaitable[T]]) -> T:
    return await main()
