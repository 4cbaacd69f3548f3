"""The async run: pacing, concurrency bounds, balancing, retries, one result per row.

One dispatcher coroutine takes rows (and retries that are due), waits for a free slot and
for the global pacer, picks an eligible endpoint and starts one task per attempt. Each task
ends in a success, a final error, or a retry scheduled with ``loop.call_later`` — never a
sleeping task holding a slot. Results are handed to the consumer in batches as they complete.

Everything loop-bound (``ClientSession``, limiters, futures) is created inside the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import re
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import aiohttp
import orjson
from aiolimiter import AsyncLimiter

from ._balancer import SmoothWeightedRoundRobin
from ._config import Endpoint, RunConfig
from ._gc import COLLECT_EVERY, gc_paused
from ._health import Health
from ._pacer import Pacer
from ._protocols import Prepared, RowError, encode, parse_response, prepare
from ._retry import AttemptError, RetryPolicy, is_retryable_status, parse_retry_after
from ._transport import AiohttpTransport, FastTransport, Transport

__all__ = ["EndpointStats", "Result", "Row", "RunControl", "RunStats", "stream_results"]

#: An input row: (index, payload, reason). ``reason`` is set for a line that could not even
#: be read (not JSON, bad encoding); such a row becomes an error result without a request.
Row = tuple[int, Any, "str | None"]

_BODY_EXCERPT = 300
_RESERVOIR = 20_000
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")


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

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class EndpointStats:
    name: str
    sent: int = 0
    ok: int = 0
    failed_attempts: int = 0
    cooldowns: int = 0
    throttled: int = 0
    latencies: list[float] = field(default_factory=list)
    _seen: int = 0

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
    """Counters a run keeps up to date; read them for progress and the final summary."""

    rows: int = 0
    ok: int = 0
    errors: int = 0
    retries: int = 0
    in_flight: int = 0
    unfinished: int = 0
    started: float = 0.0
    finished: float = 0.0
    endpoints: list[EndpointStats] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.ok + self.errors


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove API keys (and any bearer token) from text that may be shown or stored."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", text)


class _Job:
    __slots__ = ("attempts", "deadline", "index", "last_endpoint", "payload", "prepared",
                 "timed_out")

    def __init__(self, index: int, payload: Any, prepared: Prepared) -> None:
        self.index = index
        self.payload = payload
        self.prepared = prepared
        self.attempts = 0
        self.last_endpoint = -1
        self.timed_out = False
        self.deadline = 0.0


class _Target:
    """Run-time state of one endpoint (loop-bound: built inside the run)."""

    __slots__ = ("endpoint", "headers", "health", "in_flight", "index", "key", "limiter",
                 "max_in_flight", "model", "name", "stats", "timeout", "transport", "url")

    def __init__(self, index: int, endpoint: Endpoint, config: RunConfig) -> None:
        self.index = index
        self.endpoint = endpoint
        self.name = endpoint.name
        self.url = endpoint.request_url(config.api)
        self.model = endpoint.model or config.model
        headers = {"Content-Type": "application/json", **(endpoint.headers or {})}
        self.key = endpoint.api_key()
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        self.headers = headers
        self.timeout = endpoint.timeout or config.timeout
        self.limiter = _endpoint_limiter(endpoint.rps) if endpoint.rps else None
        self.max_in_flight = min(endpoint.max_concurrency or 1 << 30, config.concurrency)
        self.health = Health(self.max_in_flight)
        self.in_flight = 0
        self.stats = EndpointStats(self.name)
        self.transport: Transport

    def open(self, session: aiohttp.ClientSession, kind: str) -> None:
        fast = kind == "fast" or (kind == "auto" and self.url.startswith("http://"))
        self.transport = (FastTransport(self.url, self.headers) if fast
                          else AiohttpTransport(session, self.url, self.headers))

    def eligible(self, now: float, ignore_cooldown: bool = False) -> bool:
        if self.in_flight >= self.health.allowed(now, ignore_cooldown):
            return False
        return self.limiter is None or self.limiter.has_capacity()


def _endpoint_limiter(rps: float) -> AsyncLimiter:
    """A smooth per-endpoint limiter: a bucket of 1/100 s worth of requests (at least 1),
    refilled continuously, so no burst of a whole second's budget ever goes out at once.
    The dispatcher only checks ``has_capacity()`` before choosing the endpoint."""
    bucket = max(1.0, rps / 100)
    return AsyncLimiter(bucket, bucket / rps)


class _Run:
    def __init__(self, rows: Iterable[Row], config: RunConfig, stats: RunStats) -> None:
        self.config = config
        self.rows = rows
        self.stats = stats
        self.policy = RetryPolicy.build(
            max_attempts=config.max_attempts,
            initial=config.backoff_initial,
            maximum=config.backoff_max,
            max_retry_after=config.max_retry_after,
        )
        self.done: list[Result] = []
        self.retry_ready: deque[_Job] = deque()
        self.retry_pending = 0
        self.in_flight = 0
        self.tasks: dict[asyncio.Task[None], _Job] = {}  # attempts in flight
        self.dispatch_wake: asyncio.Future[None] | None = None
        self.consumer_wake: asyncio.Future[None] | None = None
        self.finished = False
        self.stopping = False
        self.on_result: Callable[[Result], None] | None = None
        self.secrets: list[str] = []
        self.secret_bytes: list[bytes] = []

    # -- waking ---------------------------------------------------------------------------
    def _wake_dispatcher(self, *_: Any) -> None:
        fut = self.dispatch_wake
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake_consumer(self) -> None:
        fut = self.consumer_wake
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _sleep_until_woken(self, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.dispatch_wake = fut = loop.create_future()
        handle = loop.call_later(timeout, self._wake_dispatcher) if timeout else None
        try:
            await fut
        finally:
            self.dispatch_wake = None
            if handle is not None:
                handle.cancel()

    def _emit(self, result: Result) -> None:
        stats = self.stats
        if result.error is None:
            stats.ok += 1
        else:
            stats.errors += 1
        if self.on_result is not None:
            self.on_result(result)  # stored at once: an interrupt cannot lose it in a batch
        self.done.append(result)
        self._wake_consumer()

    # -- dispatch -------------------------------------------------------------------------
    def _job(self, row: Row) -> _Job | None:
        index, payload, reason = row
        self.stats.rows += 1
        if reason is None:
            try:
                prepared = prepare(
                    payload, self.config.api, system=self.config.system, params=self.config.params
                )
            except RowError as exc:
                reason = str(exc)
            else:
                return _Job(index, payload, prepared)
        self._emit(Result(index, payload, error=reason, error_type="invalid_input"))
        return None

    def _pick(self, job: _Job, now: float) -> _Target | None:
        targets = self.targets
        last = job.last_endpoint
        if last >= 0 and len(targets) > 1:
            i = self.balancer.pick(lambda i: i != last and targets[i].eligible(now))
            if i is not None:
                return targets[i]
        i = self.balancer.pick(lambda i: targets[i].eligible(now))
        if i is None and all(t.health.cooling(now) for t in targets):
            # no healthy endpoint at all: use them anyway, the rows' retry policy decides
            i = self.balancer.pick(lambda i: targets[i].eligible(now, ignore_cooldown=True))
        return None if i is None else targets[i]

    def _idle_wait(self, now: float) -> float:
        """How long to wait when no endpoint can take a request: until the first cooldown
        or pause ends (a completion wakes the dispatcher sooner), or a few ms for rate."""
        ends = [t.health.available_at() for t in self.targets]
        soonest = min((e for e in ends if e > now), default=0.0)
        return max(0.002, min(soonest - now, 1.0)) if soonest else 0.002

    async def dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        rows = iter(self.rows)
        exhausted = False
        limiter = self.limiter
        concurrency = self.config.concurrency
        stats = self.stats
        while True:
            if self.stopping:
                # stop taking work; let what is in flight finish (the caller bounds the wait)
                while self.in_flight:
                    await self._sleep_until_woken()
                break
            if self.retry_ready:
                job = self.retry_ready.popleft()
            elif not exhausted:
                row = next(rows, None)
                if row is None:
                    exhausted = True
                    continue
                job = self._job(row)
                if job is None:
                    continue
            elif self.in_flight or self.retry_pending:
                await self._sleep_until_woken()
                continue
            else:
                break
            while self.in_flight >= concurrency:
                await self._sleep_until_woken()
            if limiter is not None:
                await limiter.acquire()
            target = self._pick(job, loop.time())
            while target is None:
                await self._sleep_until_woken(self._idle_wait(loop.time()))
                if self.stopping:
                    break
                target = self._pick(job, loop.time())
            if target is None:  # stopping while waiting for an endpoint
                self.stats.unfinished += 1
                continue
            if target.limiter is not None:
                await target.limiter.acquire()
            self.in_flight += 1
            stats.in_flight = self.in_flight
            target.in_flight += 1
            job.deadline = loop.time() + target.timeout
            task = loop.create_task(self._attempt(job, target))
            self.tasks[task] = job
            task.add_done_callback(self.tasks.pop)
        self.finished = True
        self._wake_consumer()

    async def sweep_timeouts(self) -> None:
        """Cancel attempts past their deadline: one periodic sweep instead of a timer (and
        its cancellation) per request, which is measurable at 10k requests/s."""
        loop = asyncio.get_running_loop()
        period = min(0.1, max(0.005, min(t.timeout for t in self.targets) / 20))
        next_gc = loop.time() + COLLECT_EVERY
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            if now >= next_gc:  # the collector is paused during the run (see _gc)
                gc.collect()
                next_gc = now + COLLECT_EVERY
            expired = [(t, j) for t, j in self.tasks.items() if j.deadline <= now]
            for task, job in expired:
                if not task.done():
                    job.timed_out = True
                    task.cancel()

    def _requeue(self, job: _Job) -> None:
        self.retry_pending -= 1
        if self.stopping:
            self.stats.unfinished += 1  # no result: a resumed run sends it again
            return
        self.retry_ready.append(job)
        self._wake_dispatcher()

    def stop(self) -> None:
        """Stop taking rows and retries; attempts in flight may still finish."""
        if not self.stopping:
            self.stopping = True
            self.stats.unfinished += len(self.retry_ready)
            self.retry_ready.clear()
            self._wake_dispatcher()

    # -- one attempt ----------------------------------------------------------------------
    async def _attempt(self, job: _Job, target: _Target) -> None:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        job.attempts += 1
        target.stats.sent += 1
        api = self.config.api
        started = perf_counter()  # uvloop's loop.time() only has millisecond resolution
        error: AttemptError | None = None
        job.timed_out = False
        try:
            try:
                body = encode(job.prepared, target.model)
            except (orjson.JSONEncodeError, TypeError) as exc:
                error = AttemptError("invalid_input", f"row cannot be encoded as JSON: {exc}")
            else:
                status, headers, data = await target.transport.post(body)
                if not 200 <= status < 300:
                    error = self._http_error(status, headers, data, target)
                else:
                    answer = parse_response(api, data)
        except AttemptError as exc:
            error = exc
        except asyncio.CancelledError:
            if not job.timed_out:
                raise
            error = AttemptError("timeout", f"no answer within {target.timeout:g} s",
                                 retryable=True)
        except asyncio.TimeoutError:
            error = AttemptError("timeout", f"no answer within {target.timeout:g} s",
                                 retryable=True)
        except aiohttp.ClientError as exc:
            detail = redact(str(exc), self.secrets) or type(exc).__name__
            error = AttemptError("connection_error", f"{type(exc).__name__}: {detail}",
                                 retryable=True)
        except OSError as exc:
            detail = redact(str(exc), self.secrets) or "connection failed"
            error = AttemptError("connection_error", f"{type(exc).__name__}: {detail}",
                                 retryable=True)
        except zlib.error as exc:
            error = AttemptError("invalid_response", f"cannot decompress the body ({exc})",
                                 retryable=True)
        finally:
            self.in_flight -= 1
            self.stats.in_flight = self.in_flight
            target.in_flight -= 1
            self._wake_dispatcher()
        latency = perf_counter() - started
        health = target.health
        if error is None:
            if self.secret_bytes and any(s in data for s in self.secret_bytes):
                answer.text = self._redact_answer(answer.text)
            health.on_success(loop.time(), latency)
            target.stats.ok += 1
            target.stats.record_latency(latency)
            self._emit(Result(
                job.index, job.payload, response=answer.text, attempts=job.attempts,
                endpoint=target.name, latency=latency, finish_reason=answer.finish_reason,
                prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
            ))
            return
        target.stats.failed_attempts += 1
        health.on_failure(loop.time(), error.kind, error.status, error.retry_after, sent_at)
        target.stats.cooldowns = health.cooldowns
        target.stats.throttled = health.throttled
        wait = self.policy.next_wait(job.attempts, error)
        if wait is None:
            self._emit(self._final_error(job, target, error, latency))
            return
        if error.retry_after is not None and len(self.targets) > 1:
            # Retry-After pauses that endpoint only (see _health); the row may go elsewhere
            wait = self.policy.backoff(job.attempts)
        self.stats.retries += 1
        job.last_endpoint = target.index
        self.retry_pending += 1
        loop.call_later(wait, self._requeue, job)

    def _redact_answer(self, text: Any) -> Any:
        """An endpoint echoed a key back in a 200 answer: store it redacted."""
        if isinstance(text, str):
            return redact(text, self.secrets)
        return orjson.loads(redact(orjson.dumps(text).decode(), self.secrets))

    def _http_error(self, status: int, headers: Any, data: bytes, target: _Target) -> AttemptError:
        excerpt = redact(data[:_BODY_EXCERPT].decode("utf-8", "replace"), self.secrets)
        return AttemptError(
            "http_error", f"HTTP {status}", status=status,
            retryable=is_retryable_status(status),
            retry_after=parse_retry_after(headers) if status in (429, 503) else None,
            body=excerpt,
        )

    def _final_error(self, job: _Job, target: _Target, error: AttemptError,
                     latency: float) -> Result:
        tries = "attempt" if job.attempts == 1 else "attempts"
        message = f"{error} from {target.name} after {job.attempts} {tries}"
        if error.body:
            message += f": {' '.join(error.body.split())}"
        return Result(
            job.index, job.payload, error=redact(message, self.secrets), error_type=error.kind,
            status=error.status, attempts=job.attempts, endpoint=target.name, latency=latency,
        )

    # -- the run --------------------------------------------------------------------------
    def _open(self) -> None:
        config = self.config
        self.targets = [_Target(i, ep, config) for i, ep in enumerate(config.endpoints)]
        self.secrets = [t.key for t in self.targets if t.key]
        self.secret_bytes = [k.encode() for k in self.secrets]
        self.balancer = SmoothWeightedRoundRobin([ep.weight for ep in config.endpoints])
        self.limiter = Pacer(config.rps) if config.rps else None
        self.stats.endpoints = [t.stats for t in self.targets]
        connector = aiohttp.TCPConnector(limit=config.concurrency, limit_per_host=0,
                                         ttl_dns_cache=None)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), trust_env=False)
        for target in self.targets:
            target.open(self.session, config.transport)

    async def _close(self, *helpers: asyncio.Task[None]) -> None:
        for task in (*helpers, *self.tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*helpers, *self.tasks, return_exceptions=True)
        for target in self.targets:
            await target.transport.close()
        await self.session.close()

    async def batches(self) -> AsyncIterator[list[Result]]:
        loop = asyncio.get_running_loop()
        self._open()
        self.stats.started = loop.time()
        with gc_paused():
            dispatcher = loop.create_task(self.dispatch())
            sweeper = loop.create_task(self.sweep_timeouts())
            try:
                while True:
                    if self.done:
                        batch, self.done = self.done, []
                        yield batch
                        continue
                    if self.finished:
                        break
                    if dispatcher.done():
                        dispatcher.result()  # re-raise an unexpected dispatcher failure
                    self.consumer_wake = loop.create_future()
                    try:
                        await asyncio.wait((self.consumer_wake, dispatcher),
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        self.consumer_wake = None
            finally:
                self.stats.finished = loop.time()
                await self._close(dispatcher, sweeper)


class RunControl:
    """A handle to stop a run gracefully: ``stop()`` (thread-safe via ``stop_threadsafe``)
    stops reading rows and sending retries; requests in flight may still finish."""

    def __init__(self) -> None:
        self._run: _Run | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested = False

    def _attach(self, run: _Run) -> None:
        self._run = run
        self._loop = asyncio.get_running_loop()
        if self.stop_requested:
            run.stop()

    def stop(self) -> None:
        self.stop_requested = True
        if self._run is not None:
            self._run.stop()

    def stop_threadsafe(self) -> None:
        self.stop_requested = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.stop)


async def stream_results(
    rows: Iterable[Row], config: RunConfig, stats: RunStats | None = None,
    control: RunControl | None = None, on_result: Callable[[Result], None] | None = None,
) -> AsyncIterator[list[Result]]:
    """Send one request per row and yield batches of results as they complete.

    Every row yields exactly one :class:`Result`, unless the run is stopped early
    (``control.stop()``: rows not yet sent get none; ``stats.unfinished`` counts retries
    dropped). ``stats`` (optional) is kept up to date for progress display. Closing the
    generator (or cancelling its task) stops the run at once. ``on_result`` (optional) is
    called with each result the moment it exists, before it is batched.

    >>> async def main(url):  # doctest: +SKIP
    ...     rows = [(0, {"input": "hi"}, None)]
    ...     async for batch in stream_results(rows, RunConfig([url])):
    ...         print(batch[0].response)
    """
    run = _Run(rows, config, stats if stats is not None else RunStats())
    run.on_result = on_result
    if control is not None:
        control._attach(run)
    async for batch in run.batches():
        yield batch
