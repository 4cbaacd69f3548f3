"""Token estimates before a request: pure, never raising.

A token-per-minute budget has to be charged before a request is sent, when only its body
is known (and corrected when the answer's ``usage`` comes back: see ``_usage``):

- :func:`request_text`: the text a provider counts in an OpenAI- or Anthropic-style body.
- :func:`estimate_prompt_tokens`: that text counted (≈4 characters a token unless an exact
  counter is given), plus per-message and per-image overheads.
- :func:`output_tokens`: the output a request may use (``max_*tokens`` times ``n``).
- :func:`tiktoken_counter`: exact counting when tiktoken and its encoding file are already
  on this machine; it never downloads.

Bodies come from users' rows: nothing here trusts a shape; odd values are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import orjson

__all__ = ["IMAGE_TOKENS", "IMAGE_TOKENS_HIGH", "MEDIA_TOKENS", "REPLY_PRIMING",
           "TOKENS_PER_MESSAGE",
           "cached_encoding_file", "chars_tokens", "estimate_prompt_tokens", "output_tokens",
           "request_text", "tiktoken_counter"]

TOKENS_PER_MESSAGE = 4  # OpenAI's cookbook: ~3 per message, plus 1 for the role
REPLY_PRIMING = 3  # every chat reply is primed with <|start|>assistant<|message|>
IMAGE_TOKENS = 85  # a low-detail image (OpenAI); high detail costs 85 + 170 a 512 px tile
IMAGE_TOKENS_HIGH = 765  # a 1024 x 1024 image at high (or auto) detail: 85 + 4 x 170
MEDIA_TOKENS = 1500  # a file or audio part: about a PDF page or a minute of audio

_IMAGE_TYPES = frozenset({"image_url", "image", "input_image"})
_MEDIA_TYPES = frozenset({"input_audio", "audio", "file", "input_file", "document"})
_MAX_DEPTH = 4


def chars_tokens(text: str) -> int:
    """A quick estimate: one token per 4 characters, rounded up — and each extra UTF-8 byte
    of a non-ASCII character counts half a token more, since tokenizers split those text
    into far more tokens (Chinese or Japanese: about one a character, not a quarter).

    >>> chars_tokens(""), chars_tokens("abcd"), chars_tokens("abcde"), chars_tokens("数据处理")
    (0, 1, 2, 5)
    """
    if text.isascii():
        return -(-len(text) // 4)
    return -(-(len(text) + 2 * (len(text.encode("utf-8", "replace")) - len(text))) // 4)


def _json(value: Any) -> str:
    """``value`` as compact JSON (a string stays as it is), or "" when it cannot be."""
    if isinstance(value, str):
        return value
    with suppress(Exception):
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    try:  # past 64-bit integers, for one
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str,
                          skipkeys=True)
    except Exception:
        return ""


class _Walk:
    """The text pieces, messages and images of one request body."""

    __slots__ = ("images", "images_high", "media", "messages", "pieces")

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.messages = 0
        self.images = 0
        self.images_high = 0
        self.media = 0

    def content(self, value: Any, depth: int = 0) -> None:
        """Message content: a string, a list of parts, or one part."""
        if isinstance(value, str):
            self.pieces.append(value)
        elif isinstance(value, (list, tuple)):
            for part in value:
                self.part(part, depth)
        elif isinstance(value, Mapping):
            self.part(value, depth)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self.pieces.append(str(value))

    def part(self, part: Any, depth: int) -> None:
        """One content part: text, an image (counted), a tool use or result, or skipped."""
        if isinstance(part, str):
            self.pieces.append(part)
            return
        if not isinstance(part, Mapping):
            return
        kind = part.get("type")
        if kind in _IMAGE_TYPES or kind in _MEDIA_TYPES:
            if kind in _IMAGE_TYPES:
                inner = part.get("image_url")
                detail = inner.get("detail") if isinstance(inner, Mapping) else None
                if (detail or part.get("detail")) == "low":
                    self.images += 1
                else:
                    self.images_high += 1
            else:
                self.media += 1
            return
        text = part.get("text")
        if isinstance(text, str):
            self.pieces.append(text)
        elif kind == "tool_use":  # Anthropic: the model's call, as it will be re-read
            self.text(part.get("name"))
            self.pieces.append(_json(part.get("input")))
        elif kind == "tool_result" and depth < _MAX_DEPTH:
            self.content(part.get("content"), depth + 1)

    def text(self, value: Any) -> None:
        if isinstance(value, str):
            self.pieces.append(value)

    def message(self, msg: Any) -> None:
        """A chat message, or a Responses API input item (message, call, call output)."""
        if not isinstance(msg, Mapping):
            return
        self.messages += 1
        self.text(msg.get("name"))
        self.content(msg.get("content"))
        calls = msg.get("tool_calls")
        if isinstance(calls, (list, tuple)):
            for call in calls:
                if isinstance(call, Mapping):
                    self.function(call.get("function"))
        self.function(msg.get("function_call"))  # legacy chat functions
        if "arguments" in msg:  # Responses API function_call item
            self.pieces.append(_json(msg.get("arguments")))
        self.text(msg.get("output"))  # Responses API function_call_output item

    def function(self, function: Any) -> None:
        if isinstance(function, Mapping):
            self.text(function.get("name"))
            if "arguments" in function:
                self.pieces.append(_json(function.get("arguments")))

    def strings(self, value: Any) -> None:
        """A prompt or input: a string, a list of strings, or (``input``) a list of items."""
        if isinstance(value, str):
            self.pieces.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self.text(item) if isinstance(item, str) else self.message(item)


def _walk(body: Any) -> _Walk:
    walk = _Walk()
    if not isinstance(body, Mapping):
        return walk
    try:
        walk.content(body.get("system"))  # Anthropic: a string or a list of text blocks
        walk.text(body.get("instructions"))  # Responses API
        messages = body.get("messages")
        if isinstance(messages, (list, tuple)):
            for msg in messages:
                walk.message(msg)
        walk.strings(body.get("prompt"))
        walk.strings(body.get("input"))
        for key in ("tools", "functions"):
            tools = body.get(key)
            if isinstance(tools, (list, tuple, Mapping)) and tools:
                walk.pieces.append(_json(tools))
    except Exception:  # a hostile Mapping subclass: keep what was read
        pass
    return walk


def request_text(body: Mapping[str, Any]) -> str:
    """All the text a provider would count in a request body, one piece a line.

    >>> request_text({"system": "Be brief.", "messages": [
    ...     {"role": "user", "content": [{"type": "text", "text": "What is this?"},
    ...                                  {"type": "image_url", "image_url": {"url": "x"}}]},
    ...     {"role": "assistant", "content": None, "tool_calls": [
    ...         {"function": {"name": "look", "arguments": {"q": 1}}}]}]})
    'Be brief.\\nWhat is this?\\nlook\\n{"q":1}'
    >>> request_text({"prompt": ["a", "b"]}), request_text(None)
    ('a\\nb', '')
    """
    return "\n".join(_walk(body).pieces)


def _plain_chat_chars(body: Mapping[str, Any]) -> int | None:
    """Characters of a chat body of ASCII string contents only ({"role", "content"}
    messages), or None for any other body."""
    messages = body.get("messages") if type(body) is dict else None
    if type(messages) is not list:
        return None
    total = 0
    for m in messages:
        content = m.get("content") if type(m) is dict else None
        if type(content) is not str or len(m) > 2 or not content.isascii():
            return None
        total += len(content)
    return total


def estimate_prompt_tokens(body: Mapping[str, Any],
                           count: Callable[[str], int] | None = None) -> int:
    """Prompt tokens of a request: its :func:`request_text` counted by ``count`` (default:
    its characters, without the line breaks, over 4), plus :data:`TOKENS_PER_MESSAGE` a
    message and :data:`REPLY_PRIMING` for a chat, plus :data:`IMAGE_TOKENS` a low-detail
    image and :data:`IMAGE_TOKENS_HIGH` any other, :data:`MEDIA_TOKENS` a file or audio
    part (providers charge by size: these are rough; the answers' usage corrects the
    estimate as the run goes, and a budget run starts slowly until it has).

    >>> estimate_prompt_tokens({"messages": [{"role": "user", "content": "Hello there"}]})
    10
    >>> estimate_prompt_tokens({"prompt": "Hello there"}, count=lambda text: 2)
    2
    """
    if count is None:
        chars = _plain_chat_chars(body)
        if chars is not None:  # the common body, without the general walk (hot path)
            return -(-chars // 4) + TOKENS_PER_MESSAGE * len(body["messages"]) + REPLY_PRIMING
    walk = _walk(body)
    tokens = chars_tokens("".join(walk.pieces))
    if count is not None:
        with suppress(Exception):  # a broken counter: characters it is
            tokens = int(count("\n".join(walk.pieces)))
    priming = REPLY_PRIMING if walk.messages else 0
    return max(tokens, 0) + TOKENS_PER_MESSAGE * walk.messages + priming \
        + IMAGE_TOKENS * walk.images + IMAGE_TOKENS_HIGH * walk.images_high \
        + MEDIA_TOKENS * walk.media


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 10**9:
        return value
    return None


def output_tokens(body: Mapping[str, Any], default: int) -> int:
    """The output a request reserves: ``max_completion_tokens``, ``max_tokens`` or
    ``max_output_tokens`` (the first positive int), else ``default``; times ``n``.

    >>> output_tokens({"max_tokens": 100, "n": 3}, 512), output_tokens({}, 512)
    (300, 512)
    >>> output_tokens({"max_completion_tokens": True, "max_output_tokens": 64}, 512)
    64
    """
    if not isinstance(body, Mapping):
        return default
    try:
        limit = None
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            limit = _positive(body.get(key))
            if limit is not None:
                break
        n = _positive(body.get("n"))
    except Exception:
        return default
    return (default if limit is None else limit) * (n if n is not None and n > 1 else 1)


_BLOB_URLS = ("https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken",
              "az://openaipublic/encodings/{}.tiktoken")  # the second: tiktoken 0.1
_FILE_OF = {"p50k_edit": "p50k_base", "o200k_harmony": "o200k_base"}
_patch_lock = threading.Lock()


def _cache_dirs() -> list[str]:
    """Where tiktoken's ``read_file_cached`` looks: ``TIKTOKEN_CACHE_DIR``, else
    ``DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache`` (released versions) or the user's
    cache dir ``.../tiktoken`` (a proposed change). An empty variable disables the cache."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return [os.environ[var]] if os.environ[var] else []
    home = os.environ.get("LOCALAPPDATA" if os.name == "nt" else "XDG_CACHE_HOME") \
        or os.path.join(os.path.expanduser("~"), "AppData\\Local" if os.name == "nt" else ".cache")
    return [os.path.join(tempfile.gettempdir(), "data-gym-cache"),
            os.path.join(home, "tiktoken")]


