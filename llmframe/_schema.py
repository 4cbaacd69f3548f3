"""Structured output: the shape of the ``response`` column, and the check of every answer.

``schema=`` is a ``pl.Struct`` (kept as the column's dtype; a polars field cannot say
"optional", so every field is asked for, non-null), a pydantic model class (duck-typed, never
imported here) or a JSON Schema dict with an object at the top; :func:`schema_of` compiles it
once. Wire forms (:meth:`Schema.response_format`): ``json_schema`` (OpenAI, vLLM) sends the
strict variant (objects closed, every property required, an optional one made nullable: null
means "not given"; no ``default``, which strict mode refuses); ``json_object`` (llama.cpp)
sends the schema, ``$ref``s inlined.

:meth:`Schema.parse` drops a Markdown code fence. Against a JSON Schema or a ``pl.Struct`` it
checks types (a bool is no number; ``3.0`` is ``3``), required fields, nulls (OpenAPI's
``nullable: true`` allows one), ``enum``/``const``, bounds, ``multipleOf``, lengths,
``pattern``, item and property counts, ``uniqueItems``; drops extra properties (refuses them
where the schema says ``additionalProperties: false``); gives None for a missing optional
field. With a pydantic model the model decides: ``model_validate`` (lax: ``"2"`` is an int;
its validators run), ``model_dump(mode="json", by_alias=True)``. Then every value is made one
of its column's, which it must fit: an Int64's range even where ``maximum`` is larger, a
``pl.Decimal(p, s)`` rounded half-even to ``s`` places with at most ``p - s`` digits before
the point (as ``decimal.Decimal``, answers read exactly), a Float32's range, a
``Datetime("ns")``'s years 1677-2262. A violation raises :class:`OutputError` naming the JSON
path. :meth:`Schema.restore` converts a value a previous run stored (a cache entry, a
checkpoint line) back, without running a model's validators again.

``format: date`` gives ``pl.Date``, ``date-time`` ``pl.Datetime("us")`` in UTC (offsets
converted, none taken as UTC); other formats (``email``, ``uuid``, ``time``, ``uri`` ...) are
annotations, as the JSON Schema spec has them: any string passes. Keywords llmframe does not
check are refused with a :class:`ConfigError` rather than ignored: ``not``,
``if``/``then``/``else``, ``dependentRequired``, ``dependentSchemas``, ``patternProperties``,
``propertyNames``, ``contains``, ``unevaluatedProperties`` and their kin (a pydantic model
checks them itself). A free-form object (no properties) is kept as JSON text, ``pl.String``;
strict mode asks for it as a string described as "a JSON object, as text". pydantic's
``Decimal`` (a number, or its text) is a ``pl.Float64`` number; for exact decimals give a
``pl.Struct`` with a ``pl.Decimal(p, s)`` field.

>>> s = schema_of({"type": "object", "title": "City", "properties": {
...     "name": {"type": "string"}, "pop": {"type": "integer"}}, "required": ["name"]})
>>> s.name, s.dtype, s.parse('{"name": "Toulon", "pop": 171953.0, "mayor": "?"}')
('City', Struct({'name': String, 'pop': Int64}), {'name': 'Toulon', 'pop': 171953})
>>> s.parse('{"pop": null}')
Traceback (most recent call last):
...
llmframe._schema.OutputError: $.name: missing required field
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, NoReturn

import orjson
import polars as pl

from ._schema_check import Check, Invalid, path
from ._schema_compile import bounds, compile_node, fail

__all__ = ["OutputError", "Schema", "schema_of"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FENCE = re.compile(r"\s*```[^\n`]*\n(.*?)\n?\s*```\s*", re.S)


class OutputError(ValueError):
    """An answer that is not JSON or breaks the schema (``$.a.b: expected a string, got 12``)."""


@dataclass(frozen=True, slots=True, eq=False)
class Schema:
    """A compiled schema (see :func:`schema_of`): ``name`` (OpenAI's ``json_schema.name``),
    ``json_schema`` (``$ref``s inlined), ``strict_schema``, ``dtype`` (of a parsed answer),
    ``source`` (what rebuilds it: the ``pl.Struct``, the pydantic model class, or the JSON
    Schema)."""

    name: str
    json_schema: dict[str, Any] = field(repr=False)
    strict_schema: dict[str, Any] = field(repr=False)
    dtype: pl.Struct
    source: Any = field(repr=False)
    _check: Check = field(repr=False)
    _restore: Check = field(repr=False)
    _load: Callable[[Any], Any] = field(repr=False)
    _forms: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        strict = {"name": self.name, "schema": self.strict_schema, "strict": True}
        object.__setattr__(self, "_forms", {
            "json_schema": {"type": "json_schema", "json_schema": strict},
            "json_object": {"type": "json_object", "schema": self.json_schema}})

    def response_format(self, form: str) -> dict[str, Any]:
        """The ``response_format`` of ``json_schema`` or ``json_object`` (a shared dict)."""
        if form not in self._forms:
            msg = f"unknown response_format form {form!r}: use 'json_schema' or 'json_object'"
            raise ValueError(msg)
        return self._forms[form]  # type: ignore[no-any-return]

    def parse(self, text: str | bytes | dict[str, Any]) -> dict[str, Any]:
        """An answer (JSON text, or a dict) checked and made a value of ``dtype``."""
        try:
            return self._check(text if text.__class__ is dict else self._load(text))  # type: ignore[no-any-return]
        except Invalid as exc:
            _invalid(exc)

    def restore(self, value: str | bytes | dict[str, Any]) -> dict[str, Any]:
        """A value a previous run parsed and stored (a cache entry, a checkpoint line; a dict
        or its JSON text) made a value of ``dtype`` again: only converted (dates from their
        text, decimals from numbers or text), never through a pydantic model's validators
        twice (``cents = v * 100`` would make 300 30000). :class:`OutputError` if it does not
        fit (written with another schema?)."""
        try:
            return self._restore(value if value.__class__ is dict else self._load(value))  # type: ignore[no-any-return]
        except Invalid as exc:
            _invalid(exc)

    def key(self) -> bytes:
        """Canonical bytes of the name and the schema, for a cache key."""
        return orjson.dumps({"name": self.name, "schema": self.json_schema},
                            option=orjson.OPT_SORT_KEYS)


def _invalid(exc: Invalid) -> NoReturn:
    msg = f"{path(exc.path[::-1])}: {exc.msg}"
    raise OutputError(msg) from None


def schema_of(value: Any) -> Schema:
    """A :class:`Schema` from a ``pl.Struct``, a pydantic model class, a JSON Schema dict
    (or a ``Schema``); a :class:`ConfigError` says what is wrong and where."""
    if isinstance(value, Schema):
        return value
    model, target, name, source = None, None, None, value
    if isinstance(value, pl.Struct):
        raw, target = _from_polars(value, "$"), value
    elif isinstance(value, type) and hasattr(value, "model_json_schema") \
            and hasattr(value, "model_validate"):
        model, name, raw = value, value.__name__, value.model_json_schema()
    elif isinstance(value, dict):
        raw, name = value, value.get("title")
    else:
        fail("$", "schema= takes a pl.Struct dtype with fields, a pydantic model class (not an "
             f"instance) or a JSON Schema dict, got {value!r}")
    inlined = _inline(raw, raw, "$", ())
    top = compile_node(inlined, "$", target, isinstance(value, dict))
    if not isinstance(top.dtype, pl.Struct) or top.nullable:
        fail("$", "the top level must be an object with properties (the column is a Struct); "
             'wrap a value in one: {"type": "object", "properties": {"value": ...}}')
    check = top.check if model is None else partial(
        _validated, top.prepare or _same, model, top.convert)
    name = name if isinstance(name, str) and _NAME.fullmatch(name) else "response"
    load = partial(_loads, exact=True) if _exact(top.dtype) else _loads
    return Schema(name, inlined, top.strict, top.dtype, inlined if source is raw else source,
                  check, top.convert, load)


def _loads(text: Any, exact: bool = False) -> Any:
    """JSON, perhaps in a Markdown code fence; ``exact``: fractions read as Decimal."""
    try:
        if exact:
            return json.loads(text, parse_float=Decimal, parse_constant=_not_json)
        return orjson.loads(text)
    except (ValueError, TypeError) as exc:
        fenced = _FENCE.fullmatch(text) if isinstance(text, str) else None
        if fenced is None:
            msg = f"not JSON: {getattr(exc, 'msg', exc)} at char {getattr(exc, 'pos', 0)}"
            raise OutputError(msg) from None
    return _loads(fenced.group(1), exact)


def _not_json(name: str) -> NoReturn:
    msg = f"{name} is no JSON number"
    raise ValueError(msg)


def _exact(dtype: Any) -> bool:
    """Are there numbers a float would round: a Decimal's digits, a 128-bit integer's?"""
    if isinstance(dtype, pl.Struct):
        return any(_exact(f.dtype) for f in dtype.fields)
    if isinstance(dtype, (pl.List, pl.Array)):
        return _exact(dtype.inner)
    limits = bounds(dtype)
    return isinstance(dtype, pl.Decimal) or (limits is not None and limits[1] >= 2**64)


def _same(value: Any) -> Any:
    return value


def _validated(prepare: Check, model: Any, convert: Check, value: Any) -> Any:
    """``value`` through the pydantic model (lax; its validators run), dumped as JSON, then
    converted to the column's dtype."""
    try:
        dumped = model.model_validate(prepare(value)).model_dump(mode="json", by_alias=True)
    except Exception as exc:  # pydantic's ValidationError, or anything a validator raised
        found = exc.errors(include_url=False) if hasattr(exc, "errors") else [
            {"loc": (), "msg": f"{type(exc).__name__}: {exc}"}]
        msg = "; ".join(f"{path(e['loc'])}: {e['msg']}" for e in found[:3])  # the first 3
        raise OutputError(msg) from None
    return convert(dumped)


_POLARS = {pl.String: {"type": "string"}, pl.Categorical: {"type": "string"},
           pl.Decimal: {"type": "number"}, pl.Boolean: {"type": "boolean"},
           pl.Date: {"type": "string", "format": "date"},
           pl.Datetime: {"type": "string", "format": "date-time"}}


def _from_polars(dtype: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of a polars dtype: all fields required, integers bounded by width."""
    base = dtype.base_type()
    if base is pl.Struct and dtype.fields:
        props = {f.name: _from_polars(f.dtype, where + path([f.name])[1:]) for f in dtype.fields}
        return {"type": "object", "properties": props, "required": list(props),
                "additionalProperties": False}
    if base in (pl.List, pl.Array):
        size = {"minItems": dtype.size, "maxItems": dtype.size} if base is pl.Array else {}
        return {"type": "array", "items": _from_polars(dtype.inner, where + "[]"), **size}
    if base is pl.Enum:
        return {"type": "string", "enum": dtype.categories.to_list()}
    if base in _POLARS or dtype.is_float():
        return dict(_POLARS.get(base, {"type": "number"}))
    if dtype.is_integer():
        low, high = bounds(dtype)  # type: ignore[misc]
        return {"type": "integer", "minimum": low, "maximum": high}
    fail(where, f"a polars {dtype} field has no JSON form; use String, a number, Boolean, "
          "Date, Datetime, Enum, List, Array or a Struct with fields")


def _inline(node: Any, root: Any, where: str, seen: tuple[str, ...]) -> Any:
    """A copy of ``node`` with every ``$ref`` (and a one-item ``allOf``) replaced inline."""
    if isinstance(node, list):
        return [_inline(v, root, f"{where}[{i}]", seen) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    ref, all_of = node.get("$ref"), node.get("allOf")
    if isinstance(ref, str):
        if ref in seen:
            fail(where, f"recursive $ref {ref!r}: a polars dtype has a fixed depth; unroll it")
        at, _, name = ref.rpartition("/")
        defs = root.get(at[2:]) if at in ("#/$defs", "#/definitions") else None
        if not isinstance(defs, dict) or name not in defs:
            fail(where, f"$ref {ref!r} is not in this schema's #/$defs or #/definitions")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**defs[name], **rest}, root, where, (*seen, ref))
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _inline({**all_of[0], **rest}, root, where, seen)
    return {k: _inline(v, root, where + path([str(k)])[1:], seen)
            for k, v in node.items() if k not in ("$defs", "definitions")}
