"""Request bodies and response parsing per API flavour.

- ``chat``: ``{"input": text}`` (or ``{"messages": [...]}``) becomes an OpenAI chat request;
  the answer is ``choices[0].message.content``.
- ``completions``: ``{"input": text}`` becomes ``{"prompt": text}``; answer ``choices[0].text``.
- ``raw``: the row's JSON object is the body, and the answer is the response JSON itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ._json import dumps, loads
from ._retry import AttemptError
from ._usage import Usage, parse_usage

__all__ = ["Answer", "Prepared", "parse_response", "prepare"]


class RowError(ValueError):
    """A row that cannot become a request; the message says why."""


@dataclass(slots=True)
class Prepared:
    """The per-row part of a request, ready to be combined with a model per endpoint."""

    body: dict[str, Any]
    has_model: bool


def prepare(
    payload: Any, api: str, *, system: str | None, params: Mapping[str, Any]
) -> Prepared:
    """Build the body for one row, or raise RowError saying what is wrong with it."""
    if not isinstance(payload, dict):
        msg = f"expected a JSON object, got {_json_type(payload)}"
        raise RowError(msg)
    if api == "raw":
        return Prepared(payload, "model" in payload)
    text = payload.get("input")
    messages = payload.get("messages")
    if text is None and messages is None:
        msg = 'missing "input" (or "messages")'
        raise RowError(msg)
    body: dict[str, Any] = dict(params)
    if text is not None:
        if not isinstance(text, str):
            msg = f'"input" must be a string, got {_json_type(text)}'
            raise RowError(msg)
        if api == "chat":
            msgs = [{"role": "user", "content": text}]
            if system is not None:
                msgs.insert(0, {"role": "system", "content": system})
            body["messages"] = msgs
        else:
            body["prompt"] = text if system is None else f"{system}\n\n{text}"
    else:
        if api != "chat":
            msg = '"messages" rows need api="chat"'
            raise RowError(msg)
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            msg = '"messages" must be a non-empty list of {"role": ..., "content": ...} objects'
            raise RowError(msg)
        if system is not None and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system}, *messages]
        body["messages"] = messages
    return Prepared(body, "model" in body)


def encode(prepared: Prepared, model: str | None, extra: bytes = b"") -> bytes:
    """The request body as bytes, with ``model`` unless the row set its own, and ``extra``
    (``,"key":value`` JSON, serialized once per run: the endpoint's ``response_format``)
    last.

    >>> encode(Prepared({"prompt": "hi"}, False), "m", b',"seed":1')
    b'{"model":"m","prompt":"hi","seed":1}'
    """
    body = prepared.body
    if model is not None and not prepared.has_model:
        body = {"model": model, **body}
    if extra and body:
        return dumps(body)[:-1] + extra + b"}"
    return dumps(body)


@dataclass(slots=True)
class Answer:
    text: Any
    finish_reason: str | None = None
    usage: Usage | None = None
    refusal: str | None = None  # a chat answer without content may say why


def parse_response(api: str, data: bytes) -> Answer:
    """Extract the answer from a 200 response; an unusable body is a retryable AttemptError."""
    try:
        doc = loads(data) if api == "raw" else orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise AttemptError(
            "invalid_response", f"response is not valid JSON ({exc})", status=200,
            retryable=True, body=data[:200].decode("utf-8", "replace"),
        ) from None
    if api == "raw":
        return Answer(doc, None, parse_usage(doc))
    try:
        choice = doc["choices"][0]
        text = choice["message"]["content"] if api == "chat" else choice["text"]
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError):
        raise AttemptError(
            "invalid_response", "response has no choices[0] answer", status=200,
            retryable=True, body=data[:200].decode("utf-8", "replace"),
        ) from None
    answer = Answer(text, finish, parse_usage(doc))
    if text is None and api == "chat":
        refusal = choice["message"].get("refusal")
        answer.refusal = refusal if isinstance(refusal, str) else None
    return answer


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )
