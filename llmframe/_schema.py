"""Structured output: the shape of the ``response`` column, and the check of every answer.

``schema=`` is a ``pl.Struct`` (kept as the column's dtype; a polars field cannot say
"optional", so every field is asked for, non-null), a pydantic model class (duck-typed, never
imported here; answers also pass its ``model_validate``) or a JSON Schema dict with an object
at the top; :func:`schema_of` compiles it once. Wire forms (:meth:`Schema.response_format`):
``json_schema`` (OpenAI, vLLM) sends the strict variant (objects closed, every property
required, an optional one made nullable: null means "not given"); ``json_object``
(llama.cpp) sends the schema, ``$ref``s inlined. :meth:`Schema.parse` drops a Markdown code
fence, checks types (a bool is no number; ``3.0`` is ``3``), required fields, nulls,
``enum``/``const``, bounds, lengths, ``pattern`` and item counts, drops extra properties,
gives None for a missing optional field, or raises :class:`OutputError` naming the JSON path.
``format: date`` gives ``pl.Date``, ``date-time`` ``pl.Datetime("us")`` in UTC (offsets
converted, none taken as UTC). A free-form object (no properties) is kept as JSON text,
``pl.String``; strict mode asks for it as such a string.

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

import datetime as dt
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn

import orjson
import polars as pl

from ._exceptions import ConfigError

__all__ = ["OutputError", "Schema", "schema_of"]

Check = Callable[[Any], Any]
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FENCE = re.compile(r"\s*```[^\n`]*\n(.*?)\n?\s*```\s*", re.S)
_INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}  # an Int64 column's, unless tighter
_UNITS = {"string": " characters", "array": " items", "integer": "", "number": ""}
_RULES = (  # keyword, test(limit, value), wording, unit (which says the types it applies to)
    ("minimum", operator.le, ">=", ""), ("maximum", operator.ge, "<=", ""),
    ("exclusiveMinimum", operator.lt, ">", ""), ("exclusiveMaximum", operator.gt, "<", ""),
    ("minLength", operator.le, "at least", " characters"),
    ("maxLength", operator.ge, "at most", " characters"),
    ("minItems", operator.le, "at least", " items"), ("maxItems", operator.ge, "at most", " items"))


class OutputError(ValueError):
    """An answer that is not JSON or breaks the schema (``$.a.b: expected a string, got 12``)."""


class _Invalid(Exception):  # a violation on its way up: each container adds its key
    def __init__(self, msg: str, *path: str | int) -> None:
        self.msg, self.path = msg, list(path)  # innermost first


def _path(keys: Any) -> str:  # $.a[0]["b c"] from outermost-first keys
    return "$" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" if _IDENT.fullmatch(k)
                         else f"[{orjson.dumps(k).decode()}]" for k in keys)


def _show(value: Any) -> str:
    text = orjson.dumps(value, default=repr).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(where: str, msg: str) -> NoReturn:
    msg = f"schema at {where}: {msg}"
    raise ConfigError(msg)


def _whole(value: float) -> int:
    if value.is_integer():
        return int(value)
    raise ValueError


def _datetime(value: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))  # Python 3.10 reads no Z
    return when if when.tzinfo is None else when.astimezone(dt.timezone.utc).replace(tzinfo=None)


_SCALARS = {  # a JSON type's dtype, and the classes it takes with their converters
    "string": (pl.String(), {str: None}), "boolean": (pl.Boolean(), {bool: None}),
    "number": (pl.Float64(), {float: None, int: float}),
    "integer": (pl.Int64(), {int: None, float: _whole})}
_FORMATS = {"date": ("a date (YYYY-MM-DD)", pl.Date(), dt.date.fromisoformat),
            "date-time": ("a date-time (ISO 8601)", pl.Datetime("us"), _datetime)}


@dataclass(frozen=True, slots=True, eq=False)
class Schema:
    """A compiled schema (see :func:`schema_of`): ``name`` (OpenAI's ``json_schema.name``),
    ``json_schema`` (``$ref``s inlined), ``strict_schema``, ``dtype`` (of a parsed answer)."""

    name: str
    json_schema: dict[str, Any] = field(repr=False)
    strict_schema: dict[str, Any] = field(repr=False)
    dtype: pl.Struct
    _check: Check = field(repr=False)
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
            return self._check(text if text.__class__ is dict else _loads(text))  # type: ignore[no-any-return]
        except _Invalid as exc:
            msg = f"{_path(exc.path[::-1])}: {exc.msg}"
            raise OutputError(msg) from None

    def key(self) -> bytes:
        """Canonical bytes of the name and the schema, for a cache key."""
        return orjson.dumps({"name": self.name, "schema": self.json_schema},
                            option=orjson.OPT_SORT_KEYS)


def schema_of(value: Any) -> Schema:
    """A :class:`Schema` from a ``pl.Struct``, a pydantic model class, a JSON Schema dict
    (or a ``Schema``); a :class:`ConfigError` says what is wrong and where."""
    if isinstance(value, Schema):
        return value
    model, dtype, name = None, None, None
    if isinstance(value, pl.Struct):
        raw, dtype = _from_polars(value, "$"), value
    elif isinstance(value, type) and hasattr(value, "model_json_schema") \
            and hasattr(value, "model_validate"):
        model, name, raw = value, value.__name__, value.model_json_schema()
    elif isinstance(value, dict):
        raw, name = value, value.get("title")
    else:
        _fail("$", "schema= takes a pl.Struct dtype with fields, a pydantic model class (not an "
              f"instance) or a JSON Schema dict, got {value!r}")
    inlined = _inline(raw, raw, "$", ())
    got, check, nullable, strict = _compile(inlined, "$", model is not None)
    if not isinstance(got, pl.Struct) or nullable:
        _fail("$", "the top level must be an object with properties (the column is a Struct); "
              'wrap a value in one: {"type": "object", "properties": {"value": ...}}')
    if model is not None:
        check = partial(_validated, check, model, _compile(inlined, "$", False)[1])
    name = name if isinstance(name, str) and _NAME.fullmatch(name) else "response"
    return Schema(name, inlined, strict, dtype or got, check)


def _loads(text: Any) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        fenced = _FENCE.fullmatch(text) if isinstance(text, str) else None
        if fenced is None:
            msg = f"not JSON: {exc.msg} at char {exc.pos}"
            raise OutputError(msg) from None
    return _loads(fenced.group(1))


def _validated(first: Check, model: Any, final: Check, value: Any) -> Any:
    """``value`` checked, through the pydantic model (its validators run), checked again."""
    value = first(value)
    try:
        dumped = model.model_validate(value).model_dump(mode="json", by_alias=True)
    except Exception as exc:  # pydantic's ValidationError, or anything a validator raised
        found = exc.errors(include_url=False) if hasattr(exc, "errors") else [
            {"loc": (), "msg": f"{type(exc).__name__}: {exc}"}]
        msg = "; ".join(f"{_path(e['loc'])}: {e['msg']}" for e in found[:3])  # the first 3
        raise OutputError(msg) from None
    return final(dumped)


_POLARS = {pl.String: {"type": "string"}, pl.Categorical: {"type": "string"},
           pl.Decimal: {"type": "number"}, pl.Boolean: {"type": "boolean"},
           pl.Date: {"type": "string", "format": "date"},
           pl.Datetime: {"type": "string", "format": "date-time"}}


def _from_polars(dtype: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of a polars dtype: all fields required, integers bounded by width."""
    base = dtype.base_type()
    if base is pl.Struct and dtype.fields:
        props = {f.name: _from_polars(f.dtype, where + _path([f.name])[1:]) for f in dtype.fields}
        return {"type": "object", "properties": props, "required": list(props),
                "additionalProperties": False}
    if base in (pl.List, pl.Array):
        size = {"minItems": dtype.size, "maxItems": dtype.size} if base is pl.Array else {}
        return {"type": "array", "items": _from_polars(dtype.inner, where + "[]"), **size}
    if base is pl.Enum:
        return {"type": "string", "enum": dtype.categories.to_list()}
    if base in _POLARS or dtype.is_float():
        return dict(_POLARS.get(base, {"type": "number"}))
    if dtype.is_integer():  # Int8: 8 bits, UInt64: 64
        bits, signed = int(base.__name__.lstrip("UInt")), dtype.is_signed_integer()
        return {"type": "integer", "minimum": -(2 ** (bits - 1)) if signed else 0,
                "maximum": 2 ** (bits - signed) - 1}
    _fail(where, f"a polars {dtype} field has no JSON form; use String, a number, Boolean, "
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
            _fail(where, f"recursive $ref {ref!r}: a polars dtype has a fixed depth; unroll it")
        at, _, name = ref.rpartition("/")
        defs = root.get(at[2:]) if at in ("#/$defs", "#/definitions") else None
        if not isinstance(defs, dict) or name not in defs:
            _fail(where, f"$ref {ref!r} is not in this schema's #/$defs or #/definitions")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**defs[name], **rest}, root, where, (*seen, ref))
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _inline({**all_of[0], **rest}, root, where, seen)
    return {k: _inline(v, root, where + _path([str(k)])[1:], seen)
            for k, v in node.items() if k not in ("$defs", "definitions")}


