"""The tokens an answer says it used (its ``usage``), from OpenAI chat/completions, the
OpenAI Responses API and Anthropic Messages, read defensively: a field that is not a
non-negative integer counts as unknown, and nothing here ever raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Usage", "parse_usage"]


@dataclass(slots=True)
class Usage:
    """The tokens an answer reports; None where it did not say.

    ``prompt_tokens`` includes cached and cache-written input; ``cached_tokens`` is the
    part read from the cache. ``reasoning_tokens`` is part of ``completion_tokens``.

    >>> Usage(10, 5).total, Usage(completion_tokens=5).total, Usage().total
    (15, 5, None)
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    @property
    def total(self) -> int | None:
        """Prompt plus completion tokens, whichever are known."""
        if self.prompt_tokens is None or self.completion_tokens is None:
            return self.completion_tokens if self.prompt_tokens is None else self.prompt_tokens
        return self.prompt_tokens + self.completion_tokens


_LARGEST = 10**12  # more tokens than any answer has: a broken field, not a count


def _count(value: Any) -> int | None:
    """A non-negative int (or an integral float) up to 10^12; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= _LARGEST else None
    if isinstance(value, float) and value.is_integer() and 0 <= value <= _LARGEST:
        return int(value)
    return None


def _detail(usage: Mapping[str, Any], key: str, field: str) -> int | None:
    details = usage.get(key)
    return _count(details.get(field)) if isinstance(details, Mapping) else None


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def _openai_usage(usage: dict[str, Any]) -> Usage | None:
    """OpenAI's chat ``usage`` with plain ints, or None to take the general path."""
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if type(prompt) is not int or type(completion) is not int or not (
            0 <= prompt <= _LARGEST and 0 <= completion <= _LARGEST):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if type(details) is dict else None
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if type(details) is dict else None
    return Usage(prompt, completion, _count(cached), _count(reasoning))


def parse_usage(doc: Any) -> Usage | None:
    """The ``usage`` of an answer (OpenAI chat or Responses, Anthropic), or None.

    >>> parse_usage({"usage": {"prompt_tokens": 12, "completion_tokens": 3,
    ...                        "prompt_tokens_details": {"cached_tokens": 8}}})
    Usage(prompt_tokens=12, completion_tokens=3, cached_tokens=8, reasoning_tokens=None)
    >>> parse_usage({"usage": {"input_tokens": 5, "output_tokens": 7,
    ...                        "cache_read_input_tokens": 100,
    ...                        "cache_creation_input_tokens": 20}}).prompt_tokens
    125
    >>> parse_usage({"usage": {"prompt_tokens": "12"}}) is None
    True
    """
    usage = doc.get("usage") if type(doc) is dict else None
    if type(usage) is dict:  # the common OpenAI shape, without the general walk (hot path)
        fast = _openai_usage(usage)
        if fast is not None:
            return fast
    try:
        usage = doc.get("usage") if isinstance(doc, Mapping) else None
        if not isinstance(usage, Mapping):
            return None
        read = _count(usage.get("cache_read_input_tokens"))  # Anthropic
        written = _count(usage.get("cache_creation_input_tokens"))
        prompt = _count(usage.get("prompt_tokens"))
        if prompt is None:
            prompt = _count(usage.get("input_tokens"))
            if prompt is not None:  # Anthropic's input_tokens leaves out cache reads/writes
                prompt += (read or 0) + (written or 0)
        found = Usage(
            prompt_tokens=prompt,
            completion_tokens=_first(_count(usage.get("completion_tokens")),
                                     _count(usage.get("output_tokens"))),
            cached_tokens=_first(_detail(usage, "prompt_tokens_details", "cached_tokens"),
                                 _detail(usage, "input_tokens_details", "cached_tokens"),
                                 read),
            reasoning_tokens=_first(
                _detail(usage, "completion_tokens_details", "reasoning_tokens"),
                _detail(usage, "output_tokens_details", "reasoning_tokens")),
        )
    except Exception:
        return None
    if found == Usage():
        return None
    return found
