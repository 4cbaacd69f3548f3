"""The checks run on every answer, built by :mod:`llmframe._schema_compile`: closures that
take a JSON value, check it and convert it to a polars dtype's value, or raise
:class:`Invalid` (each container on the way up adds its key to the path).

>>> import operator
>>> at_most_9 = (operator.ge, 9, False, "expected <= 9")
>>> check = checker("an integer", {int: None, float: whole}, (at_most_9,))
>>> check(3.0), check(7)
(3, 7)
>>> check(12)
Traceback (most recent call last):
...
llmframe._schema_check.Invalid: expected <= 9, got 12
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NoReturn

import orjson

from ._json import dumps

__all__ = ["NS", "Check", "Invalid", "checker", "datetime_of", "decimal_of", "each", "fields",
           "float32", "free_form", "from_text", "items", "multiple", "path", "prepared",
           "read_text", "show", "unexpected", "unique", "whole"]

Check = Callable[[Any], Any]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
#: the date-times a Datetime("ns") column holds
NS = (dt.datetime(1677, 9, 21, 0, 12, 43, 145225), dt.datetime(2262, 4, 11, 23, 47, 16, 854775))
_EXACT = decimal.Context(prec=1000)  # multipleOf: a float's digits, 10**308 and all


class Invalid(Exception):  # a violation on its way up, never seen by a caller
    def __init__(self, msg: str, *where: str | int) -> None:
        self.msg, self.path = msg, list(where)  # innermost first


def path(keys: Any) -> str:
    """``$.a[0]["b c"]`` from outermost-first keys."""
    return "$" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" if _IDENT.fullmatch(k)
                         else f"[{orjson.dumps(k).decode()}]" for k in keys)


def show(value: Any) -> str:
    try:
        text = orjson.dumps(value, default=_shown).decode()
    except TypeError:  # an integer past 64 bits
        text = json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def _shown(value: Any) -> Any:
    return orjson.Fragment(str(value)) if isinstance(value, Decimal) else repr(value)


def checker(what: str, accept: dict[type, Check | None], rules: tuple[Any, ...] = ()) -> Check:
    """Takes the classes in ``accept``, checks ``rules``, converts (ValueError: not ``what``)."""
    def check(value: Any) -> Any:
        try:
            convert = accept[value.__class__]
        except KeyError:
            raise Invalid(f"expected {what}, got {show(value)}") from None
        if value is None:  # accepted: the node is nullable
            return None
        for test, limit, sized, msg in rules:
            if not test(limit, len(value) if sized else value):
                raise Invalid(f"{msg}, got {show(value)}")
        if convert is None:
            return value
        try:
            return convert(value)
        except (ValueError, ArithmeticError):  # also a date-time past year 9999 in UTC
            raise Invalid(f"expected {what}, got {show(value)}") from None
    return check


def items(item: Check, value: list[Any]) -> list[Any]:
    """An array's items, each through ``item``."""
    out = []
    for i, x in enumerate(value):
        try:
            out.append(item(x))
        except Invalid as exc:
            exc.path.append(i)
            raise
    return out


def fields(specs: tuple[Any, ...], closed: frozenset[str] | None,
           value: dict[str, Any]) -> dict[str, Any]:
    """An object's properties, each (name, check, mode) in ``specs`` (mode 0: required, 1:
    optional, null meaning "not given", 2: optional and nullable); others dropped, or refused
    when ``closed`` names the properties allowed."""
    out = {}
    for name, sub, mode in specs:
        x = value.get(name)
        if x is None and (mode == 1 or name not in value):
            if mode == 0:
                raise Invalid("missing required field", name)
            out[name] = None
            continue
        try:
            out[name] = sub(x)
        except Invalid as exc:
            exc.path.append(name)
            raise
    if closed is not None:
        for key in value:
            if key not in closed:
                raise Invalid("unexpected property (additionalProperties is false)", key)
    return out


def unexpected(_: Any) -> NoReturn:
    raise Invalid("unexpected property (additionalProperties is false)")


def free_form(rules: tuple[Any, ...], values: Check | None, value: Any) -> str:
    """A free-form object (or its JSON text, as strict mode asks), as JSON text."""
    value = orjson.loads(value) if value.__class__ is str else value
    if value.__class__ is not dict:
        raise ValueError
    for test, limit, _, msg in rules:  # minProperties, maxProperties
        if not test(limit, len(value)):
            raise Invalid(f"{msg}, got {show(value)}")
    for key, x in value.items() if values is not None else ():
        try:
            values(x)  # type: ignore[misc]
        except Invalid as exc:
            exc.path.append(key)
            raise
    return dumps(value).decode()


