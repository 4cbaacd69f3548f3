"""What a provider's answer says about its limits: rate-limit headers and a spent quota.

Providers tell every client its limits on every answer; reading them lets a run learn its
rate and back off before the 429s, instead of discovering the limit by hitting it.

- :func:`parse_rate_limits`: OpenAI's ``x-ratelimit-*`` and Anthropic's
  ``anthropic-ratelimit-*`` headers as one :class:`RateLimits` (resets in seconds from
  now). It runs on every answer, so an answer without such headers costs about a
  microsecond.
- :func:`parse_duration`: OpenAI's reset durations, Go style (``"6m0s"``, ``"12ms"``).
- :func:`quota_spent`: an error that says the account's credit or quota is spent: no wait
  fixes it, unlike a rate limit that says the same thing in similar words.
"""

from __future__ import annotations

import calendar
import functools
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RateLimits", "parse_duration", "parse_rate_limits", "parse_rfc3339",
           "quota_spent"]

_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6,
          "ns": 1e-9}
_DURATION = re.compile(r"(?:(?:\d+\.?\d*|\.\d+)(?:h|ms|m|us|µs|μs|ns|s))+")
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(h|ms|m|us|µs|μs|ns|s)")
_SECONDS = re.compile(r"\d+\.?\d*|\.\d+")
_Family = tuple[int | None, int | None, float | None]  # limit, remaining, reset
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?"
                      r"(?:([Zz])|([+-])(\d\d):?(\d\d))?")


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (OpenAI's resets) or a bare number of seconds.

    >>> [parse_duration(t) for t in ("1s", "6m0s", "12ms", "1m30.5s", "500µs", "0.5")]
    [1.0, 360.0, 0.012, 90.5, 0.0005, 0.5]
    >>> parse_duration("soon"), parse_duration("-1s"), parse_duration("inf")
    (None, None, None)
    """
    return _duration(text) if isinstance(text, str) else None


@functools.lru_cache(maxsize=1024)  # providers repeat a few values: "6ms", "1s", ...
def _duration(text: str) -> float | None:
    text = text.strip()
    if _SECONDS.fullmatch(text):
        total = float(text)
    elif _DURATION.fullmatch(text):
        total = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))
    else:
        return None
    return total if math.isfinite(total) else None


def parse_rfc3339(text: str) -> float | None:
    """The unix time of an RFC 3339 timestamp (UTC when it has no offset), or None.

    >>> parse_rfc3339("2026-11-29T10:00:30Z"), parse_rfc3339("2026-11-29T11:00:30.5+01:00")
    (1795946430.0, 1795946430.5)
    >>> parse_rfc3339("2026-13-01T00:00:00Z") is None
    True
    """
    return _unix(text) if isinstance(text, str) else None


@functools.lru_cache(maxsize=1024)  # a reset time is repeated by every answer that second
def _unix(text: str) -> float | None:
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
            and hour < 24 and minute < 60 and second <= 60):
        return None
    unix = calendar.timegm((year, month, day, hour, minute, second))
    if match.group(7):
        unix += float(match.group(7))
    if match.group(8) is None and match.group(9) is not None:
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        unix += -offset if match.group(9) == "+" else offset
    return float(unix)


_LARGEST = 10**15  # past this a header is nonsense, not a limit


def _count(text: str | None) -> int | None:
    """A header's non-negative integer ("1000" or "1000.0") up to 10^15, or None.

    >>> _count("1000.0"), _count("-1"), _count("9" * 400)
    (1000, None, None)
    """
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        number = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return None
        number = int(value) if math.isfinite(value) and value.is_integer() else -1
    return number if 0 <= number <= _LARGEST else None


@dataclass(frozen=True, slots=True)
class RateLimits:
    """An endpoint's limits as its last answer stated them; None where it did not.

    ``reset_*``: seconds from the answer until that limit is whole again.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None


def _until(text: str | None, now: float) -> float | None:
    unix = parse_rfc3339(text) if text is not None else None
    return None if unix is None else max(unix - now, 0.0)


def _anthropic(found: dict[str, str], kind: str, now: float) -> _Family:
    """(limit, remaining, reset) of one ``anthropic-ratelimit-<kind>-*`` family."""
    head = f"anthropic-ratelimit-{kind}-"
    return (_count(found.get(head + "limit")), _count(found.get(head + "remaining")),
            _until(found.get(head + "reset"), now))


def _anthropic_tokens(found: dict[str, str], now: float) -> _Family:
    """The ``tokens-*`` family, else the remaining and reset of the most restrictive of
    ``input-tokens-*`` and ``output-tokens-*`` (the one with the least remaining) — but no
    limit: separate input and output limits are not one limit on their sum."""
    if any(k.startswith("anthropic-ratelimit-tokens-") for k in found):
        return _anthropic(found, "tokens", now)
    families = [f for f in (_anthropic(found, "input-tokens", now),
                            _anthropic(found, "output-tokens", now)) if f != (None,) * 3]
    if not families:
        return None, None, None
    _, remaining, reset = min(families, key=lambda f: math.inf if f[1] is None else f[1])
    return None, remaining, reset


def parse_rate_limits(headers: Mapping[str, str], now: float | None = None
                      ) -> RateLimits | None:
    """The limits an answer's headers state (OpenAI or Anthropic style), or None.

    Keys may be in any case (a plain dict, or aiohttp's case-insensitive headers).

    >>> parse_rate_limits({"x-ratelimit-limit-tokens": "30000",
    ...                    "X-RateLimit-Remaining-Tokens": "29000.0",
    ...                    "x-ratelimit-reset-tokens": "2s"})
    RateLimits(limit_requests=None, remaining_requests=None, reset_requests=None, \
limit_tokens=30000, remaining_tokens=29000, reset_tokens=2.0)
    >>> parse_rate_limits({"anthropic-ratelimit-requests-remaining": "49",
    ...                    "anthropic-ratelimit-requests-reset": "2026-11-29T10:00:30Z"},
    ...                   now=1795946400.0).reset_requests
    30.0
    >>> parse_rate_limits({"content-type": "application/json"}) is None
    True
    """
    found: dict[str, str] | None = None
    try:
        for key, value in headers.items():
            low = key.lower()
            if low.startswith(_PREFIXES):
                if found is None:
                    found = {}
                found[low] = value
        if found is None:
            return None
        return _limits(found, time.time() if now is None else now)
    except Exception:  # not a mapping of strings
        return None


def _limits(found: dict[str, str], now: float) -> RateLimits | None:
    get = found.get
    openai = (
        _count(get("x-ratelimit-limit-requests")), _count(get("x-ratelimit-remaining-requests")),
        parse_duration(get("x-ratelimit-reset-requests")),  # type: ignore[arg-type]
        _count(get("x-ratelimit-limit-tokens")), _count(get("x-ratelimit-remaining-tokens")),
        parse_duration(get("x-ratelimit-reset-tokens")),  # type: ignore[arg-type]
    )
    if any(k[0] == "a" for k in found):  # anthropic-ratelimit-*: fills what OpenAI's lack
        anthropic = _anthropic(found, "requests", now) + _anthropic_tokens(found, now)
        openai = tuple(a if o is None else o for o, a in zip(openai, anthropic, strict=True))
    if openai.count(None) == len(openai):
        return None
    return RateLimits(*openai)


# Markers that always mean the credit or quota is spent.
_SPENT = ("insufficient_quota", "billing_hard_limit_reached", "billing hard limit has been",
          "billing_not_active", "account is not active, please check your billing",
          "credit balance is too low", "insufficient credits", "insufficient_credits",
          "insufficient balance", "insufficient_balance", "out of call volume quota")
# OpenAI's insufficient_quota message, which Google's per-minute 429 also starts with.
_AMBIGUOUS = "exceeded your current quota"
_RATE_LIMIT = ("rate-limit", "rate_limit", "rate limit", "resource_exhausted", "per minute",
               "perminute", "quota exceeded for", "quota metric", "ai.google.dev",
               "aistudio.google", "googleapis.com")


def quota_spent(status: int | None, body: str | bytes | None) -> bool:
    """True when an error answer says the account's quota or credit is spent (a wait will
    not help), as opposed to a rate limit. HTTP 402 always is.

    >>> quota_spent(429, '{"error": {"message": "You exceeded your current quota, please '
    ...                  'check your plan and billing details.", "type": "insufficient_quota"}}')
    True
    >>> quota_spent(400, "Your credit balance is too low to access the Anthropic API."), \
quota_spent(402, None)
    (True, True)
    >>> quota_spent(429, "Rate limit reached for gpt-4 on tokens per min (TPM)")
    False
    """
    if status == 402:
        return True
    if (status is not None and 200 <= status < 400) or not body:
        return False
    if isinstance(body, (bytes, bytearray, memoryview)):
        text = bytes(body).decode("utf-8", "replace").lower()
    elif isinstance(body, str):
        text = body.lower()
    else:
        return False
    if any(marker in text for marker in _SPENT):
        return True
    return _AMBIGUOUS in text and not any(marker in text for marker in _RATE_LIMIT)
