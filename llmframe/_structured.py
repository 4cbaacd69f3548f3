"""Structured output in the engine: the ``response_format`` form each endpoint is asked in,
and the check of every answer against the schema.

Servers take JSON-schema output in different forms. OpenAI and vLLM take
``{"type": "json_schema", "json_schema": {...}}``; llama.cpp's Python server answers that
with an HTTP 500 naming ``response_format`` and takes ``{"type": "json_object", "schema":
...}``. Each endpoint starts with the first; a server that refuses one form (a 400, 422,
500 or 501 whose body names ``response_format``) is asked in the other at once — the row's
attempt is not used up — and the choice is kept for that endpoint for the rest of the run.
An endpoint that refuses both leaves the run, saying so.

Every answer is parsed and validated (:meth:`~llmframe._schema.Schema.parse`). One that is
not JSON or breaks the schema is a failed attempt (``invalid_output``): retried at once,
at another endpoint when there is one; the last one's text is kept as ``raw_response``.
"""

from __future__ import annotations

import copyreg
import dataclasses
import re
from typing import Any

from ._json import dumps
from ._protocols import Answer
from ._retry import AttemptError
from ._schema import OutputError, Schema, schema_of

__all__ = ["FORMS", "Formats", "check_answer", "raw_text", "rejects_format"]

#: the wire forms, in the order they are tried
FORMS = ("json_schema", "json_object")
_NAMES_FORMAT = re.compile(r"response_format|json_schema|json_object", re.I)


class Formats:
    """The form one endpoint is asked in (``extra``: the body keys to add), and the forms
    it refused, with why.

    >>> from llmframe._schema import schema_of
    >>> f = Formats(schema_of({"type": "object", "properties": {"a": {"type": "string"}}}))
    >>> f.extra[:37], f.reject("json_schema", "HTTP 500"), f.current
    (b',"response_format":{"type":"json_sche', True, 'json_object')
    >>> f.reject("json_object", "HTTP 400"), f.why()
    (False, 'json_schema: HTTP 500; json_object: HTTP 400')
    >>> f.answered.add("json_object"); f.refuses("json_object", 500, "response_format")
    False
    """

    __slots__ = ("_bodies", "answered", "current", "refused")

    def __init__(self, schema: Schema) -> None:
        self._bodies = {form: b',"response_format":' + dumps(schema.response_format(form))
                        for form in FORMS}  # serialized once: sent with every request
        self.current = FORMS[0]
        self.refused: dict[str, str] = {}
        self.answered: set[str] = set()  # forms it has answered in: never "refused" later

    def refuses(self, form: str | None, status: int, body: str | None) -> bool:
        """Is this error the endpoint refusing ``form`` itself? Only while that form has
        never been answered here: a server that answered it before is having a blip (a
        proxy's 500 that echoes the request body, say), and that is retried as usual."""
        return form not in self.answered and rejects_format(status, body)

    @property
    def extra(self) -> bytes:
        return self._bodies[self.current]

    def reject(self, form: str, why: str) -> bool:
        """``form`` was refused: True while another form is left (then the current one)."""
        self.refused.setdefault(form, why)
        left = [f for f in FORMS if f not in self.refused]
        if not left:
            return False
        if self.current in self.refused:
            self.current = left[0]
        return True

    def why(self) -> str:
        return "; ".join(f"{form}: {why}" for form, why in self.refused.items())


def rejects_format(status: int, body: str | None) -> bool:
    """Is this error the server refusing the ``response_format`` itself (not the row)?

    >>> rejects_format(500, '{"error": "response_format: json_schema not supported"}')
    True
    >>> rejects_format(429, "response_format"), rejects_format(500, "overloaded")
    (False, False)
    """
    return status in (400, 422, 500, 501) and bool(body) and bool(
        _NAMES_FORMAT.search(body))  # type: ignore[arg-type]


def raw_text(text: Any) -> str | None:
    """An answer's content as text, for ``raw_response``."""
    if text is None or isinstance(text, str):
        return text
    return dumps(text).decode()


def check_answer(schema: Schema, answer: Answer) -> Any:
    """The answer parsed and validated against ``schema``, or the ``invalid_output``
    :class:`AttemptError` saying why (not retried when ``max_tokens`` cut it short: the
    same request would be cut again).

    >>> from llmframe._schema import schema_of
    >>> s = schema_of({"type": "object", "properties": {"a": {"type": "integer"}},
    ...                "required": ["a"]})
    >>> check_answer(s, Answer('{"a": 1}'))
    {'a': 1}
    >>> str(check_answer(s, Answer('{"a": "x"}')))[:35]
    'answer does not match the schema: $'
    """
    text = answer.text
    if text is None:
        if answer.refusal:  # the model said no: asking again rarely changes that
            return AttemptError("invalid_output", f"the model refused: {answer.refusal}",
                                status=200)
        return AttemptError("invalid_output", "the answer has no content", status=200,
                            retryable=True)
    try:
        return schema.parse(text)
    except OutputError as exc:
        message = f"answer does not match the schema: {exc}"
        cut = answer.finish_reason == "length"
        if cut:
            message += ("; max_tokens cut the answer short (finish_reason length): raise "
                        "max_tokens")
        return AttemptError("invalid_output", message, status=200, retryable=not cut)


def _rebuild(source: Any, dtype: Any) -> Schema:
    schema = schema_of(source)
    return schema if schema.dtype == dtype else dataclasses.replace(schema, dtype=dtype)


def _reduce(schema: Schema) -> tuple[Any, tuple[Any, Any]]:
    """Pickle a schema as what rebuilds it (``--workers`` sends the config to processes):
    its source (the ``pl.Struct``, the pydantic model class: its validators still run, or the
    JSON Schema) and dtype."""
    return _rebuild, (schema.source, schema.dtype)


copyreg.pickle(Schema, _reduce)
