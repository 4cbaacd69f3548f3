"""One attempt of one row: encode, POST through the endpoint's transport, parse — and one
outcome, an :class:`~llmframe._protocols.Answer` or an :class:`~llmframe._retry.AttemptError`.

Transports raise only ``TransportError``; a timeout arrives as the task's cancellation by
the run's sweeper (``job.timed_out`` tells it from a real cancellation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import Any

import orjson

from ._config import RunConfig
from ._pool import EndpointPool, Target
from ._protocols import Answer, Prepared, encode, parse_response
from ._results import Result, RunStats
from ._retry import AttemptError, RetryPolicy, is_retryable_status, parse_retry_after
from ._secrets import Secrets
from ._transport import TransportError

__all__ = ["Attempts", "Job", "send"]

_BODY_EXCERPT = 300
#: what each kind of transport failure is called in results
_KINDS = {"connect": "connection_error", "protocol": "connection_error",
          "timeout": "timeout", "decode": "invalid_response"}


class Job:
    """A row on its way: its request, attempts so far, where it last failed."""

    __slots__ = ("attempts", "back", "deadline", "index", "last_endpoint", "payload", "prepared",
                 "retry_state", "timed_out")

    def __init__(self, index: int, payload: Any, prepared: Prepared) -> None:
        self.index = index
        self.payload = payload
        self.prepared = prepared
        self.attempts = 0
        self.last_endpoint = -1
        self.back = False  # the retry waited that endpoint's Retry-After: go back to it
        self.timed_out = False
        self.deadline = 0.0
        self.retry_state: Any = None  # tenacity's RetryCallState, from the first failure


async def send(job: Job, target: Target, api: str, secrets: Secrets) -> Answer | AttemptError:
    """Make one attempt of ``job`` at ``target``; never raises but for a real cancellation."""
    job.timed_out = False
    try:
        body = encode(job.prepared, target.model)
    except (orjson.JSONEncodeError, TypeError) as exc:
        return AttemptError("invalid_input", f"row cannot be encoded as JSON: {exc}")
    try:
        status, headers, data = await target.transport.post(body)
    except TransportError as exc:
        return AttemptError(_KINDS[exc.kind], secrets.redact(str(exc)) or exc.kind,
                            retryable=True)
    except asyncio.CancelledError:
        if not job.timed_out:
            raise
        return AttemptError("timeout", f"no answer within {target.timeout:g} s",
                            retryable=True)
    if not 200 <= status < 300:
        return http_error(status, headers, data, secrets)
    try:
        answer = parse_response(api, data)
    except AttemptError as exc:
        exc.body = excerpt(data, secrets, 200)
        return exc
    if secrets.keys and secrets.leaks(data):
        answer.text = secrets.redact_answer(answer.text)
    return answer


def http_error(status: int, headers: Mapping[str, str], data: bytes,
               secrets: Secrets) -> AttemptError:
    """The attempt error for a non-2xx answer, with a redacted excerpt of its body."""
    return AttemptError(
        "http_error", f"HTTP {status}", status=status, retryable=is_retryable_status(status),
        retry_after=parse_retry_after(headers) if status in (429, 503) else None,
        body=excerpt(data, secrets, _BODY_EXCERPT),
    )


def excerpt(data: bytes, secrets: Secrets, size: int) -> str:
    """The first ``size`` characters of a body, redacted *before* it is cut (a key that
    straddles the cut must not leave its first half behind).

    >>> excerpt(b"x" * 8 + b"sk-secret-key", Secrets(["sk-secret-key"]), 10)
    'xxxxxxxx**'
    """
    window = size + max((len(k) for k in secrets.keys), default=0) + 64
    return secrets.redact(data[:window].decode("utf-8", "replace"))[:size]


class Attempts:
    """Runs each attempt as a task and settles its outcome: the row's result, or a retry
    handed back to the dispatcher. ``dispatcher`` is set once it exists."""

    def __init__(self, config: RunConfig, pool: EndpointPool, policy: RetryPolicy,
                 secrets: Secrets, stats: RunStats, emit: Callable[[Result], None]) -> None:
        self.api = config.api
        self.pool = pool
        self.policy = policy
        self.secrets = secrets
        self.stats = stats
        self.emit = emit
        self.tasks: dict[asyncio.Task[None], Job] = {}
        self.dispatcher: Any = None

    def expire(self, now: float) -> None:
        """Cancel the attempts past their deadline (the run's sweeper calls this)."""
        for task, job in [(t, j) for t, j in self.tasks.items() if j.deadline <= now]:
            if not task.done():
                job.timed_out = True
                task.cancel()

    def launch(self, job: Job, target: Target) -> None:
        task = asyncio.get_running_loop().create_task(self._attempt(job, target))
        self.tasks[task] = job
        task.add_done_callback(self.tasks.pop)

    async def _attempt(self, job: Job, target: Target) -> None:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        job.attempts += 1
        target.stats.sent += 1
        started = perf_counter()  # uvloop's loop.time() only has millisecond resolution
        try:
            outcome = await send(job, target, self.api, self.secrets)
        except Exception as exc:  # a bug, not the network: the row still gets its result
            outcome = AttemptError("internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            self.dispatcher.done_one(target)
        latency = perf_counter() - started
        if isinstance(outcome, Answer):
            target.health.on_success(loop.time(), latency)
            target.stats.ok += 1
            target.stats.record_latency(latency)
            self.emit(Result(
                job.index, job.payload, response=outcome.text, attempts=job.attempts,
                endpoint=target.name, latency=latency, finish_reason=outcome.finish_reason,
                prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
            ))
        else:
            self._failed(job, target, outcome, sent_at, latency)

    def _failed(self, job: Job, target: Target, error: AttemptError, sent_at: float,
                latency: float) -> None:
        now = asyncio.get_running_loop().time()
        if job.retry_state is None:
            job.retry_state = self.policy.new_state()
        elsewhere = self.pool.elsewhere(target, now)
        decision = self.policy.decide(job.retry_state, error, elsewhere=elsewhere,
                                      alternative=self.pool.alternative(target, now))
        health = target.health
        health.on_failure(now, error.kind, error.status, retry_after=decision.retry_after,
                          out_for=decision.out_for, sent_at=sent_at)
        stats = target.stats
        stats.failed_attempts += 1
        stats.cooldowns, stats.throttled = health.cooldowns, health.throttled
        if decision.wait is None:
            self.emit(self._final_error(job, target, error, latency, decision.reason))
            return
        self.stats.retries += 1
        job.last_endpoint = target.index
        job.back = decision.retry_after is not None and not elsewhere
        self.dispatcher.retry(job, decision.wait)

    def _final_error(self, job: Job, target: Target, error: AttemptError, latency: float,
                     reason: str | None) -> Result:
        tries = "attempt" if job.attempts == 1 else "attempts"
        message = f"{reason or error} from {target.name} after {job.attempts} {tries}"
        if error.body:
            message += f": {' '.join(error.body.split())}"
        return Result(
            job.index, job.payload, error=self.secrets.redact(message), error_type=error.kind,
            status=error.status, attempts=job.attempts, endpoint=target.name, latency=latency,
        )
