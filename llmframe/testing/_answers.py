"""What the mock server answers: HTTP responses as bytes, the echo answer, faults."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ._server import MockState

__all__ = ["answer", "fault_reply", "prompt_of"]

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


def _seconds(value: float) -> str:
    """``value`` as a header number, verbatim: 86400 -> ``86400``, 0.3 -> ``0.3``."""
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
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


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


def answer(path: bytes, doc: Any, state: MockState) -> tuple[int, bytes]:
    """Status and JSON body for one well-formed request (no faults)."""
    model = doc.get("model") or state.name
    if path.endswith(b"/chat/completions"):
        prompt = prompt_of(path, doc)
        if prompt is None:
            return 400, _error_body(400, "'messages' must be a non-empty list")
        text = "echo: " + prompt
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}
        kind = "chat.completion"
    elif path.endswith(b"/completions"):
        prompt = doc.get("prompt")
        if not isinstance(prompt, str):
            return 400, _error_body(400, "'prompt' must be a string")
        text = "echo: " + prompt
        choice = {"index": 0, "finish_reason": "stop", "text": text, "logprobs": None}
        kind = "text_completion"
    else:
        return 404, _error_body(404, "not found")
    prompt_tokens = len(prompt.split()) + 1
    body = orjson.dumps({
        "id": "mock-1", "object": kind, "created": 0, "model": model, "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": prompt_tokens + 1,
                  "total_tokens": 2 * prompt_tokens + 1},
    })
    return 200, body


_NOT_GZIP = orjson.dumps({
    "id": "mock-1", "object": "chat.completion", "created": 0, "model": "mock",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "not gzip"}}]})

_MODELS = orjson.dumps({"object": "list", "data": [
    {"id": "mock-model", "object": "model", "created": 0, "owned_by": "llmframe"}]})


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
        extra = b"Retry-After: " + _seconds(state.retry_after).encode() + b"\r\n"
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