def prepared(specs: tuple[Any, ...], value: Any) -> Any:
    """An object made ready for a pydantic model, each (name, optional, prepare) in ``specs``:
    an optional field's null (how the strict variant says "not given") left out."""
    if value.__class__ is not dict:
        return value  # the model says what is wrong
    out = dict(value)
    for name, optional, sub in specs:
        x = out.get(name)
        if x is None:
            if optional:  # null for "not given": left out, so the model's default applies
                out.pop(name, None)
        elif sub is not None:
            out[name] = sub(x)
    return out


def each(item: Check, value: Any) -> Any:
    return [item(x) for x in value] if value.__class__ is list else value


def read_text(value: Any) -> Any:
    """A free-form object's JSON text (as the strict variant asks for it) read; else as is."""
    if value.__class__ is str:
        try:
            read = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        return read if read.__class__ is dict else value
    return value


def whole(value: Any) -> int:
    """A float (or Decimal) that is an integer, as one."""
    number = int(value)  # ValueError or OverflowError for nan and inf
    if number != value or (value.__class__ is float and abs(number) >= 2**63):
        raise ValueError  # such a float may be a wider integer, rounded by the JSON reader
    return number


def decimal_of(dtype: Any, value: Any) -> Decimal:
    """A number (or its text) as a value of a ``pl.Decimal`` ``dtype``: rounded half-even to
    its scale, with no more digits before the point than it holds."""
    exact = Decimal(repr(value)) if value.__class__ is float else Decimal(value)
    if not exact.is_finite():
        raise ValueError
    digits, scale = (dtype.precision or 38) - dtype.scale, dtype.scale
    if exact.is_zero() or exact.adjusted() < digits:  # adjusted: the first digit's power of 10
        rounded = exact.quantize(Decimal(1).scaleb(-scale), decimal.ROUND_HALF_EVEN,
                                 decimal.Context(prec=digits + scale + 1))
        if rounded.is_zero():
            return rounded.copy_abs()  # not -0.00
        if rounded.adjusted() < digits:  # 99.996 rounds to 100.00
            return rounded
    msg = f"expected at most {digits} digits before the point ({dtype}), got {show(value)}"
    raise Invalid(msg)


def datetime_of(span: tuple[dt.datetime, dt.datetime] | None, value: Any) -> dt.datetime:
    """A date-time's text (or a date-time), in UTC without a zone, within ``span``."""
    when = value if value.__class__ is dt.datetime \
        else dt.datetime.fromisoformat(value.replace("Z", "+00:00"))  # Python 3.10 reads no Z
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if span is not None and not span[0] <= when <= span[1]:
        msg = (f"expected a date-time within {span[0].isoformat()} .. {span[1].isoformat()} "
               f"(Datetime ns), got {show(value)}")
        raise Invalid(msg)
    return when


def from_text(number: Check, pattern: re.Pattern[str] | None, value: str) -> Any:
    """A number's text, matching ``pattern`` if given, through the check of ``number``."""
    if _NUMBER.fullmatch(value) is None or (pattern is not None and not pattern.search(value)):
        raise ValueError
    return number(float(value))


def float32(value: Any) -> float:
    """A number a Float32 column holds: finite, within ±3.4028235e38 (beyond, it holds inf)."""
    value = float(value)
    if -3.4028235e38 <= value <= 3.4028235e38:
        return value
    msg = f"expected a finite number within ±3.4028235e38 (Float32), got {show(value)}"
    raise Invalid(msg)


def multiple(step: Any, value: Any) -> bool:
    """``multipleOf``, on the numbers as written: 0.3 is a multiple of 0.1."""
    if value.__class__ is int and step.__class__ is int:
        return value % step == 0
    exact = [Decimal(repr(x)) if isinstance(x, float) else Decimal(x) for x in (value, step)]
    try:
        return _EXACT.remainder(*exact) == 0
    except decimal.InvalidOperation:  # a quotient of over 1000 digits
        return False


def unique(_: Any, value: list[Any]) -> bool:
    """``uniqueItems``."""
    try:
        return len(set(value)) == len(value)
    except TypeError:  # objects or arrays
        keys = {orjson.dumps(x, option=orjson.OPT_SORT_KEYS, default=str) for x in value}
        return len(keys) == len(value)
