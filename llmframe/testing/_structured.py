"""Structured output in the mock server: the ``response_format`` of a request, accepted
or refused the way real servers do, and answered with JSON built from its schema.

Two wire forms: OpenAI's and vLLM's ``{"type": "json_schema", "json_schema": {"name": ...,
"schema": {...}}}``, and llama.cpp's Python server's ``{"type": "json_object", "schema":
{...}}`` (no schema: any JSON object). ``MockState.response_formats`` says which a server
accepts; a refused one gets what that kind of server answers: ``json_schema`` a 500 from
llama_cpp.server (its validation error wrapped as ``internal_server_error``),
``json_object`` a 400 ``invalid_request_error`` as from OpenAI in strict mode. ``text`` is
always accepted. The JSON follows the rules of ``_schemagen``:

>>> from llmframe.testing import MockState
>>> state = MockState()
>>> doc = {"response_format": {"type": "json_schema", "json_schema": {"name": "city",
...     "schema": {"type": "object", "properties": {"name": {"type": "string"}},
...                "required": ["name"]}}}}
>>> structured(doc, "Oslo", state), structured(doc, "Oslo", state, "badjson")
('{"name":"echo: Oslo"}', '{}')
>>> structured(doc, "Oslo", state, "notjson")
'Sure! Here is the JSON you asked for: {"name":"e'
>>> structured({"response_format": {"type": "json_object"}}, "Oslo", state)
'{"echo":"Oslo"}'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ._schemagen import Plan

if TYPE_CHECKING:
    from ._server import MockState

__all__ = ["FORMATS", "SHAPE_FAULTS", "Rejection", "accepted_formats", "structured", "tally"]

FORMATS = ("json_schema", "json_object")
SHAPE_FAULTS = ("badjson", "notjson")  # faults applied where a structured answer is built
_PROSE = "Sure! Here is the JSON you asked for: "
_MAX_PLANS = 256
_ANY_OBJECT = Plan(None)


class Rejection(Exception):
    """A request's ``response_format`` refused: the status and JSON body to answer."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _openai_error(status: int, message: str, param: str, code: str | None) -> Rejection:
    return Rejection(status, orjson.dumps({"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": code}}))


def _llamacpp_error(kind: str) -> Rejection:
    """llama_cpp.server's answer to a type it does not know: its pydantic validation error
    wrapped as a 500 ``internal_server_error``."""
    detail = (f"[{{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
              f"'msg': \"Input should be 'text' or 'json_object'\", 'input': '{kind}', "
              f"'ctx': {{'expected': \"'text' or 'json_object'\"}}}}]")
    return Rejection(500, orjson.dumps({"error": {
        "message": detail, "type": "internal_server_error", "param": None, "code": None}}))


def accepted_formats(value: tuple[str, ...] | list[str] | str | None) -> tuple[str, ...] | None:
    """The ``response_formats`` option checked: forms accepted (None: the field is ignored).

    >>> accepted_formats("json_object, json_schema"), accepted_formats(""), accepted_formats(None)
    (('json_object', 'json_schema'), (), None)
    """
    if value is None:
        return None
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    names = [s for s in names if s]
    unknown = set(names) - set(FORMATS)
    if unknown:
        msg = f"unknown response format(s) {sorted(unknown)}; known: {', '.join(FORMATS)}"
        raise ValueError(msg)
    return tuple(names)


def _kind(fmt: Any, state: MockState) -> str:
    """The accepted form of ``fmt`` (``text`` too); raises Rejection like real servers."""
    if not isinstance(fmt, dict):
        got = type(fmt).__name__
        raise _openai_error(400, f"Invalid type for 'response_format': expected an object, "
                                 f"but got {got} instead.", "response_format", "invalid_type")
    kind = fmt.get("type")
    if kind == "text":
        return kind
    if kind not in FORMATS:
        state.counts["rejected_unknown"] += 1
        raise _openai_error(400, f"Invalid value for 'response_format.type': {kind!r}. "
                                 f"Supported values are: 'text', 'json_object', and "
                                 f"'json_schema'.", "response_format.type", "invalid_value")
    if kind not in state.response_formats:  # type: ignore[operator]
        state.counts[f"rejected_{kind}"] += 1
        if kind == "json_schema":  # llama.cpp's Python server knows only text/json_object
            raise _llamacpp_error(kind)
        raise _openai_error(400, "Invalid parameter: 'response_format' of type 'json_object' "
                                 "is not supported with this model.", "response_format", None)
    return kind


def _plan(fmt: dict[str, Any], kind: str, state: MockState) -> Plan:
    """The plan of ``fmt``'s schema, compiled once per distinct schema."""
    name = "response_format"
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise _openai_error(400, "Missing required parameter: "
                                     "'response_format.json_schema'.",
                                "response_format.json_schema", "missing_required_parameter")
        schema, name = spec.get("schema"), str(spec.get("name", name))
    else:
        schema = fmt.get("schema")
    if schema is None:
        return _ANY_OBJECT
    if not isinstance(schema, dict):
        raise _openai_error(400, f"Invalid schema for response_format '{name}': the schema "
                                 f"must be an object.", "response_format", "invalid_value")
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    plan = state.plans.get(key)
    if plan is None:
        try:
            plan = Plan(schema)
        except (ValueError, RecursionError) as exc:
            raise _openai_error(400, f"Invalid schema for response_format '{name}': {exc}.",
                                "response_format", "invalid_value") from None
        if len(state.plans) >= _MAX_PLANS:
            state.plans.clear()
        state.plans[key] = plan
    return plan


def structured(doc: dict[str, Any], prompt: str, state: MockState,
               fault: str | None = None) -> str | None:
    """The JSON text answering ``doc``'s ``response_format`` (None: answer plain text), with
    a shape ``fault`` (``badjson``/``notjson``) applied; raises Rejection."""
    fmt = doc.get("response_format")
    if fmt is None or state.response_formats is None:
        return None
    kind = _kind(fmt, state)
    if kind == "text":
        return None
    plan = _plan(fmt, kind, state)
    n = len(prompt)
    value = plan.make(prompt, n)
    if fault == "badjson":
        value = plan.bad(value, prompt, n)
    text = orjson.dumps(value).decode()
    if fault == "notjson":
        return _PROSE + text[:len(text) // 2]
    return text


def tally(state: MockState, status: int, doc: Any, fault: str | None) -> None:
    """Count one answered request: its status (``ok`` for a 200), the structured form it
    used and the shape fault applied to it (counted instead of ``ok``)."""
    counts = state.counts
    if status != 200:
        counts[str(status)] += 1
        return
    fmt = doc.get("response_format") if state.response_formats is not None else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in FORMATS:
        counts[kind] += 1
        if fault is not None:
            counts[fault] += 1
            return
    counts["ok"] += 1
