"""Keeping API keys out of everything shown or stored.

Keys are read from the environment when a run starts and sent only as the
``Authorization`` header of their own endpoint. Whatever comes back (an error body, an
answer that echoes the header, a URL with credentials) passes through here first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._json import dumps, loads

__all__ = ["Secrets", "looks_like_a_key", "redact", "redact_url"]

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;)\\]+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    r"""Remove API keys (and any bearer token) from text that may be shown or stored.

    >>> redact("key sk-123 and Authorization: Bearer sk-999", ["sk-123"])
    'key *** and Authorization: Bearer ***'
    >>> redact('(got "Bearer sk-9") and {\\"a\\": \\"Bearer sk-9\\"}')
    '(got "Bearer ***") and {\\"a\\": \\"Bearer ***\\"}'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", text)


def redact_url(url: str) -> str:
    """The URL as it may be shown: no ``user:password@``, no query values (keys sometimes
    travel as ``?api-key=...``).

    >>> redact_url("https://u:pw@host/v1?api-key=sk-1&x=2")
    'https://***@host/v1?api-key=***&x=***'
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(f"{p.split('=', 1)[0]}=***" if "=" in p else p
                     for p in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Secrets:
    """The keys of one run, for redacting what endpoints send back.

    >>> s = Secrets(["sk-1"])
    >>> s.redact("got sk-1"), s.leaks(b'{"x": "sk-1"}'), s.leaks(b"{}")
    ('got ***', True, False)
    >>> s.redact_answer({"echo": "sk-1"})
    {'echo': '***'}
    """

    __slots__ = ("_bytes", "keys")

    def __init__(self, keys: Iterable[str | None]) -> None:
        self.keys = [k for k in keys if k]
        self._bytes = [k.encode() for k in self.keys]

    def redact(self, text: str) -> str:
        return redact(text, self.keys)

    def leaks(self, data: bytes) -> bool:
        """Whether raw response bytes contain a key (checked only when there are keys)."""
        return any(k in data for k in self._bytes)

    def redact_answer(self, answer: Any) -> Any:
        """An endpoint echoed a key back in a 200 answer: store it redacted."""
        if isinstance(answer, str):
            return self.redact(answer)
        return loads(self.redact(dumps(answer).decode()).encode())


def looks_like_a_key(name: str) -> bool:
    """Variable names are short or upper-case; a long mixed-case token is a key pasted in
    the wrong place (never echo it back).

    >>> looks_like_a_key("OPENAI_API_KEY"), looks_like_a_key("AIzaSyD3x9kQ0abcdefGHIJ")
    (False, True)
    """
    return len(name) >= 20 and any(c.islower() for c in name) and any(
        c.isdigit() for c in name)