def _unwrap(node: Any, where: str) -> tuple[dict[str, Any], str, bool]:
    """The one non-null schema of ``node``, its type, and whether null is allowed."""
    if not isinstance(node, dict):
        _fail(where, f"expected a JSON Schema object, got {_show(node)}")
    key = next((k for k in ("anyOf", "oneOf", "type") if isinstance(node.get(k), list)), None)
    if key is not None:  # a union, fine if it is of null and one schema
        branches = [{**node, "type": t} for t in node[key]] if key == "type" else node[key]
        rest = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
        if not rest or any(b != rest[0] for b in rest[1:]):
            _fail(f"{where}.{key}", "a union; a polars column holds one type (and null): keep "
                  "one, or use a string")
        inner, kind, nullable = _unwrap(rest[0], f"{where}.{key}[{branches.index(rest[0])}]")
        return inner, kind, nullable or len(rest) < len(branches)
    kind, nullable = node.get("type"), False
    if isinstance(node.get("enum"), list) and None in node["enum"]:
        node, nullable = {**node, "enum": [e for e in node["enum"] if e is not None]}, True
    if kind is None:  # said by properties, items, or the values of enum or const
        kinds = {type(v) for v in ([node["const"]] if "const" in node else node.get("enum") or [])}
        kind = "object" if "properties" in node else "array" if "items" in node \
            else "number" if kinds == {int, float} else None if len(kinds) != 1 \
            else {str: "string", int: "integer", float: "number", bool: "boolean"}.get(kinds.pop())
    if isinstance(node.get("allOf"), list):
        _fail(f"{where}.allOf", "allOf of several schemas is not supported; merge them")
    if kind not in ("object", "array", *_SCALARS):
        _fail(where, f"type {kind!r} cannot be a polars column; give one of object, array, "
              "string, integer, number, boolean (and null, for a nullable value)")
    return node, kind, nullable


