"""Values built from a JSON Schema, derived from a prompt ``p`` (``n = len(p)``): the
mock server's structured answers.

- string: ``"echo: " + p`` (cut to ``maxLength``, padded to ``minLength`` with ``.``);
  ``enum``: ``enum[n % len(enum)]``; ``const``: the const; ``format`` ``date``:
  ``2024-01-DD`` with ``DD = n % 28 + 1``; ``date-time``: that date + ``T12:00:00Z``
  (also ``time``, ``email``, ``uri``, ``uuid``); ``contentMediaType: application/json``
  (how llmframe's strict variant asks for a free-form object): ``'{"echo": p}'`` as JSON
  text; a ``pattern`` the string does not match: the first of a few simple strings that
  does (digits, letters, a date, an e-mail address...), else the string anyway;
- integer: ``n``; number: ``n / 2``, both clamped into ``minimum``/``maximum`` (exclusive
  bounds one step in: 1 for integers, 0.5 for numbers); boolean: ``n % 2 == 0``;
- array: ``max(minItems, 1)`` items (at most ``maxItems``; ``prefixItems`` each once);
  object: every property, required or not (no properties, or no schema: ``{"echo": p}``;
  ``additionalProperties`` with a schema: ``{"echo": <a value of it>}``);
- ``anyOf``/``oneOf``/type lists: the first non-null branch; ``allOf``: merged; ``$ref``
  into ``$defs``/``definitions`` (any ``#/...`` pointer) resolved. A recursive ``$ref`` met
  again takes the shortest way out: null if allowed, ``minItems`` items, required
  properties only (a tree is one node deep, a nullable parent null).

>>> schema = {"type": "object", "properties": {
...     "city": {"type": "string"}, "pop": {"type": "integer"},
...     "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
...     "when": {"type": "string", "format": "date"},
...     "note": {"anyOf": [{"type": "null"}, {"type": "number"}]}}}
>>> build(schema, "Paris")
{'city': 'echo: Paris', 'pop': 5, 'tags': ['b'], 'when': '2024-01-06', 'note': 2.5}

A :class:`Plan` compiles a schema once into nested closures, so building a value costs
about a microsecond per field; ``Plan.bad`` breaks a value for the ``badjson`` fault.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["Make", "Plan", "build"]

_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")

Make = Callable[[str, int], Any]  # (prompt, len(prompt)) -> value


def _echo(p: str, n: int) -> str:
    return "echo: " + p


def _echo_object(p: str, n: int) -> dict[str, str]:
    return {"echo": p}


def _null(p: str, n: int) -> None:
    return None


_DATES = tuple(f"2024-01-{d:02d}" for d in range(1, 29))
_FORMAT_MAKERS: dict[str, Make] = {
    "date": lambda p, n: _DATES[n % 28],
    "date-time": lambda p, n: _DATES[n % 28] + "T12:00:00Z",
    "time": lambda p, n: "12:00:00Z",
    "email": lambda p, n: f"user{n}@example.com",
    "uri": lambda p, n: f"https://example.com/{n}",
    "uuid": lambda p, n: str(uuid.UUID(int=n)),
}


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounded(schema: dict[str, Any], make: Make, step: float) -> Make:
    """``make`` clamped into the schema's minimum/maximum (exclusive ones ``step`` in)."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    lo = lo if _number(lo) else None
    hi = hi if _number(hi) else None
    if _number(xlo := schema.get("exclusiveMinimum")):
        lo = xlo + step if lo is None else max(lo, xlo + step)
    if _number(xhi := schema.get("exclusiveMaximum")):
        hi = xhi - step if hi is None else min(hi, xhi - step)
    if lo is None and hi is None:
        return make
    low = -float("inf") if lo is None else lo
    high = float("inf") if hi is None else hi
    return lambda p, n: min(max(make(p, n), low), high)


def _json_text(p: str, n: int) -> str:
    return json.dumps({"echo": p})


def _string(schema: dict[str, Any]) -> Make:
    fmt = _FORMAT_MAKERS.get(schema.get("format"))  # type: ignore[arg-type]
    if fmt is not None:
        return fmt
    if schema.get("contentMediaType") == "application/json" or str(
            schema.get("description", "")).endswith("(a JSON object, as text)"):
        return _json_text
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    lo = lo if isinstance(lo, int) else 0
    hi = hi if isinstance(hi, int) else None
    make = _echo if not lo and hi is None else lambda p, n: ("echo: " + p).ljust(lo, ".")[:hi]
    return _matching(schema.get("pattern"), make, lo, hi)


