"""What is worth retrying, how long to wait, and when to give up: one decision, one place.

Small pure pieces, tested without sleeping:

- :func:`is_retryable_status`: 408, 409, 429 and 5xx can succeed later; other 4xx cannot.
- :func:`parse_retry_after`: ``retry-after-ms``, then ``Retry-After`` as seconds or HTTP date.
- :class:`RetryPolicy`: ``decide(state, error) -> Decision``. The stop / wait / retry rules
  are tenacity strategies composed in a ``tenacity.Retrying`` built once per run, and
  driven through tenacity's own state machine (``Retrying.iter``) only when an attempt
  fails — each failing row carries the ``RetryCallState`` tenacity itself would create.
  The ``max_retry_after`` cap is applied here and nowhere else.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import tenacity
from tenacity import RetryCallState
from tenacity.wait import wait_base

__all__ = ["AttemptError", "Decision", "RetryPolicy", "is_retryable_status",
           "parse_retry_after"]


def is_retryable_status(status: int) -> bool:
    """True for statuses a later attempt can fix (408, 409, 429, 5xx).

    >>> [is_retryable_status(s) for s in (400, 408, 429, 500, 503, 404)]
    [False, True, True, True, True, False]
    """
    return status in (408, 409, 429) or status >= 500


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, or None when absent or unparseable.

    >>> parse_retry_after({"retry-after-ms": "1500"})
    1.5
    >>> parse_retry_after({"Retry-After": "2"})
    2.0
    >>> parse_retry_after({"Retry-After": "soon"}) is None
    True
    """
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    text = lower.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        parsed = email.utils.parsedate_tz(text)
        if parsed is None:
            return None
        value = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
    if not math.isfinite(value):
        return None
    return max(value, 0.0)


class AttemptError(Exception):
    """One failed attempt. ``retryable`` says whether another attempt may succeed."""

    __slots__ = ("body", "kind", "retry_after", "retryable", "status")

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.body = body


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt.

    ``wait``: seconds before the next attempt, or None to give up (``reason`` then says why
    when it is not the error itself). ``retry_after``: what the server asked, when within
    the cap (the endpoint's health may use it for a saturation pause). ``out_for``: the
    server asked for longer than the cap; the endpoint is out of the run for that long.
    """

    wait: float | None
    retry_after: float | None = None
    out_for: float | None = None
    reason: str | None = None


class wait_retry_after(wait_base):
    """Wait what the server asked (0 < x <= ``limit``), otherwise ``fallback``. A
    Retry-After of 0 (or a date already past) counts as absent, as in openai-python: a
    server that keeps saying "now" must not burn a row's attempts in a few milliseconds."""

    def __init__(self, fallback: wait_base, limit: float) -> None:
        self.fallback = fallback
        self.limit = limit

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None and 0 < after <= self.limit:
            return float(after)
        return self.fallback(retry_state)


class wait_jittered(wait_base):
    """``inner``'s wait, up to ``jitter`` of it less (like openai-python): spreads retries
    that failed together."""

    def __init__(self, inner: wait_base, jitter: float) -> None:
        self.inner = inner
        self.jitter = jitter

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.inner(retry_state) * (1 - self.jitter * random.random())


def over_limit(after: float, limit: float) -> str:
    """The error text for a Retry-After past the cap.

    >>> over_limit(86400, 60)
    'server asked to retry after 86400 s, over the 60 s limit'
    """
    return f"server asked to retry after {after:g} s, over the {limit:g} s limit"


class RetryPolicy:
    """When to retry and how long to wait. Build once per run.

    >>> policy = RetryPolicy(max_attempts=3, initial=0.5, maximum=8, jitter=0)
    >>> state = policy.new_state()
    >>> policy.decide(state, AttemptError("http", "503", status=503, retryable=True)).wait
    0.5
    >>> policy.decide(state, AttemptError("http", "429", retryable=True, retry_after=7)).wait
    7.0
    >>> policy.decide(state, AttemptError("http", "503", retryable=True)).wait is None
    True
    >>> d = policy.decide(policy.new_state(), AttemptError("http", "429", retryable=True,
    ...                   retry_after=86400), elsewhere=False)
    >>> d.wait, d.out_for, d.reason
    (None, 86400, 'server asked to retry after 86400 s, over the 60 s limit')
    """

    __slots__ = ("_backoff", "_retrying", "max_retry_after")

    def __init__(self, *, max_attempts: int, initial: float = 0.5, maximum: float = 8.0,
                 jitter: float = 0.25, max_retry_after: float = 60.0) -> None:
        backoff: wait_base = tenacity.wait_exponential(multiplier=initial, min=initial,
                                                       max=maximum)
        if jitter:
            backoff = wait_jittered(backoff, jitter)
        self._backoff = backoff
        self.max_retry_after = max_retry_after
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max_attempts),
            wait=wait_retry_after(backoff, max_retry_after),
            retry=tenacity.retry_if_exception(lambda e: getattr(e, "retryable", False)),
            reraise=True,
        )

    def new_state(self) -> RetryCallState:
        """The retry state of one row, created at its first failure (as ``Retrying.__call__``
        does per call: ``begin()``, then a fresh state)."""
        self._retrying.begin()
        return RetryCallState(self._retrying, fn=None, args=(), kwargs={})

    def decide(self, state: RetryCallState, error: AttemptError, *,
               elsewhere: bool = False, alternative: bool | None = None) -> Decision:
        """Record ``error`` as the outcome of the row's current attempt and decide.

        ``elsewhere``: another endpoint is healthy now; a retry that can go there waits the
        ordinary backoff, not the Retry-After of the endpoint that refused it.
        ``alternative``: another endpoint is not out (default: ``elsewhere``); without one,
        a Retry-After past the cap ends the row at once.
        """
        if alternative is None:
            alternative = elsewhere
        state.set_exception((type(error), error, None))
        after = error.retry_after
        out_for = after if after is not None and after > self.max_retry_after else None
        try:
            wait = float(self._retrying.iter(state))  # DoSleep, or raises: give up
        except AttemptError:
            return Decision(None, out_for=out_for)
        if out_for is not None and not alternative:
            return Decision(None, out_for=out_for,
                            reason=over_limit(out_for, self.max_retry_after))
        within = after if out_for is None else None
        if elsewhere and within is not None:
            wait = float(self._backoff(state))
        state.prepare_for_next_attempt()
        return Decision(wait, retry_after=within, out_for=out_for)