def _compile(node: Any, where: str, pre: bool) -> tuple[Any, Check, bool, Any]:
    """(dtype, check, nullable, strict variant) of a node; ``pre``: before a pydantic model."""
    inner, kind, nullable = _unwrap(node, where)
    strict = {k: v for k, v in inner.items()  # strict mode takes anyOf, not oneOf
              if k not in ("oneOf", "anyOf") and not (k == "default" and v is None)}
    strict["type"] = kind  # also where the schema left it to enum, const or properties
    props, required = inner.get("properties"), inner.get("required", [])
    what = f"an {kind}" if kind[0] in "aio" else f"a {kind}"
    rules, limits = [], {**_INT64, **inner} if kind == "integer" else inner
    for key, test, text, unit in _RULES:
        if key in limits and unit == _UNITS.get(kind):
            if isinstance(limits[key], bool) or not isinstance(limits[key], (int, float)):
                _fail(f"{where}.{key}", f"must be a number, got {_show(limits[key])}")
            rules.append((test, limits[key], bool(unit), f"expected {text} {limits[key]}{unit}"))
    if kind == "array":
        dtype, item, _, strict["items"] = _compile(inner.get("items"), f"{where}.items", pre)
        dtype, accept = pl.List(dtype), {list: partial(_items, item)}
    elif kind == "object" and props:
        if not isinstance(props, dict) or not isinstance(required, list) \
                or any(r not in props for r in required):
            _fail(where, "properties must map names to schemas, required list some of them")
        fields, dtypes, strict_props = [], [], {}
        for name, sub in props.items():
            at = f"{where}.properties{_path([name])[1:]}"
            dtype, check, sub_null, sub_strict = _compile(sub, at, pre)
            # 0: required; 1: optional, null meaning "not given"; 2: optional, nullable
            mode = 0 if name in required else 2 if sub_null else 1
            fields.append((name, check, mode))
            dtypes.append(pl.Field(name, dtype))
            strict_props[name] = _or_null(sub_strict, sub) if mode == 1 else sub_strict
        strict.update(properties=strict_props, required=list(props), additionalProperties=False)
        dtype, accept = pl.Struct(dtypes), {dict: partial(_fields, tuple(fields), not pre)}
    elif kind == "object":  # free-form: strict mode cannot ask for one, so ask for its text
        text = f"{inner.get('description', '')} (a JSON object, as text)".lstrip()
        strict = {"type": "string", "description": text}
        dtype, accept = pl.String(), dict.fromkeys((dict, str), partial(_free_form, pre))
    else:
        dtype, accept, what = _compile_scalar(inner, kind, where, what, pre, rules)
    check = _check(what, {**accept, type(None): None} if nullable else accept, tuple(rules))
    return dtype, check, nullable, _or_null(strict, node) if nullable else strict