_CANDIDATES = (*(c * k for k in range(1, 13) for c in "0aA"), "2024-01-01", "12:00:00",
               "user@example.com", "https://example.com", "a-1", "A1", str(uuid.UUID(int=0)))


def _matching(pattern: Any, make: Make, lo: int, hi: int | None) -> Make:
    """``make``, or when its string does not match ``pattern`` a simple one that does."""
    try:
        regex = re.compile(pattern) if isinstance(pattern, str) else None
    except re.error:
        regex = None
    fits = [c for c in _CANDIDATES if lo <= len(c) <= (hi if hi is not None else len(c))]
    fallback = next((c for c in fits if regex is not None and regex.search(c)), None)
    if fallback is None:  # no pattern, or none of ours matches it: leave it to the schema
        return make

    def matching(p: str, n: int) -> str:
        value = make(p, n)
        return value if regex.search(value) else fallback  # type: ignore[union-attr]
    return matching


def _pointer(root: Any, ref: str) -> Any:
    """What ``ref`` (a ``#/...`` JSON pointer) points at in ``root``; ValueError if nothing."""
    if not ref.startswith("#"):
        msg = f"reference {ref!r} can't be resolved (only '#/...' pointers are)"
        raise ValueError(msg)
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            msg = f"reference {ref!r} can't be resolved"
            raise ValueError(msg)
    return node