def cached_encoding_file(encoding: str) -> str | None:
    """The path of ``encoding``'s file in tiktoken's cache, or None when it is not there
    (or is not one of OpenAI's public ``.tiktoken`` encodings).

    >>> cached_encoding_file("no_such_encoding") is None
    True
    """
    name = _FILE_OF.get(encoding, encoding)
    for directory in _cache_dirs():
        for url in _BLOB_URLS:
            path = os.path.join(directory, hashlib.sha1(url.format(name).encode()).hexdigest())
            if os.path.isfile(path):
                return path
    return None


@contextmanager
def _no_download(load: Any) -> Iterator[None]:
    """tiktoken's ``load.read_file`` refusing URLs: a cache miss (or a cached file failing
    its hash check) raises instead of downloading."""
    read_file = load.read_file

    def local_only(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise OSError(f"llmframe never downloads tiktoken files ({blobpath})")
        return read_file(blobpath)

    with _patch_lock:
        load.read_file = local_only
        try:
            yield
        finally:
            load.read_file = read_file


def tiktoken_counter(encoding: str = "o200k_base") -> Callable[[str], int] | None:
    """An exact token counter, or None unless tiktoken is installed and ``encoding``'s file
    is already in its cache. Never downloads (tiktoken would, unbounded, on first use).

    >>> tiktoken_counter("no_such_encoding") is None
    True
    """
    if cached_encoding_file(encoding) is None:
        return None
    try:
        import tiktoken
        import tiktoken.load as load

        if not callable(getattr(load, "read_file", None)):
            return None  # a tiktoken we cannot keep offline
        with _no_download(load):
            encode = tiktoken.get_encoding(encoding).encode
    except Exception:
        return None

    def count(text: str) -> int:
        return len(encode(text, disallowed_special=()))

    return count