def _or_null(strict: dict[str, Any], outer: dict[str, Any]) -> dict[str, Any]:
    keep = {k: outer[k] for k in ("title", "description") if k in outer}
    if strict.get("type") in _SCALARS and "enum" not in strict and "const" not in strict:
        return {**keep, **strict, "type": [strict["type"], "null"]}
    return {"anyOf": [strict, {"type": "null"}], **keep}


def _compile_scalar(node: dict[str, Any], kind: str, where: str, what: str, pre: bool,
                    rules: list[Any]) -> tuple[Any, ...]:
    """(dtype, accept, what) of a string, number, integer or boolean; adds to ``rules``."""
    dtype, accept = _SCALARS[kind]
    if kind == "string" and "pattern" in node:
        try:
            regex = re.compile(node["pattern"])
        except (re.error, TypeError) as exc:
            _fail(f"{where}.pattern", f"not a regular expression Python reads: {exc}")
        rules.append((re.Pattern.search, regex, False, f"expected a match of {node['pattern']!r}"))
    allowed = node["enum"] if "enum" in node else [node["const"]] if "const" in node else None
    if allowed is not None:
        try:
            values = frozenset(map(_check(kind, accept), allowed))
        except (_Invalid, TypeError):
            _fail(where, f"enum/const {_show(allowed)} must hold {kind} values only")
        rules.append((operator.contains, values, False, f"expected one of {_show(allowed)}"))
    if kind == "string" and node.get("format") in _FORMATS:
        what, dtype, convert = _FORMATS[node["format"]]
        accept = {str: None if pre else convert}
    return dtype, accept, what


def _check(what: str, accept: dict[type, Check | None], rules: tuple[Any, ...] = ()) -> Check:
    """Takes the classes in ``accept``, checks ``rules``, converts (ValueError: not ``what``)."""
    def check(value: Any) -> Any:
        try:
            convert = accept[value.__class__]
        except KeyError:
            raise _Invalid(f"expected {what}, got {_show(value)}") from None
        if value is None:  # accepted: the node is nullable
            return None
        for test, limit, sized, msg in rules:
            if not test(limit, len(value) if sized else value):
                raise _Invalid(f"{msg}, got {_show(value)}")
        if convert is None:
            return value
        try:
            return convert(value)
        except ValueError:
            raise _Invalid(f"expected {what}, got {_show(value)}") from None
    return check


def _items(item: Check, value: list[Any]) -> list[Any]:
    out = []
    for i, x in enumerate(value):
        try:
            out.append(item(x))
        except _Invalid as exc:
            exc.path.append(i)
            raise
    return out


def _fields(fields: tuple[Any, ...], fill: bool, value: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, sub, mode in fields:
        x = value.get(name)
        if x is None and (mode == 1 or name not in value):
            if mode == 0:
                raise _Invalid("missing required field", name)
            if fill:  # else (before a pydantic model) left out, so its default applies
                out[name] = None
            continue
        try:
            out[name] = sub(x)
        except _Invalid as exc:
            exc.path.append(name)
            raise
    return out


def _free_form(pre: bool, value: Any) -> Any:
    """A free-form object (or its JSON text, as strict mode asks): as JSON text, or as is."""
    value = orjson.loads(value) if value.__class__ is str else value
    if value.__class__ is not dict:
        raise ValueError
    return value if pre else orjson.dumps(value).decode()