class _Compiler:
    """Turns a JSON Schema into a ``Make``; ``$ref`` resolves against ``root``."""

    __slots__ = ("root", "stack")

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.stack: list[str] = []  # $refs being compiled (to notice recursion)

    def lookup(self, ref: str) -> Any:
        return _pointer(self.root, ref)

    def resolve(self, schema: Any) -> Any:
        """``schema`` with ``$ref`` followed (a few hops) and ``allOf`` merged."""
        for _ in range(16):
            if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
                break
            schema = self.lookup(schema["$ref"])
        if isinstance(schema, dict) and isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {}
            props: dict[str, Any] = {}
            required: list[str] = []
            own = {k: v for k, v in schema.items() if k != "allOf"}
            for part in [*map(self.resolve, schema["allOf"]), own]:
                if isinstance(part, dict):
                    merged.update(part)
                    props.update(part.get("properties") or {})
                    required += part.get("required") or []
            if props:
                merged["properties"], merged["required"] = props, required
            schema = merged
        return schema

    def make(self, schema: Any, short: bool = False) -> Make:
        """How to build a value of ``schema``; ``short`` takes the shortest way out."""
        if not isinstance(schema, dict):  # true, or not a schema: anything goes
            return _echo
        ref = schema.get("$ref")
        if isinstance(ref, str):
            if ref in self.stack:  # recursion: shortest way out, then give up with null
                if short:
                    return _null
                short = True
            self.stack.append(ref)
            try:
                return self.make(self.lookup(ref), short)
            finally:
                self.stack.pop()
        if "allOf" in schema:
            return self.make(self.resolve(schema), short)
        if "const" in schema:
            value = schema["const"]
            return lambda p, n: value
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            choices = tuple(enum)
            return lambda p, n: choices[n % len(choices)]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                pick = next((b for b in branches if not _is_null(b)), branches[0])
                again = isinstance(pick, dict) and pick.get("$ref") in self.stack
                if (short or again) and any(map(_is_null, branches)):
                    return _null
                return self.make(pick, short)
        return self.typed(schema, short)

    def typed(self, schema: dict[str, Any], short: bool) -> Make:
        kind = schema.get("type")
        if isinstance(kind, list):
            rest = [k for k in kind if k != "null"]
            if not rest or (short and len(rest) < len(kind)):
                return _null
            kind = rest[0]
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema \
                else "string"
        if kind == "string":
            return _string(schema)
        if kind == "integer":
            return _bounded(schema, lambda p, n: n, 1)
        if kind == "number":
            return _bounded(schema, lambda p, n: n / 2, 0.5)
        if kind == "boolean":
            return lambda p, n: n % 2 == 0
        if kind == "null":
            return _null
        if kind == "array":
            return self.array(schema, short)
        if kind == "object":
            return self.object(schema, short)
        msg = f"unknown type {kind!r}"
        raise ValueError(msg)

    def array(self, schema: dict[str, Any], short: bool) -> Make:
        least = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 0
        prefix = schema.get("prefixItems")  # a tuple: one schema per leading item
        heads = tuple(self.make(s, short) for s in prefix) if isinstance(prefix, list) else ()
        count = max(least if short else max(least, 1), len(heads))
        most = schema.get("maxItems")
        if isinstance(most, int):
            count = min(count, most)
        if schema.get("items") is False:
            count = min(count, len(heads))
        item = self.make(schema.get("items", True), short) if count > len(heads) else _null
        makers = (heads + (item,) * count)[:count]
        return lambda p, n: [f(p, n) for f in makers]

    def object(self, schema: dict[str, Any], short: bool) -> Make:
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            extra = schema.get("additionalProperties")
            if short or extra is False:
                return lambda p, n: {}
            if isinstance(extra, dict):
                value = self.make(extra, short)
                return lambda p, n: {"echo": value(p, n)}
            return _echo_object
        required = schema.get("required") or ()
        fields = tuple((k, self.make(v, short)) for k, v in props.items()
                       if not short or k in required)
        return lambda p, n: {k: f(p, n) for k, f in fields}

    def types(self, schema: Any, depth: int = 0) -> set[str]:
        """The JSON types ``schema`` allows (all of them when it says nothing)."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict) or depth > 8:
            return set(_TYPES)
        values = [schema["const"]] if "const" in schema else schema.get("enum")
        if isinstance(values, list):
            return {_type_of(v) for v in values}
        kind = schema.get("type")
        if isinstance(kind, (str, list)):
            return {kind} if isinstance(kind, str) else set(kind)
        out: set[str] = set()
        for key in ("anyOf", "oneOf"):
            for branch in schema.get(key) or ():
                out |= self.types(branch, depth + 1)
        if out:
            return out
        if "properties" in schema:
            return {"object"}
        return {"array"} if "items" in schema else set(_TYPES)


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "array" if isinstance(value, list) else "object"


_WRONG: tuple[tuple[tuple[str, ...], Make], ...] = (  # (types it would satisfy, a value)
    (("string",), _echo), (("integer", "number"), lambda p, n: n),
    (("array",), lambda p, n: ["echo: " + p]), (("object",), _echo_object))


def _wrong(allowed: set[str]) -> Make | None:
    """A value of a type ``allowed`` does not include (None if it allows every type)."""
    return next((make for kinds, make in _WRONG if not allowed & set(kinds)), None)


class Plan:
    """How to answer one schema: ``make(p, n)`` builds the value, ``bad(value, p, n)``
    breaks it (``badjson``): the first required property dropped, else the first property
    of a wrong type, else (no properties, or no schema) a JSON array instead."""

    __slots__ = ("bad", "make")

    def __init__(self, schema: dict[str, Any] | None) -> None:
        self.make: Make = _echo_object
        self.bad: Callable[[Any, str, int], Any] = _as_array
        if schema is None:
            return
        compiler = _Compiler(schema)
        self.make = compiler.make(schema)
        root = compiler.resolve(schema)
        props = root.get("properties") if isinstance(root, dict) else None
        if isinstance(props, dict) and props:
            required = [k for k in root.get("required") or () if k in props]
            first = required[0] if required else next(iter(props))
            wrong = None if required else _wrong(compiler.types(props[first]))
            if required:
                self.bad = lambda value, p, n: {k: v for k, v in value.items() if k != first}
            elif wrong is not None:
                self.bad = lambda value, p, n: {**value, first: wrong(p, n)}
            return
        allowed = compiler.types(root)
        wrong = _wrong(allowed)
        if wrong is not None and "object" not in allowed:  # a root that is not an object
            self.bad = lambda value, p, n: wrong(p, n)


def _as_array(value: Any, p: str, n: int) -> Any:
    return list(value.values()) if isinstance(value, dict) else [value]


def build(schema: dict[str, Any] | None, prompt: str) -> Any:
    """The value answering ``schema`` (None: any JSON object) for ``prompt``.

    >>> build(None, "hi"), build({"type": ["null", "boolean"]}, "hi")
    ({'echo': 'hi'}, True)
    """
    return Plan(schema).make(prompt, len(prompt))
