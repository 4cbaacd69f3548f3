"""Compiling a JSON Schema node into the checks of :mod:`llmframe._schema_check`: the polars
dtype the node becomes, the closures for its answers, and its strict variant.

:func:`compile_node` gives a :class:`Compiled`: ``check`` (the schema's rules, then the value
made one of ``dtype``, which it must fit: an Int64 takes what 64 bits hold whatever
``maximum`` says, a ``Decimal(p, s)`` at most ``p - s`` digits before the point, rounded
half-even to ``s`` decimals, a Float32 a finite number within ±3.4028235e38, a
``Datetime("ns")`` 1677-09-21T00:12:43.145225 .. 2262-04-11T23:47:16.854775), ``convert``
(that conversion and fit only: for a value stored by a previous run, or what a pydantic
model returned), ``prepare`` (before a pydantic model: the null of an optional field dropped
so its default applies, a free-form object's JSON text read, both as the strict variant
asks) and the strict variant. ``target``: the dtype a ``pl.Struct`` asked for; ``judge``: the
JSON Schema decides what is valid (a dict the caller gave): then an explicit
``additionalProperties: false`` rejects extra keys, and keywords llmframe does not check are
refused rather than ignored.

>>> c = compile_node({"type": "integer", "maximum": 1e20}, "$", None, True)
>>> c.dtype, c.check(7.0), c.strict
(Int64, 7, {'type': 'integer', 'maximum': 1e+20})
>>> c.check(2**64)
Traceback (most recent call last):
...
llmframe._schema_check.Invalid: expected <= 9223372036854775807 (Int64), got 18446744073709551616
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple, NoReturn

import polars as pl

from ._exceptions import ConfigError
from ._schema_check import (
    NS,
    Check,
    Invalid,
    checker,
    datetime_of,
    decimal_of,
    each,
    fields,
    float32,
    free_form,
    from_text,
    items,
    multiple,
    path,
    prepared,
    read_text,
    show,
    unexpected,
    unique,
    whole,
)

__all__ = ["Compiled", "bounds", "compile_node", "fail"]

_REFUSED = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas",
            "dependencies", "patternProperties", "propertyNames", "contains", "minContains",
            "maxContains", "unevaluatedProperties", "unevaluatedItems", "prefixItems",
            "additionalItems")
_NOT_STRICT = frozenset(("oneOf", "anyOf", "default", "nullable"))  # strict mode refuses
_UNITS = {"string": " characters", "array": " items", "object": " properties",
          "integer": "", "number": "", "numeric": ""}  # "numeric": a number, or its text
_WHAT = {"string": "a string", "boolean": "a boolean", "integer": "an integer",
         "number": "a number", "numeric": "a number", "array": "an array", "object": "an object"}
_RULES = (  # keyword, test(limit, value), wording, unit (which says the types it applies to)
    ("minimum", operator.le, ">=", ""), ("maximum", operator.ge, "<=", ""),
    ("exclusiveMinimum", operator.lt, ">", ""), ("exclusiveMaximum", operator.gt, "<", ""),
    ("multipleOf", multiple, "a multiple of", ""),
    ("minLength", operator.le, "at least", " characters"),
    ("maxLength", operator.ge, "at most", " characters"),
    ("minItems", operator.le, "at least", " items"), ("maxItems", operator.ge, "at most", " items"),
    ("minProperties", operator.le, "at least", " properties"),
    ("maxProperties", operator.ge, "at most", " properties"))
_SCALARS = ("string", "boolean", "integer", "number")
_DTYPES = {"string": pl.String(), "boolean": pl.Boolean(), "integer": pl.Int64()}
_ACCEPT: dict[str, dict[type, Check | None]] = {  # the classes a JSON type takes, converters
    "string": {str: None}, "boolean": {bool: None},
    "integer": {int: None, float: whole, Decimal: whole},
    "number": {float: None, int: float, Decimal: float}}
_ACCEPT["numeric"] = _ACCEPT["number"]


class Compiled(NamedTuple):
    dtype: Any
    check: Check
    convert: Check
    prepare: Check | None  # None: nothing to do before a pydantic model
    nullable: bool
    strict: dict[str, Any]


class _Part(NamedTuple):  # what one kind of node adds
    dtype: Any
    what: str
    accept: dict[type, Check | None]  # the classes taken, and their converters
    restore: dict[type, Check | None]  # the same for ``convert``
    rules: tuple[Any, ...]
    fit: tuple[Any, ...]  # the rules ``convert`` keeps: the dtype's
    prepare: Check | None
    strict: dict[str, Any]


def fail(where: str, msg: str) -> NoReturn:
    msg = f"schema at {where}: {msg}"
    raise ConfigError(msg)


def bounds(dtype: Any) -> tuple[Any, Any] | None:
    """The integers an integer polars dtype holds, (low, high); None for another dtype."""
    if not dtype.is_integer():
        return None
    bits, signed = int(dtype.base_type().__name__.lstrip("UInt")), dtype.is_signed_integer()
    return -(2 ** (bits - 1)) if signed else 0, 2 ** (bits - signed) - 1  # Int8: 8 bits


def _number_or_text(branches: list[Any]) -> dict[str, Any] | None:
    """pydantic's Decimal, a number or a string (of a number): the number branch, with the
    string's pattern if it has one (pydantic 2.14 leaves it out). A string that is not a
    number is then refused per answer: a polars column holds one type."""
    kinds = {b.get("type"): b for b in branches if isinstance(b, dict)}
    text = kinds.get("string", {})
    if len(branches) != 2 or set(kinds) != {"number", "string"}:
        return None
    if "pattern" not in text:
        return dict(kinds["number"])
    if not isinstance(text.get("pattern"), str):
        return None
    try:
        regex = re.compile(text["pattern"])
    except re.error:
        return None
    numeric = all(map(regex.search, ("12.5", "-3", "0"))) \
        and not any(map(regex.search, ("", "-", ".", "+.")))
    return {**kinds["number"], "pattern": text["pattern"]} if numeric else None


def _unwrap(node: Any, where: str, judge: bool) -> tuple[dict[str, Any], str, bool]:
    """The one non-null schema of ``node``, its type, and whether null is allowed."""
    if not isinstance(node, dict):
        fail(where, f"expected a JSON Schema object, got {show(node)}")
    refused = next((k for k in _REFUSED if k in node), None) if judge else None
    if refused is not None:
        fail(f"{where}.{refused}", f"the keyword {refused!r} is not supported (llmframe "
             "would not check it); remove it, or check the column afterwards")
    null = node.get("nullable") is True  # OpenAPI's way to say it
    key = next((k for k in ("anyOf", "oneOf", "type") if isinstance(node.get(k), list)), None)
    if key is not None:  # a union, fine if it is of null and one schema
        outer = {k: v for k, v in node.items() if k not in (key, "nullable")}  # apply to all
        branches = [{**outer, "type": b} if key == "type" else {**outer, **b}
                    if isinstance(b, dict) else b for b in node[key]]
        rest = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
        null = null or len(rest) < len(branches)
        number = _number_or_text(rest) if key != "type" else None
        if number is not None:
            return number, "numeric", null
        if not rest or any(b != rest[0] for b in rest[1:]):
            fail(f"{where}.{key}", "a union; a polars column holds one type (and null): keep "
                 "one, or use a string")
        inner, kind, nullable = _unwrap(rest[0], f"{where}.{key}[{branches.index(rest[0])}]",
                                        judge)
        return inner, kind, nullable or null
    kind = node.get("type")
    if isinstance(node.get("enum"), list) and None in node["enum"]:
        node, null = {**node, "enum": [e for e in node["enum"] if e is not None]}, True
    if kind is None:  # said by properties, items, or the values of enum or const
        kinds = {type(v) for v in ([node["const"]] if "const" in node else node.get("enum") or [])}
        kind = "object" if "properties" in node else "array" if "items" in node \
            else "number" if kinds == {int, float} else None if len(kinds) != 1 \
            else {str: "string", int: "integer", float: "number", bool: "boolean"}.get(kinds.pop())
    if isinstance(node.get("allOf"), list):
        fail(f"{where}.allOf", "allOf of several schemas is not supported; merge them")
    if kind not in ("object", "array", *_SCALARS):
        fail(where, f"type {kind!r} cannot be a polars column; give one of object, array, "
             "string, integer, number, boolean (and null, for a nullable value)")
    if kind in ("object", "array") and ("enum" in node or "const" in node):
        fail(where, f"enum or const of an {kind} is not supported; remove it")
    return node, kind, null


def compile_node(node: Any, where: str, target: Any, judge: bool) -> Compiled:
    """Compile ``node``; ``target``: the polars dtype asked for (None: the one it maps to)."""
    inner, kind, nullable = _unwrap(node, where, judge)
    strict = {k: v for k, v in inner.items()
              if k not in _NOT_STRICT and not (kind == "numeric" and k == "pattern")}
    strict["type"] = "number" if kind == "numeric" else kind  # also where enum etc. said it
    rules = _rules(inner, kind, where)
    if kind == "array":
        part = _array(inner, where, target, judge, rules, strict)
    elif kind == "object" and inner.get("properties"):
        part = _object(inner, where, target, judge, rules, strict)
    elif kind == "object":
        part = _free(inner, where, judge, rules)
    else:
        part = _scalar(inner, kind, where, target, rules, strict)
    none = {type(None): None} if nullable else {}
    check = checker(part.what, {**part.accept, **none}, part.rules)
    convert = checker(part.what, {**part.restore, **none}, part.fit)
    strict = _or_null(part.strict, node) if nullable else part.strict
    return Compiled(part.dtype if target is None else target, check, convert, part.prepare,
                    nullable, strict)


def _rules(inner: dict[str, Any], kind: str, where: str) -> list[Any]:
    rules = []
    for key, test, text, unit in _RULES:
        if key in inner and unit == _UNITS[kind]:
            limit = inner[key]
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) \
                    or (key == "multipleOf" and not limit > 0):
                fail(f"{where}.{key}", f"must be a {'positive ' * (key == 'multipleOf')}"
                     f"number, got {show(limit)}")
            rules.append((test, limit, bool(unit), f"expected {text} {limit}{unit}"))
    distinct = inner.get("uniqueItems", False) if kind == "array" else False
    if not isinstance(distinct, bool):
        fail(f"{where}.uniqueItems", f"must be true or false, got {show(distinct)}")
    return [*rules, (unique, None, False, "expected unique items")] if distinct else rules


def _or_null(strict: dict[str, Any], outer: dict[str, Any]) -> dict[str, Any]:
    keep = {k: outer[k] for k in ("title", "description") if k in outer}
    if strict.get("type") in _SCALARS and "enum" not in strict and "const" not in strict:
        return {**keep, **strict, "type": [strict["type"], "null"]}
    return {"anyOf": [strict, {"type": "null"}], **keep}


def _array(inner: dict[str, Any], where: str, target: Any, judge: bool, rules: list[Any],
           strict: dict[str, Any]) -> _Part:
    item = compile_node(inner.get("items"), f"{where}.items",
                        None if target is None else target.inner, judge)
    strict["items"] = item.strict
    fit = tuple(rules) if isinstance(target, pl.Array) else ()  # its size
    return _Part(pl.List(item.dtype), "an array", {list: partial(items, item.check)},
                 {list: partial(items, item.convert)}, tuple(rules), fit,
                 None if item.prepare is None else partial(each, item.prepare), strict)


def _object(inner: dict[str, Any], where: str, target: Any, judge: bool, rules: list[Any],
            strict: dict[str, Any]) -> _Part:
    props, required = inner["properties"], inner.get("required", [])
    if not isinstance(props, dict) or not isinstance(required, list) \
            or any(r not in props for r in required):
        fail(where, "properties must map names to schemas, required list some of them")
    types = {f.name: f.dtype for f in target.fields} if target is not None else {}
    checks, converts, prepares, dtypes, strict_props = [], [], [], [], {}
    for name, sub in props.items():
        c = compile_node(sub, f"{where}.properties{path([name])[1:]}", types.get(name), judge)
        # 0: required; 1: optional, null meaning "not given"; 2: optional, nullable
        mode = 0 if name in required else 2 if c.nullable else 1
        checks.append((name, c.check, mode))
        converts.append((name, c.convert, mode))
        if mode == 1 or c.prepare is not None:
            prepares.append((name, mode == 1, c.prepare))
        dtypes.append(pl.Field(name, c.dtype))
        strict_props[name] = _or_null(c.strict, sub) if mode == 1 else c.strict
    strict.update(properties=strict_props, required=list(props), additionalProperties=False)
    closed = frozenset(props) if judge and inner.get("additionalProperties") is False else None
    return _Part(pl.Struct(dtypes), "an object", {dict: partial(fields, tuple(checks), closed)},
                 {dict: partial(fields, tuple(converts), None)}, tuple(rules), (),
                 partial(prepared, tuple(prepares)) if prepares else None, strict)


def _free(inner: dict[str, Any], where: str, judge: bool, rules: list[Any]) -> _Part:
    """A free-form object: kept as JSON text (strict mode cannot ask for one, so it asks for
    its text); its values checked against ``additionalProperties`` when that is a schema."""
    extra, values = inner.get("additionalProperties"), None
    if judge and extra is False:
        values = unexpected
    elif judge and isinstance(extra, dict) and extra:
        values = compile_node(extra, f"{where}.additionalProperties", None, judge).check
    text = f"{inner.get('description', '')} (a JSON object, as text)".lstrip()
    # no contentMediaType: OpenAI's strict mode refuses keywords it does not know
    strict = {"type": "string", "description": text}
    check, convert = partial(free_form, tuple(rules), values), partial(free_form, (), None)
    return _Part(pl.String(), "an object", dict.fromkeys((dict, str), check),
                 dict.fromkeys((dict, str), convert), (), (), read_text, strict)


def _scalar(inner: dict[str, Any], kind: str, where: str, target: Any, rules: list[Any],
            strict: dict[str, Any]) -> _Part:
    """A string, number (or "numeric": a number or its text), integer or boolean."""
    accept = _ACCEPT[kind]
    if kind == "string" and "pattern" in inner:
        try:
            regex = re.compile(inner["pattern"])
        except (re.error, TypeError) as exc:
            fail(f"{where}.pattern", f"not a regular expression Python reads: {exc}")
        rules.append((re.Pattern.search, regex, False, f"expected a match of {inner['pattern']!r}"))
    allowed = inner["enum"] if "enum" in inner else [inner["const"]] if "const" in inner else None
    if allowed is not None:
        try:
            values = frozenset(map(checker(kind, accept), allowed))
        except (Invalid, TypeError):
            fail(where, f"enum/const {show(allowed)} must hold {kind} values only")
        rules.append((operator.contains, values, False, f"expected one of {show(allowed)}"))
    dtype, what, accept, restore, fit = _typed(inner, kind, target, rules)
    if kind == "numeric":  # a number's text (matching the pattern): read, then a number
        number, fitted = checker(what, accept, tuple(rules)), checker(what, accept, fit)
        regex = re.compile(inner["pattern"]) if "pattern" in inner else None
        accept = {**dict.fromkeys(accept, number), str: partial(from_text, number, regex)}
        restore = {**dict.fromkeys(restore, fitted), str: partial(from_text, fitted, None)}
        rules, fit = [], ()
    return _Part(dtype, what, accept, restore, tuple(rules), fit, None, strict)


def _typed(inner: dict[str, Any], kind: str, target: Any, rules: list[Any]) -> tuple[Any, ...]:
    """(dtype, what, accept, restore, fit) of a scalar: how its values become the dtype's,
    and the dtype's bounds (added to ``rules`` unless the schema's are as tight)."""
    dtype = target if target is not None else _DTYPES.get(kind, pl.Float64())
    what, accept = _WHAT[kind], _ACCEPT[kind]
    if kind == "string" and inner.get("format") in ("date", "date-time"):
        date = inner["format"] == "date"
        dtype = target if target is not None else pl.Date() if date else pl.Datetime("us")
        span = NS if not date and dtype.time_unit == "ns" else None
        convert = dt.date.fromisoformat if date else partial(datetime_of, span)
        accept = {str: convert}  # and when restoring, a value converted already
        restore = {str: convert, dt.date: None} if date else {str: convert, dt.datetime: convert}
        return dtype, "a date (YYYY-MM-DD)" if date else "a date-time (ISO 8601)", accept, \
            restore, ()
    if isinstance(dtype, pl.Decimal):
        accept = dict.fromkeys((int, float, Decimal), partial(decimal_of, dtype))
        return dtype, what, accept, {**accept, str: accept[int]}, ()
    if dtype == pl.Float32:  # finite, within ±3.4028235e38
        accept = dict.fromkeys((float, int, Decimal), float32)
    limits = bounds(dtype)
    if limits is None:
        return dtype, what, accept, accept, ()
    fit = ((operator.le, limits[0], False, f"expected >= {limits[0]} ({dtype})"),
           (operator.ge, limits[1], False, f"expected <= {limits[1]} ({dtype})"))
    mine = [inner.get(key) for key in ("minimum", "maximum")]
    rules += [rule for rule, limit in zip(fit, mine, strict=True)  # (bool limits refused before)
              if not isinstance(limit, (int, float)) or not rule[0](rule[1], limit)]
    return dtype, what, accept, accept, fit
