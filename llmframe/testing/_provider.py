"""Provider mode of the mock server: rate limits, rate-limit headers and a spent quota.

Limits work the way paid providers document them: one token bucket per limit, holding one
window's worth (``limit * window / 60``) and refilled continuously at ``limit / 60`` per
second. A request is admitted when the request bucket holds 1 and the token bucket holds the
request's tokens (the usage its answer reports); it takes them at arrival. Otherwise it gets
a 429 with ``Retry-After`` (seconds until both buckets hold enough) like OpenAI's.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import orjson

from ._answers import _error_body, _response, answer, echo_auth, number, request_doc

if TYPE_CHECKING:
    from ._server import MockState

__all__ = ["Bucket", "RateLimits", "arrive", "go_duration", "header_style", "limit_headers",
           "provider_stats", "rfc3339"]

HEADER_STYLES = ("openai", "anthropic")
_EPS = 1e-9
_SLACK = 1e-6  # seconds of refill forgiven: waiting exactly Retry-After is always enough

_QUOTA = orjson.dumps({"error": {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}})


def go_duration(seconds: float) -> str:
    """A duration the way Go prints one (OpenAI's ``x-ratelimit-reset-*``), rounded up to
    the millisecond.

    >>> [go_duration(s) for s in (0, 0.0121, 1, 360, 90.5, 3600.25)]
    ['0s', '13ms', '1s', '6m0s', '1m30.5s', '1h0m0.25s']
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = str(ms // 1000) if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0")
    head = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return f"{head}{secs}s"


def rfc3339(unix: float) -> str:
    """A unix time as RFC 3339 UTC with milliseconds, rounded up (Anthropic's
    ``anthropic-ratelimit-*-reset``).

    >>> rfc3339(1795946430.25)
    '2026-11-29T10:00:30.250Z'
    """
    ms = math.ceil(unix * 1000 - 1e-6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class Bucket:
    """A token bucket: ``per_minute * window / 60`` deep, refilled at ``per_minute / 60``
    per second, full at ``now``.

    >>> b = Bucket(60, window=2.0, now=0.0)  # holds 2, refills 1 per second
    >>> b.take(2, now=0.0), b.level, b.wait(1), b.reset()
    (True, 0.0, 1.0, 2.0)
    >>> b.take(1, now=0.5), b.level
    (False, 0.5)
    """

    __slots__ = ("capacity", "level", "limit", "rate", "stamp")

    def __init__(self, per_minute: float, *, window: float, now: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60
        self.capacity = self.level = per_minute * window / 60
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, need: float) -> float:
        """Seconds until the bucket holds ``need`` (inf if it never can)."""
        if need > self.capacity + _EPS:
            return math.inf
        return max(0.0, need - self.level) / self.rate

    def reset(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) / self.rate

    def remaining(self) -> int:
        return max(0, int(self.level + _EPS))

    def holds(self, amount: float) -> bool:
        return self.level + self.rate * _SLACK >= amount

    def take(self, amount: float, now: float) -> bool:
        self.refill(now)
        if not self.holds(amount):
            return False
        self.level = max(0.0, self.level - amount)
        return True


class RateLimits:
    """Requests-per-minute and tokens-per-minute buckets (either may be None).

    >>> lim = RateLimits(rpm=120, tpm=600, window=1.0, now=0.0)  # 2 requests, 10 tokens deep
    >>> lim.admit(4, now=0.0), lim.admit(4, now=0.0), lim.admit(1, now=0.0)
    (None, None, ('requests', 0.5))
    >>> lim.admit(9, now=0.5)  # a request is back; tokens 2 + 5 = 7 of 9
    ('tokens', 0.2)
    >>> lim.admit(9, now=0.7), lim.remaining()
    (None, (0, 0))
    >>> lim.admit(11, now=99.0)  # more than the bucket holds: never
    ('tokens', inf)
    """

    __slots__ = ("requests", "tokens")

    def __init__(self, *, rpm: float | None, tpm: float | None, window: float,
                 now: float) -> None:
        self.requests = None if rpm is None else Bucket(rpm, window=window, now=now)
        self.tokens = None if tpm is None else Bucket(tpm, window=window, now=now)

    @classmethod
    def of(cls, rpm: float | None, tpm: float | None, window: float) -> RateLimits | None:
        """Limits starting now with full buckets; None without any limit."""
        if rpm is None and tpm is None:
            return None
        return cls(rpm=rpm, tpm=tpm, window=window, now=time.time())

    def buckets(self) -> list[tuple[str, Bucket]]:
        return [(kind, b) for kind, b in (("requests", self.requests), ("tokens", self.tokens))
                if b is not None]

    def admit(self, tokens: int, now: float) -> tuple[str, float] | None:
        """None (admitted: the cost is taken), or ``(kind, seconds to wait)`` where ``kind``
        is the first short bucket and the wait covers both."""
        need = {"requests": 1, "tokens": tokens}
        short, wait = None, 0.0
        for kind, bucket in self.buckets():
            bucket.refill(now)
            if not bucket.holds(need[kind]):
                short = short or kind
                wait = max(wait, bucket.wait(need[kind]))
        if short is not None:
            return short, wait
        for kind, bucket in self.buckets():
            bucket.take(need[kind], now)
        return None

    def remaining(self) -> tuple[int | None, int | None]:
        return tuple(None if b is None else b.remaining()  # type: ignore[return-value]
                     for b in (self.requests, self.tokens))

    def headers(self, style: str, now: float) -> bytes:
        """Rate-limit headers in ``style`` (``openai`` or ``anthropic``) as of ``now``."""
        out = []
        for kind, b in self.buckets():
            b.refill(now)
            if style == "openai":
                head, reset = "x-ratelimit-{}-" + kind, go_duration(b.reset())
            else:
                head, reset = f"anthropic-ratelimit-{kind}-{{}}", rfc3339(now + b.reset())
            out += [head.format("limit"), ": ", number(b.limit), "\r\n",
                    head.format("remaining"), ": ", str(b.remaining()), "\r\n",
                    head.format("reset"), ": ", reset, "\r\n"]
        return "".join(out).encode()


def _refusal(state: MockState, kind: str, wait: float, tokens: int, now: float) -> bytes:
    """The 429 for a request over a limit (no Retry-After when it can never fit)."""
    limits = state.limits
    bucket = limits.requests if kind == "requests" else limits.tokens  # type: ignore[union-attr]
    counts = state.counts
    counts["429"] += 1
    counts[f"429_{kind}"] += 1
    unit = "RPM" if kind == "requests" else "TPM"
    asked = 1 if kind == "requests" else tokens
    head = f"{kind} per min ({unit}): Limit {number(bucket.limit)}"  # type: ignore[union-attr]
    extra = b""
    if math.isinf(wait):
        counts["too_large"] += 1
        message = (f"Request too large for {head}, Requested {asked}. The input or "
                   f"output tokens must be reduced in order to run successfully.")
    else:
        ms = max(1, math.ceil(wait * 1000 - 1e-6))
        used = math.ceil(bucket.capacity - bucket.level - _EPS)  # type: ignore[union-attr]
        message = (f"Rate limit reached for {head}, Used {used}, Requested {asked}. "
                   f"Please try again in {go_duration(ms / 1000)}.")
        extra = f"Retry-After: {number(ms / 1000)}\r\nretry-after-ms: {ms}\r\n".encode()
    body = orjson.dumps({"error": {"message": message, "type": kind,
                                   "param": None, "code": "rate_limit_exceeded"}})
    return _response(429, body, extra + limit_headers(state, now))


def arrive(state: MockState, path: bytes, body: bytes, now: float,
           auth: str | None) -> tuple[bytes | None, bytes, Any]:
    """Provider mode, at a POST's arrival: ``(reply, answer, doc)``. A reply answers the
    request at once (quota spent, a bad body, a limit exceeded); otherwise the request is
    admitted (its cost taken) and ``answer`` is the 200 body to send unless a fault comes
    first (``doc``, the parsed request, lets a shape fault build it again)."""
    counts = state.counts
    if state.quota is not None and counts["ok"] >= state.quota:
        counts["429"] += 1
        counts["insufficient_quota"] += 1
        return _response(429, _QUOTA, limit_headers(state, now)), b"", None
    doc, problem = request_doc(body)
    if problem is not None:
        counts["400"] += 1
        return _response(400, _error_body(400, problem), limit_headers(state, now)), b"", None
    echo_auth(doc, state, auth)
    status, payload, tokens = answer(path, doc, state)
    if status != 200:
        counts[str(status)] += 1
        return _response(status, payload, limit_headers(state, now)), b"", doc
    if state.limits is not None:
        refused = state.limits.admit(tokens, now)
        if refused is not None:
            return _refusal(state, refused[0], refused[1], tokens, now), b"", doc
        if state.limits.tokens is not None:
            state.tokens_by_second[int(now)] += tokens
    if state.record_arrivals:
        state.admitted.append((now, tokens))
    return None, payload, doc


def limit_headers(state: MockState, now: float) -> bytes:
    """The rate-limit headers of ``state`` (none unless it has limits)."""
    if state.limits is None or state.ratelimit_headers is None:
        return b""
    return state.limits.headers(state.ratelimit_headers, now)


def header_style(rpm: float | None, tpm: float | None, window: float,
                 ratelimit_headers: str | None, quota: int | None) -> str | None:
    """Validate the provider options; the header style to use (``openai`` by default when
    a limit is set).

    >>> header_style(60, None, 60.0, None, None), header_style(None, None, 60.0, None, 3)
    ('openai', None)
    """
    problems = []
    if window <= 0:
        problems.append("window must be > 0")
    for name, limit in (("rpm", rpm), ("tpm", tpm)):
        if limit is not None and (limit <= 0 or limit * window / 60 < 1):
            problems.append(f"{name} * window / 60 must be >= 1 (the bucket must hold one)")
    if quota is not None and quota < 0:
        problems.append("quota must be >= 0")
    if ratelimit_headers is not None and ratelimit_headers not in HEADER_STYLES:
        problems.append(f"ratelimit_headers must be one of {', '.join(HEADER_STYLES)}")
    elif ratelimit_headers is not None and rpm is None and tpm is None:
        problems.append("ratelimit_headers needs rpm and/or tpm")
    if problems:
        raise ValueError("; ".join(problems))
    if ratelimit_headers is None and (rpm is not None or tpm is not None):
        return "openai"
    return ratelimit_headers


def provider_stats(state: MockState) -> dict[str, Any]:
    """The provider counters for ``/v1/_stats``."""
    out: dict[str, Any] = {"quota": state.quota, "ratelimit_headers": state.ratelimit_headers}
    if state.quota is not None:
        out["quota_left"] = max(0, state.quota - state.counts["ok"])
    if state.limits is not None:
        for kind, bucket in state.limits.buckets():
            bucket.refill(time.time())
            out[kind] = {"per_minute": bucket.limit, "bucket": bucket.capacity,
                         "remaining": bucket.remaining()}
        out["tokens_by_second"] = {str(k): v for k, v in sorted(state.tokens_by_second.items())}
    return out
