"""The simplest client that waits Retry-After per request: the yardstick for 429 handling.

One asyncio task per row, at most ``concurrency`` rows in flight (a semaphore held for the
whole row, its waits included), every request (retries too) paced globally to ``rps``. On a
429 or 5xx (or a connection error) it sleeps what ``Retry-After`` asks (seconds; else
``0.5 * 2**n``), capped at 60 s, and tries again, up to ``max_attempts``.

    python bench/simple_client.py URL --rows 1000 --rps 500 --concurrency 256
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import aiohttp
import orjson

T = TypeVar("T")

MAX_WAIT = 60.0


def retry_wait(headers: Any, attempt: int, cap: float = MAX_WAIT) -> float:
    """Seconds to wait before the next attempt: Retry-After if numeric, else 0.5 * 2**attempt."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        wait = float(value) if value is not None else 0.5 * 2**attempt
    except ValueError:
        wait = 0.5 * 2**attempt
    return min(max(wait, 0.0), cap)


class Pacer:
    """Fixed-interval scheduler: request k goes out no earlier than start + k / rps."""

    def __init__(self, rps: float | None) -> None:
        self.period = 1.0 / rps if rps else 0.0
        self.next = 0.0

    async def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.period
        if slot > now:
            await asyncio.sleep(slot - now)


async def run_simple(url: str, prompts: Sequence[str], *, rps: float | None, concurrency: int,
                     max_attempts: int, timeout: float = 60.0,
                     tally: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one chat completion per prompt; returns ok, errors, seconds and first_error.

    ``tally`` (optional) is filled in as rows finish, so a cancelled run still tells.
    """
    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    sem = asyncio.Semaphore(concurrency)
    pacer = Pacer(rps)
    tally = tally if tally is not None else {}
    tally.update(ok=0, errors=0, first_error=None)

    def fail(message: str) -> None:
        tally["errors"] += 1
        if tally["first_error"] is None:
            tally["first_error"] = message

    async def one(session: aiohttp.ClientSession, prompt: str) -> None:
        body = orjson.dumps({"messages": [{"role": "user", "content": prompt}]})
        async with sem:
            for attempt in range(max_attempts):
                await pacer.wait()
                try:
                    async with session.post(endpoint, data=body, headers=headers) as resp:
                        data = await resp.read()
                        status, resp_headers = resp.status, resp.headers
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status, resp_headers, data = 0, None, repr(exc).encode()
                if status == 200:
                    try:
                        usable = bool(orjson.loads(data)["choices"])
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        usable = False
                    if usable:
                        tally["ok"] += 1
                    else:
                        fail("malformed answer")
                    return
                if status and status != 429 and status < 500:
                    fail(f"HTTP {status}: {data[:200].decode(errors='replace')}")
                    return
                if attempt + 1 == max_attempts:
                    fail(f"gave up after {max_attempts} attempts (last: "
                         f"{status or data[:200].decode(errors='replace')})")
                    return
                await asyncio.sleep(retry_wait(resp_headers, attempt))

    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        await asyncio.gather(*(one(session, p) for p in prompts))
    tally["seconds"] = time.perf_counter() - start
    return tally


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh loop (uvloop if installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("url", help="base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--rps", type=float, default=500)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--max-attempts", type=int, default=5)
    args = p.parse_args()
    prompts = [f"q{i}" for i in range(args.rows)]
    out = run_loop(run_simple(args.url, prompts, rps=args.rps, concurrency=args.concurrency,
                              max_attempts=args.max_attempts))
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()
