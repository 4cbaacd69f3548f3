"""JSON in and out: orjson on the hot path, exact for integers past 64 bits.

orjson reads an integer past 64 bits as a float and refuses to write one; an input field
``"id": 123456789012345678901234567890`` must still come back unchanged. Lines that could
hold such a number (a run of 19+ digits) are read with the standard library, and a record
orjson cannot write is written by the standard library.
"""

from __future__ import annotations

import decimal
import json
import re
from typing import Any

import orjson

__all__ = ["dumps", "json_default", "loads"]

_LONG_DIGITS = re.compile(rb"\d{19,}")


def loads(data: bytes) -> Any:
    """Parse JSON; integers of any size stay integers.

    >>> loads(b'{"id": 123456789012345678901234567890}')
    {'id': 123456789012345678901234567890}
    """
    value = orjson.loads(data)
    if _LONG_DIGITS.search(data):
        return json.loads(data)
    return value


def json_default(value: Any) -> Any:
    """What orjson cannot write itself: a Decimal (a schema's pl.Decimal field), exactly."""
    if isinstance(value, decimal.Decimal):
        return orjson.Fragment(str(value))
    raise TypeError


def dumps(value: Any, *, newline: bool = False) -> bytes:
    """Serialize to compact JSON bytes (with a trailing newline if asked).

    >>> dumps({"id": 123456789012345678901234567890, "t": "é"})
    b'{"id":123456789012345678901234567890,"t":"\\xc3\\xa9"}'
    >>> dumps({"price": decimal.Decimal("12.30")})
    b'{"price":12.30}'
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE if newline else 0,
                            default=json_default)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                      default=str)
    return (text + "\n" if newline else text).encode("utf-8", "surrogatepass")
