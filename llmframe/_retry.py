"""What is worth retrying, how long to wait, and when to give up.

Small pure pieces, tested without sleeping:

- :func:`is_retryable_status`: 408, 409, 429 and 5xx can succeed later; other 4xx cannot.
- :func:`parse_retry_after`: ``retry-after-ms``, then ``Retry-After`` as seconds or HTTP date.
- :class:`RetryPolicy`: tenacity's strategy objects (stop / wait), built once per run and
  evaluated only when an attempt fails — no retrying object per request.
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

__all__ = ["AttemptError", "RetryPolicy", "is_retryable_status", "parse_retry_after"]


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


class wait_retry_after(wait_base):
    """Wait what the server asked (0 <= x <= ``limit``), otherwise ``fallback``."""

    def __init__(self, fallback: wait_base, limit: float = 60.0) -> None:
        self.fallback = fallback
        self.limit = limit

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None and 0 <= after <= self.limit:
            return float(after)
        return self.fallback(retry_state)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to retry and how long to wait, as tenacity strategies. Build once per run.

    >>> policy = RetryPolicy.build(max_attempts=3, initial=0.5, maximum=8, jitter=0)
    >>> policy.next_wait(1, AttemptError("http", "503", status=503, retryable=True))
    0.5
    >>> policy.next_wait(3, AttemptError("http", "503", status=503, retryable=True)) is None
    True
    >>> policy.next_wait(1, AttemptError("http", "429", retryable=True, retry_after=7))
    7.0
    """

    stop: tenacity.stop.stop_base
    wait: wait_base
    retry: tenacity.retry.retry_base
    fallback: wait_base

    @classmethod
    def build(
        cls,
        *,
        max_attempts: int,
        initial: float = 0.5,
        maximum: float = 8.0,
        jitter: float = 0.25,
        max_retry_after: float = 60.0,
    ) -> RetryPolicy:
        backoff = tenacity.wait_exponential(multiplier=initial, min=initial, max=maximum)
        if jitter:
            # "up to jitter of the wait less", like openai-python: spreads synchronized retries
            backoff = _scaled_jitter(backoff, jitter)
        return cls(
            stop=tenacity.stop_after_attempt(max_attempts),
            wait=wait_retry_after(backoff, max_retry_after),
            retry=tenacity.retry_if_exception(lambda e: getattr(e, "retryable", False)),
            fallback=backoff,
        )

    def backoff(self, attempt_number: int) -> float:
        """The exponential backoff alone, ignoring any Retry-After."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt_number
        return float(self.fallback(state))

    def next_wait(self, attempt_number: int, error: BaseException) -> float | None:
        """Seconds to wait before attempt ``attempt_number + 1``, or None to give up."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt_number
        state.outcome = tenacity.Future.construct(attempt_number, error, True)
        if not self.retry(state) or self.stop(state):
            return None
        return float(self.wait(state))


class _scaled_jitter(wait_base):
    def __init__(self, inner: wait_base, jitter: float) -> None:
        self.inner = inner
        self.jitter = jitter

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.inner(retry_state) * (1 - self.jitter * random.random())
