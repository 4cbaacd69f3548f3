"""One attempt of one row: encode, POST through the endpoint's transport, parse — and one
outcome, an :class:`~llmframe._protocols.Answer` or an :class:`~llmframe._retry.AttemptError`.

Transports raise only ``TransportError``; a timeout arrives as the task's cancellation by
the run's sweeper (``job.timed_out`` tells it from a real cancellation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson

from ._pool import Target
from ._protocols import Answer, Prepared, encode, parse_response
from ._ratelimits import parse_rate_limits, quota_spent
from ._retry import AttemptError, is_retryable_status, parse_retry_after
from ._secrets import Secrets
from ._transport import TransportError

__all__ = ["Job", "excerpt", "http_error", "send"]

_BODY_EXCERPT = 300
#: failures the provider may still bill (it may have answered): the budget charges them
_MAYBE_BILLED = frozenset({"timeout", "invalid_response", "internal_error"})
#: what each kind of transport failure is called in results
_KINDS = {"connect": "connection_error", "protocol": "connection_error", "tls": "tls_error",
          "proxy": "proxy_error", "timeout": "timeout", "decode": "invalid_response"}


class Job:
    """A row on its way: its request, attempts so far, where it last failed."""

    __slots__ = ("attempts", "back", "cap", "cost", "deadline", "finish", "form", "index",
                 "key", "last_endpoint", "payload", "prepared", "prompt", "raw",
                 "retry_state", "spent", "timed_out", "tokens")

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
        self.spent = 0.0  # USD its answers cost so far (one broke the schema: another try)
        self.key: bytes | None = None  # its response-cache key (with a cache)
        self.form: str | None = None  # the response_format form of the attempt in flight
        self.raw: str | None = None  # the last answer that broke the schema
        self.finish: str | None = None  # and its finish_reason


async def send(job: Job, target: Target, api: str, secrets: Secrets) -> Answer | AttemptError:
    """Make one attempt of ``job`` at ``target``; never raises but for a real cancellation."""
    job.timed_out = False
    formats = target.formats
    try:
        if formats is None:
            body = encode(job.prepared, target.model)
        else:
            job.form = formats.current
            body = encode(job.prepared, target.model, formats.extra)
    except (orjson.JSONEncodeError, TypeError) as exc:
        return AttemptError("invalid_input", f"row cannot be encoded as JSON: {exc}")
    try:
        status, headers, data = await target.transport.post(body)
        limits = parse_rate_limits(headers)
        if limits is not None:
            target.observe(limits, job.tokens, asyncio.get_running_loop().time())
    except TransportError as exc:
        return AttemptError(_KINDS[exc.kind], secrets.redact(str(exc)) or exc.kind,
                            # a bad certificate, a proxy's refusal: they stay so
                            retryable=exc.kind not in ("tls", "proxy"))
    except asyncio.CancelledError:
        if not job.timed_out:
            raise
        return AttemptError("timeout", f"no answer within {target.timeout:g} s",
                            retryable=True)
    if not 200 <= status < 300:
        error = http_error(status, headers, data, secrets)
        if formats is not None and formats.refuses(job.form, status, error.body):
            error.kind = "format_rejected"
        return error
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
