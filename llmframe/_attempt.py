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
from ._meter import worst_cost
from ._pool import EndpointPool, Target
from ._protocols import Answer, Prepared, encode, parse_response
from ._ratelimits import parse_rate_limits, quota_spent
from ._results import Result, RunStats
from ._retry import AttemptError, RetryPolicy, is_retryable_status, parse_retry_after
from ._secrets import Secrets
from ._transport import TransportError

__all__ = ["Attempts", "Job", "send"]

_BODY_EXCERPT = 300
#: failures the provider may still bill (it may have answered): the budget charges them
_MAYBE_BILLED = frozenset({"timeout", "invalid_response", "internal_error"})
#: what each kind of transport failure is called in results
_KINDS = {"connect": "connection_error", "protocol": "connection_error",
          "timeout": "timeout", "decode": "invalid_response"}


class Job:
    """A row on its way: its request, attempts so far, where it last failed."""

    __slots__ = ("attempts", "back", "cap", "cost", "deadline", "index", "last_endpoint",
                 "payload", "prepared", "prompt", "retry_state", "timed_out", "tokens")

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
        self.prompt = -1  # our count of its prompt tokens (-1: not counted, no token limits)
        self.cap: int | None = None  # its max_tokens
        self.tokens = 0  # tokens reserved for the attempt in flight
        self.cost = 0.0  # worst-case USD reserved against the budget


async def send(job: Job, target: Target, api: str, secrets: Secrets) -> Answer | AttemptError:
    """Make one attempt of ``job`` at ``target``; never raises but for a real cancellation."""
    job.timed_out = False
    try:
        body = encode(job.prepared, target.model)
    except (orjson.JSONEncodeError, TypeError) as exc:
        return AttemptError("invalid_input", f"row cannot be encoded as JSON: {exc}")
    try:
        status, headers, data = await target.transport.post(body)
        limits = parse_rate_limits(headers)
        if limits is not None:
            target.observe(limits, job.tokens, asyncio.get_running_loop().time())
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
    """The attempt error for a non-2xx answer, with a redacted excerpt of its body. A spent
    quota (``insufficient_quota``, billing errors, 402) is ``quota_exceeded``: never
    retried at that endpoint."""
    body = excerpt(data, secrets, _BODY_EXCERPT)
    if status in (400, 402, 403, 429) and quota_spent(status, body):
        return AttemptError("quota_exceeded", f"HTTP {status}: the quota is spent",
                            status=status, body=body)
    return AttemptError(
        "http_error", f"HTTP {status}", status=status, retryable=is_retryable_status(status),
        retry_after=parse_retry_after(headers) if status in (429, 503) else None, body=body,
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
        if not isinstance(outcome, Answer):
            self._settle(job, target, outcome, None)
            self._failed(job, target, outcome, sent_at, latency)
            return
        target.health.on_success(loop.time(), latency)
        target.stats.ok += 1
        target.stats.record_latency(latency)
        usage = outcome.usage
        result = Result(
            job.index, job.payload, response=outcome.text, attempts=job.attempts,
            endpoint=target.name, latency=latency, finish_reason=outcome.finish_reason)
        if usage is not None:
            result.prompt_tokens, result.completion_tokens = (usage.prompt_tokens,
                                                              usage.completion_tokens)
            result.cached_tokens, result.reasoning_tokens = (usage.cached_tokens,
                                                             usage.reasoning_tokens)
            result.cost_usd = target.endpoint.cost(usage.prompt_tokens,
                                                   usage.completion_tokens)
            target.stats.record_usage(result)
        charged = self._settle(job, target, outcome, result.cost_usd)
        if usage is None and charged is not None:  # the budget's charge, marked as such
            result.cost_usd, result.cost_estimated = charged, True
            target.stats.record_usage(result)
        self.emit(result)

    def _settle(self, job: Job, target: Target, outcome: Answer | AttemptError,
                cost: float | None) -> float | None:
        """Settle the attempt's reservations: tokens against the answer's usage (without
        one, against our count of the prompt and the answer; a refused request used none; a
        lost one keeps its estimate), the budget against its cost. Returns what the budget
        charged for an answer without usage (its worst case), else None."""
        gate = self.dispatcher.gate
        if job.tokens:
            if isinstance(outcome, Answer):
                usage = outcome.usage
                if usage is None:  # no usage: our own count of the answer, not the guess
                    usage = gate.meter.guess_usage(job.prompt, outcome.text)
                elif job.prompt >= 0:
                    gate.meter.learn(job.prompt, usage)
                used = usage.total
            else:
                used = 0 if outcome.status is not None else None
            if used is not None:
                if target.tokens is not None:
                    target.tokens.settle(job.tokens - used)
                if gate.tokens is not None:
                    gate.tokens.settle(job.tokens - used)
            job.tokens = 0
        if job.cost:
            if isinstance(outcome, Answer) and outcome.usage is None:
                gate.meter.unmetered()
                cost = worst_cost(target.endpoint, gate.meter, job.prompt, job.cap)
            # a failure that may be billed: its reservation is charged; a refusal or a
            # request never delivered costs nothing
            billed = isinstance(outcome, Answer) or outcome.kind in _MAYBE_BILLED
            gate.budget.release(job.cost, cost if billed else 0.0)
            job.cost = 0.0
            return cost
        return None

    def _failed(self, job: Job, target: Target, error: AttemptError, sent_at: float,
                latency: float) -> None:
        now = asyncio.get_running_loop().time()
        if error.kind == "quota_exceeded":
            self._quota_spent(job, target, error, now, latency)
            return
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

    def _quota_spent(self, job: Job, target: Target, error: AttemptError, now: float,
                     latency: float) -> None:
        """Spent quota is not a rate limit: the endpoint leaves the run, and the row goes
        to another one at once (not a retry of the row: its attempts are not used up)."""
        target.stats.failed_attempts += 1
        if not target.health.out(now):
            why = "quota spent"
            if error.body:
                why += f" ({' '.join(error.body.split())[:160]})"
            target.health.leave(why)
            target.stats.note = "out: quota spent"
        if self.pool.alternative(target, now):
            job.last_endpoint = target.index
            job.back = False
            self.dispatcher.retry(job, 0.0)
            return
        self.emit(self._final_error(job, target, error, latency, None))

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
