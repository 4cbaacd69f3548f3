"""What the mock server answers: HTTP responses as bytes, the echo answer (or JSON for a
``response_format``, see ``_structured``), faults."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson

from ._structured import SHAPE_FAULTS, Rejection, structured

if TYPE_CHECKING:
    from ._server import MockState

__all__ = ["FAULTS", "answer", "count_tokens", "cut_tokens", "echo_auth", "fault_reply",
           "fault_table", "number", "prompt_of", "request_doc"]

FAULTS = ("429", "500", "503", "drop", "hang", "malformed", "badgzip", "badgzip_close",
          *SHAPE_FAULTS)

_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
            405: b"Method Not Allowed", 429: b"Too Many Requests",
            500: b"Internal Server Error", 503: b"Service Unavailable"}


def _response(status: int, body: bytes, extra: bytes = b"", *, length: bool = True) -> bytes:
    """One HTTP/1.1 response; ``length=False`` leaves out Content-Length (body ends at close)."""
    size = b"Content-Length: " + str(len(body)).encode() + b"\r\n" if length else b""
    return b"".join((
        b"HTTP/1.1 ", str(status).encode(), b" ", _REASONS.get(status, b"Error"), b"\r\n",
        b"Content-Type: application/json\r\n", size, extra, b"\r\n", body,
    ))


def number(value: float) -> str:
    """``value`` as a header number, verbatim: 86400 -> ``86400``, 0.3 -> ``0.3``.

    >>> number(86400.0), number(0.25)
    ('86400', '0.25')
    """
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "mock_error", "code": status}})


def _error(status: int, message: str, extra: bytes = b"") -> bytes:
    return _response(status, _error_body(status, message), extra)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(t for p in content
                       if isinstance(p, dict) and isinstance(t := p.get("text"), str))
    return ""


def echo_auth(doc: dict[str, Any], state: MockState, auth: str | None) -> None:
    """With ``echo_auth``, append the Authorization header to the user messages (a
    misbehaving server that echoes the key back)."""
    if state.echo_auth and auth:
        for m in doc.get("messages") or []:
            if isinstance(m, dict) and m.get("role") == "user":
                m["content"] = f"{_text_of(m.get('content'))} (Authorization: {auth})"


def request_doc(body: bytes, doc: Any = None) -> tuple[Any, str | None]:
    """``(doc, None)`` for a JSON object body (``doc`` if already parsed), else ``(None,
    problem)``.

    >>> request_doc(b'{"a": 1}'), request_doc(b"[1]"), request_doc(b"{no")
    (({'a': 1}, None), (None, 'body must be a JSON object'), (None, 'body is not valid JSON'))
    """
    if doc is None:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, "body is not valid JSON"
    if not isinstance(doc, dict):
        return None, "body must be a JSON object"
    return doc, None


def prompt_of(path: bytes, doc: Any) -> str | None:
    """The prompt of a request: the last user message (chat) or ``prompt`` (completions)."""
    if not isinstance(doc, dict):
        return None
    if path.endswith(b"/chat/completions"):
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return _text_of(users[-1].get("content")) if users else ""
    if path.endswith(b"/completions"):
        prompt = doc.get("prompt")
        return prompt if isinstance(prompt, str) else None
    return None


_TOKEN = re.compile(r"\w+|[^\w\s]")
_ASCII_SPACE = bytes(i for i in range(128) if re.match(r"\s", chr(i)))
_ASCII_PUNCT = bytes(i for i in range(128) if re.match(r"[^\w\s]", chr(i)))
_ASCII_BLANK = bytes.maketrans(_ASCII_PUNCT + _ASCII_SPACE,
                               b" " * (len(_ASCII_PUNCT) + len(_ASCII_SPACE)))


def count_tokens(text: str) -> int:
    """A tokenizer-like count: the matches of ``\\w+|[^\\w\\s]`` (words and single
    punctuation marks; deliberately not chars/4).

    >>> count_tokens("Hello, world!")
    4
    >>> count_tokens("echo: it's 3.5 km"), count_tokens("naïve — café")
    (9, 3)
    """
    if text.isascii():  # the same count, 4x faster: punctuation marks plus word runs
        raw = text.encode()
        punct = len(raw) - len(raw.translate(None, _ASCII_PUNCT))
        return punct + len(raw.translate(_ASCII_BLANK).split())
    return len(_TOKEN.findall(text))


def cut_tokens(text: str, n: int) -> str:
    """``text`` up to the end of its ``n``-th token.

    >>> cut_tokens("echo: Hello, world!", 3)
    'echo: Hello'
    >>> cut_tokens("echo: hi", 0)
    ''
    """
    end = 0
    for i, match in enumerate(_TOKEN.finditer(text), 1):
        if i > n:
            break
        end = match.end()
    return text[:end]


def _cap(doc: dict[str, Any]) -> int | None:
    """The request's limit on answer tokens (the smaller of ``max_tokens`` and
    ``max_completion_tokens``); ValueError if one is not a non-negative integer."""
    cap = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            msg = f"'{key}' must be a non-negative integer"
            raise ValueError(msg)
        cap = value if cap is None else min(cap, value)
    return cap


def answer(path: bytes, doc: Any, state: MockState,
           fault: str | None = None) -> tuple[int, bytes, int]:
    """Status, JSON body and total tokens (0 unless 200) for one well-formed request.
    Usage is counted from the request; ``max_tokens`` cuts the answer (``finish_reason``
    ``length``). A ``response_format`` gets JSON built from its schema (see
    ``_structured``), broken by a shape ``fault`` (``badjson``, ``notjson``)."""
    model = doc.get("model") or state.name
    chat = path.endswith(b"/chat/completions")
    if chat:  # all message text, 4 per message and 3 to prime the answer (OpenAI's format)
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, _error_body(400, "'messages' must be a non-empty list"), 0
        prompt, prompt_tokens, user_tokens = "", 3 + 4 * len(messages), 0
        for m in messages:
            if isinstance(m, dict):
                content = _text_of(m.get("content"))
                n = count_tokens(content)
                prompt_tokens += n
                if m.get("role") == "user":  # the answer echoes the last one
                    prompt, user_tokens = content, n
    elif path.endswith(b"/completions"):
        prompt = doc.get("prompt")
        if not isinstance(prompt, str):
            return 400, _error_body(400, "'prompt' must be a string"), 0
        prompt_tokens = user_tokens = count_tokens(prompt)
    else:
        return 404, _error_body(404, "not found"), 0
    try:
        cap = _cap(doc)
        text = structured(doc, prompt, state, fault)
    except Rejection as exc:
        return exc.status, exc.body, 0
    except ValueError as exc:
        return 400, _error_body(400, str(exc)), 0
    if text is None:
        text = "echo: " + prompt
        completion_tokens = 2 + user_tokens  # "echo", ":" and the prompt's own
    else:
        completion_tokens = count_tokens(text)
    finish = "stop"
    if cap is not None and completion_tokens > cap:
        text, completion_tokens, finish = cut_tokens(text, cap), cap, "length"
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens,
                             "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if chat:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish,
                                  "message": {"role": "assistant", "content": text}}
        usage["prompt_tokens_details"] = {"cached_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
    else:
        choice = {"index": 0, "finish_reason": finish, "text": text, "logprobs": None}
    body = orjson.dumps({
        "id": "mock-1", "object": "chat.completion" if chat else "text_completion",
        "created": 0, "model": model, "choices": [choice], "usage": usage,
    })
    return 200, body, prompt_tokens + completion_tokens


_NOT_GZIP = orjson.dumps({
    "id": "mock-1", "object": "chat.completion", "created": 0, "model": "mock",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "not gzip"}}]})

_MODELS = orjson.dumps({"object": "list", "data": [
    {"id": "mock-model", "object": "model", "created": 0, "owned_by": "llmframe"}]})


def fault_table(faults: dict[str, float], named: list[str | None]) -> list[tuple[float, str]]:
    """The cumulative rates of ``faults`` to draw from; ValueError for an unknown fault (a
    key of ``faults`` or one ``named``) or rates that do not add up to at most 1.

    >>> fault_table({"429": 0.25, "badjson": 0.5}, ["drop", None])
    [(0.25, '429'), (0.75, 'badjson')]
    """
    unknown = (set(faults) | {s for s in named if s is not None}) - set(FAULTS)
    if unknown:
        msg = f"unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}"
        raise ValueError(msg)
    if sum(faults.values()) > 1 or any(r < 0 for r in faults.values()):
        msg = "fault rates must be >= 0 and add up to at most 1"
        raise ValueError(msg)
    table, total = [], 0.0
    for kind, rate in faults.items():
        total += rate
        table.append((total, kind))
    return table


def fault_reply(fault: str, state: MockState, auth: str | None) -> tuple[bytes | None, bool]:
    """``(response, close_after)`` for a fault other than ``hang``/``drop``."""
    if fault == "malformed":
        return _response(200, b'{"choices": [{"message": {"content": "tru'), False
    if fault == "badgzip":
        return _response(200, _NOT_GZIP, b"Content-Encoding: gzip\r\n"), False
    if fault == "badgzip_close":
        extra = b"Content-Encoding: gzip\r\nConnection: close\r\n"
        return _response(200, _NOT_GZIP, extra, length=False), True
    status = int(fault)
    extra = b""
    if status == 429 and state.retry_after is not None:
        extra = b"Retry-After: " + number(state.retry_after).encode() + b"\r\n"
    message = f"mock fault {status}"
    if state.echo_auth and auth:
        message += f" (Authorization: {auth})"
    return _error(status, message, extra), False


def parse_head(head: bytes) -> tuple[bytes, bytes, int, str | None, bool]:
    """``(method, path, content_length, authorization, chunked)`` of a request head;
    ValueError for a bad request line."""
    lines = head.split(b"\r\n")
    method, path, _version = lines[0].split(b" ", 2)
    length, auth, chunked = 0, None, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"authorization":
            auth = value.strip().decode("latin-1")
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return method, path.split(b"?", 1)[0], length, auth, chunked
