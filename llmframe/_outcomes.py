"""Attempts and their outcomes: each attempt runs as a task (``_attempt.send``), and its
outcome is settled here — the row's result, a retry handed back to the dispatcher, or an
endpoint leaving the run (quota spent, structured output refused in every form).

Settling also squares the run's accounts: the tokens and budget the attempt reserved
against what its answer used, the answer's usage and cost in the endpoint's figures, and
(with a cache) the answer stored for the next run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import Any

from ._attempt import Job, send
from ._config import RunConfig
from ._json import dumps
from ._meter import Gate, worst_cost
from ._pool import EndpointPool, Target
from ._protocols import Answer
from ._results import Result, RunStats
from ._retry import AttemptError, RetryPolicy
from ._secrets import Secrets
from ._structured import check_answer, raw_text

__all__ = ["Attempts", "cache_value", "final_error", "settle", "storable"]

#: failures the provider may still bill (it may have answered): the budget charges them
_MAYBE_BILLED = frozenset({"timeout", "invalid_response", "internal_error"})


def storable(result: Result, truncated: bool) -> bool:
    """Only complete answers are cached: with content, not filtered, not cut short by
    ``max_tokens`` unless ``truncated`` (``cache_truncated``) asks for those too.

    >>> storable(Result(0, {}, response="hi", finish_reason="stop"), False)
    True
    >>> [storable(Result(0, {}, response=r, finish_reason=f), False)
    ...  for r, f in [(None, "stop"), ("x", "content_filter"), ("x", "length")]]
    [False, False, False]
    """
    finish = result.finish_reason
    return result.response is not None and finish != "content_filter" and (
        finish != "length" or truncated)


def cache_value(result: Result) -> bytes:
    """What the response cache keeps of an answer: the response and its finish reason."""
    return dumps([result.response, result.finish_reason])


class Attempts:
    """Runs each attempt as a task and settles its outcome. ``dispatcher`` is set once it
    exists; ``cache`` (a ``CacheClient``) when the run has one."""

    def __init__(self, config: RunConfig, pool: EndpointPool, policy: RetryPolicy,
                 secrets: Secrets, stats: RunStats, emit: Callable[[Result], None]) -> None:
        self.api = config.api
        self.schema = config.schema
        self.cache_truncated = config.cache_truncated
        self.pool = pool
        self.policy = policy
        self.secrets = secrets
        self.stats = stats
        self.emit = emit
        self.tasks: dict[asyncio.Task[None], Job] = {}
        self.dispatcher: Any = None
        self.cache: Any = None

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
            settle(self.dispatcher.gate, job, target, outcome, None)
            self._failed(job, target, outcome, sent_at, latency)
            return
        target.health.on_success(loop.time(), latency)
        result = self._answered(job, target, outcome, latency)
        if target.formats is not None:
            target.formats.answered.add(job.form)  # type: ignore[arg-type]
            value = check_answer(self.schema, outcome)
            if isinstance(value, AttemptError):
                job.raw = raw_text(outcome.text) if outcome.refusal is None else outcome.refusal
                job.finish = outcome.finish_reason
                self._failed(job, target, value, sent_at, latency)
                return
            result.response = value
        target.stats.ok += 1
        target.stats.record_latency(latency)
        cache = self.cache
        if cache is not None and job.key is not None and storable(result,
                                                                  self.cache_truncated):
            cache.store(job.key, cache_value(result))
        self.emit(result)

    def _answered(self, job: Job, target: Target, answer: Answer, latency: float) -> Result:
        """The row's result from an answer; its usage and cost counted, its reservations
        settled (an answer that then breaks the schema still cost what it cost)."""
        usage = answer.usage
        result = Result(
            job.index, job.payload, response=answer.text, attempts=job.attempts,
            endpoint=target.name, latency=latency, finish_reason=answer.finish_reason)
        if usage is not None:
            result.prompt_tokens, result.completion_tokens = (usage.prompt_tokens,
                                                              usage.completion_tokens)
            result.cached_tokens, result.reasoning_tokens = (usage.cached_tokens,
                                                             usage.reasoning_tokens)
            result.cost_usd = target.endpoint.cost(usage.prompt_tokens,
                                                   usage.completion_tokens)
            target.stats.record_usage(result)
        charged = settle(self.dispatcher.gate, job, target, answer, result.cost_usd)
        if usage is None and charged is not None:  # the budget's charge, marked as such
            result.cost_usd, result.cost_estimated = charged, True
            target.stats.record_usage(result)
        if result.cost_usd is not None:
            job.spent += result.cost_usd
            result.cost_usd = job.spent  # the row's cost: every answer it took
        return result

    def _failed(self, job: Job, target: Target, error: AttemptError, sent_at: float,
                latency: float) -> None:
        now = asyncio.get_running_loop().time()
        if error.kind in ("quota_exceeded", "format_rejected"):
            self._refused(job, target, error, now, latency)
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
            self.emit(final_error(job, target, error, latency, decision.reason, self.secrets))
            return
        self.stats.retries += 1
        job.last_endpoint = target.index
        job.back = decision.retry_after is not None and not elsewhere
        # an answer that broke the schema: the server is fine, ask again (elsewhere) now
        self.dispatcher.retry(job, 0.0 if error.kind == "invalid_output" else decision.wait)

    def _refused(self, job: Job, target: Target, error: AttemptError, now: float,
                 latency: float) -> None:
        """The endpoint refused the request itself, not the row: a spent quota (it leaves
        the run), or a ``response_format`` form (asked in the other form next; it leaves
        when it refuses both). The row goes on at once, its attempts not used up."""
        target.stats.failed_attempts += 1
        reason = None
        if error.kind == "format_rejected":
            formats = target.formats
            if formats.reject(job.form, f"HTTP {error.status} {error.body or ''}".strip()):
                job.attempts -= 1  # not the row's fault: ask again in the other form
                self.dispatcher.retry(job, 0.0)
                return
            why = f"refuses structured output in every form ({formats.why()})"
            reason, note = f"the endpoint {why}", "out: no structured output"
        else:
            why = "quota spent" + (f" ({' '.join(error.body.split())[:160]})"
                                   if error.body else "")
            note = "out: quota spent"
        if not target.health.out(now):
            target.health.leave(why)
            target.stats.note = note
        if self.pool.alternative(target, now):
            job.last_endpoint = target.index
            job.back = False
            job.attempts -= reason is not None  # a refused form is not the row's attempt
            self.dispatcher.retry(job, 0.0)
            return
        self.emit(final_error(job, target, error, latency, reason, self.secrets))


def final_error(job: Job, target: Target, error: AttemptError, latency: float,
                reason: str | None, secrets: Secrets) -> Result:
    """The error result of a row whose last attempt failed (``reason``: why it ends, when
    it is not the error itself)."""
    tries = "attempt" if job.attempts == 1 else "attempts"
    message = f"{reason or error} from {target.name} after {job.attempts} {tries}"
    if error.body and error.kind != "format_rejected":
        message += f": {' '.join(error.body.split())}"
    return Result(
        job.index, job.payload, error=secrets.redact(message), error_type=error.kind,
        status=error.status, attempts=job.attempts, endpoint=target.name, latency=latency,
        raw_response=job.raw if error.kind == "invalid_output" else None,
        finish_reason=job.finish if error.kind == "invalid_output" else None,
        cost_usd=job.spent or None,
    )


def settle(gate: Gate, job: Job, target: Target, outcome: Answer | AttemptError,
           cost: float | None) -> float | None:
    """Settle the attempt's reservations: tokens against the answer's usage (without one,
    against our count of the prompt and the answer; a refused request used none; a lost
    one keeps its estimate), the budget against its cost. Returns what the budget charged
    for an answer without usage (its worst case), else None."""
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
