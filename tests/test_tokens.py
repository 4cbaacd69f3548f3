"""Token estimates of request bodies, output reservations, tiktoken offline, answer usage."""

from __future__ import annotations

import hashlib
import math
import sys
import time
import types

import pytest

from llmframe import _tokens
from llmframe._tokens import (
    IMAGE_TOKENS,
    IMAGE_TOKENS_HIGH,
    MEDIA_TOKENS,
    cached_encoding_file,
    chars_tokens,
    estimate_prompt_tokens,
    output_tokens,
    request_text,
    tiktoken_counter,
)
from llmframe._usage import Usage, parse_usage

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "hi"),
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "input_text", "text": "b"},
            {"type": "output_text", "text": "c"}, IMAGE, AUDIO, {"type": "input_image",
                                                                  "image_url": "x"},
            {"type": "text", "text": 5}, {"type": "refusal"}, "d", None, 7]}]}, "a\nb\nc\nd"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
            {"function": {"name": "g", "arguments": {"y": [1, "é"]}}},
            {"function": {"name": 3, "arguments": None}}, "junk", {"function": "junk"}]}]},
         'f\n{"x":1}\ng\n{"y":[1,"é"]}\nnull'),
        ({"messages": [{"role": "tool", "tool_call_id": "1", "content": "42 degrees"},
                       {"role": "user", "name": "ann", "content": "thanks"}]},
         "42 degrees\nann\nthanks"),
        ({"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]},
         "f\n{}"),
        ({"prompt": "once upon"}, "once upon"),
        ({"prompt": ["a", "b", 3, None]}, "a\nb"),
        ({"prompt": [1, 2, 3]}, ""),  # token ids: no text
        ({"system": "be brief", "messages": [{"role": "user", "content": "q"}]}, "be brief\nq"),
        ({"system": [{"type": "text", "text": "s1", "cache_control": {"type": "ephemeral"}},
                     {"type": "text", "text": "s2"}]}, "s1\ns2"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "text", "text": "r"}, {"type": "image", "source": {}}]},
            {"type": "tool_result", "content": "plain"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t", "name": "look", "input": {"q": "x"}}]}]},
         'r\nplain\nlook\n{"q":"x"}'),
        ({"instructions": "be kind", "input": "hello"}, "be kind\nhello"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}]},
                    {"type": "function_call", "name": "f", "arguments": '{"a":1}'},
                    {"type": "function_call_output", "call_id": "c", "output": "done"}]},
         'x\nf\n{"a":1}\ndone'),
        ({"input": ["emb 1", "emb 2"]}, "emb 1\nemb 2"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
         '[{"type":"function","function":{"name":"f","parameters":{}}}]'),
        ({"tools": []}, ""),
        ({"messages": [{"role": "user", "content": 42}, {"role": "user", "content": 1.5},
                       {"role": "user", "content": True}, {"role": "user", "content": None},
                       {"role": "user", "content": {"text": "one part"}},
                       {"role": "user", "content": {"no": "text"}},
                       {"role": "user", "content": [[["deep"]]]}]}, "42\n1.5\none part"),
        ({"messages": "not a list"}, ""), ({"messages": [None, 1, "str", []]}, ""),
        ({}, ""), (None, ""), ([], ""), ("text", ""), (42, ""),
    ],
)
def test_request_text(body, expected):
    assert request_text(body) == expected


def test_odd_json_values_are_serialised_or_dropped():
    circular: list = []
    circular.append(circular)
    body = {"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": {1: 2, "big": 10**30, "t": (1, 2)}}},
        {"function": {"name": "g", "arguments": circular}}]}]}
    assert request_text(body) == 'f\n{"1":2,"big":1000000000000000000000000000000,"t":[1,2]}\ng\n'
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert request_text({"tools": deep}) == ""
    assert request_text({"tools": [{"f": object}]}).startswith('[{"f":"<class')


def test_estimate_counts_text_messages_priming_and_images():
    assert estimate_prompt_tokens({}) == 0
    assert estimate_prompt_tokens({"prompt": "abcdefgh"}) == 2  # no chat overheads
    one = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert estimate_prompt_tokens(one) == 100 + 4 + 3
    two = {"messages": [{"role": "system", "content": "abcd"},
                        {"role": "user", "content": [{"type": "text", "text": "abcd"},
                                                     IMAGE, IMAGE, AUDIO]}]}
    # images without detail "low" may be large: counted as a 1024 px high-detail image
    assert estimate_prompt_tokens(two) == (chars_tokens("abcdabcd") + 8 + 3
                                           + 2 * IMAGE_TOKENS_HIGH + MEDIA_TOKENS)
    low = {"type": "image_url", "image_url": {"url": "x", "detail": "low"}}
    three = {"messages": [{"role": "user", "content": [low, low]}]}
    assert estimate_prompt_tokens(three) == 4 + 3 + 2 * IMAGE_TOKENS
    # non-ASCII text costs far more tokens a character than English
    assert estimate_prompt_tokens({"prompt": "数据处理" * 100}) == 500
    three = {"messages": [{"role": "user", "content": "abcd"}] * 3}  # as _meter's fast path
    assert estimate_prompt_tokens(three) == 3 + 12 + 3
    assert estimate_prompt_tokens(two, count=lambda text: 2) == (2 + 8 + 3 + 2 * IMAGE_TOKENS_HIGH
                                                                 + MEDIA_TOKENS)


@pytest.mark.parametrize("count", [lambda t: 1 / 0, lambda t: "many", lambda t: None,
                                   lambda t: -50, lambda: 3])
def test_estimate_survives_a_broken_counter(count):
    body = {"prompt": "abcdefgh"}
    assert estimate_prompt_tokens(body, count=count) in (0, 2)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, 512), ({"max_tokens": 100}, 100), ({"max_completion_tokens": 50, "max_tokens": 9}, 50),
        ({"max_output_tokens": 70}, 70), ({"max_tokens": 0, "max_output_tokens": 70}, 70),
        ({"max_tokens": -5}, 512), ({"max_tokens": True}, 512), ({"max_tokens": 10.0}, 512),
        ({"max_tokens": "100"}, 512), ({"max_tokens": None, "max_completion_tokens": 8}, 8),
        ({"max_tokens": 100, "n": 3}, 300), ({"n": 2}, 1024), ({"max_tokens": 10, "n": 1}, 10),
        ({"max_tokens": 10, "n": 0}, 10), ({"max_tokens": 10, "n": True}, 10),
        ({"max_tokens": 10, "n": 2.0}, 10), ({"max_tokens": 10, "n": "4"}, 10),
        (None, 512), ([], 512), ("max_tokens", 512),
    ],
)
def test_output_tokens(body, expected):
    assert output_tokens(body, 512) == expected


# --- tiktoken, offline only -------------------------------------------------------------

URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def _cache_file(directory, name="o200k_base", url=URL):
    path = directory / hashlib.sha1(url.format(name).encode()).hexdigest()
    path.write_bytes(b"not really a bpe file\n")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_cached_encoding_file_follows_tiktokens_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "gym"))
    (tmp_path / "gym").mkdir()
    assert cached_encoding_file("o200k_base") is None
    path = _cache_file(tmp_path / "gym")
    assert cached_encoding_file("o200k_base") == str(path)
    assert cached_encoding_file("o200k_harmony") == str(path)  # the same file
    assert cached_encoding_file("cl100k_base") is None
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken: caching disabled
    assert cached_encoding_file("o200k_base") is None
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    monkeypatch.delenv("DATA_GYM_CACHE_DIR")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # tiktoken's default
    (tmp_path / "data-gym-cache").mkdir()
    assert cached_encoding_file("cl100k_base") is None
    path = _cache_file(tmp_path / "data-gym-cache", "cl100k_base")
    assert cached_encoding_file("cl100k_base") == str(path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # a proposed new default
    (tmp_path / "xdg" / "tiktoken").mkdir(parents=True)
    path = _cache_file(tmp_path / "xdg" / "tiktoken", "p50k_base", "az://openaipublic/"
                       "encodings/{}.tiktoken")  # tiktoken 0.1's URL
    assert cached_encoding_file("p50k_edit") == str(path)


def test_real_tiktoken_with_an_empty_cache_is_none_at_once(cache):
    pytest.importorskip("tiktoken")
    started = time.perf_counter()
    assert tiktoken_counter() is None
    assert time.perf_counter() - started < 1.0


def test_real_tiktoken_never_downloads_past_a_bad_cached_file(cache, monkeypatch):
    """A cached file failing tiktoken's hash check would be fetched again: refused."""
    pytest.importorskip("tiktoken")
    import tiktoken.load

    def no_network(*args, **kwargs):
        raise AssertionError("tried the network")

    monkeypatch.setattr("requests.get", no_network, raising=False)
    original = tiktoken.load.read_file
    _cache_file(cache)
    assert tiktoken_counter() is None
    assert tiktoken.load.read_file is original


def test_no_tiktoken_is_none(cache, monkeypatch):
    _cache_file(cache)
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    assert tiktoken_counter() is None


def _fake_tiktoken(monkeypatch, get_encoding):
    """A stand-in tiktoken package: ``get_encoding`` and ``load.read_file``."""
    fake = types.ModuleType("tiktoken")
    load = types.ModuleType("tiktoken.load")
    fetched: list[str] = []

    def read_file(blobpath):
        fetched.append(blobpath)
        return b""

    load.read_file = read_file
    fake.load = load
    fake.get_encoding = get_encoding
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    monkeypatch.setitem(sys.modules, "tiktoken.load", load)
    return load, fetched


class _Encoding:
    def encode(self, text, disallowed_special=("all",)):
        assert disallowed_special == ()  # "<|endoftext|>" in a row is text, not an error
        return text.split()


def test_a_cached_encoding_counts_exactly(cache, monkeypatch):
    _cache_file(cache)
    _, fetched = _fake_tiktoken(monkeypatch, lambda name: _Encoding())
    count = tiktoken_counter()
    assert count is not None and count("three short <|endoftext|>") == 3
    assert estimate_prompt_tokens({"prompt": "a b c d e"}, count) == 5
    assert fetched == []


def test_a_download_is_refused_and_read_file_restored(cache, monkeypatch):
    _cache_file(cache)
    holder: list = []

    def get_encoding(name):
        local = holder[0].read_file("/some/local/file")  # local reads still work
        assert local == b""
        return holder[0].read_file(URL.format(name))  # would download: raises

    load, fetched = _fake_tiktoken(monkeypatch, get_encoding)
    holder.append(load)
    original = load.read_file
    assert tiktoken_counter() is None
    assert fetched == ["/some/local/file"]
    assert load.read_file is original


def test_a_tiktoken_without_read_file_is_not_trusted(cache, monkeypatch):
    _cache_file(cache)
    load, _ = _fake_tiktoken(monkeypatch, lambda name: _Encoding())
    del load.read_file
    assert tiktoken_counter() is None


# --- usage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
          "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
          "completion_tokens_details": {"reasoning_tokens": 2}}, Usage(12, 3, 8, 2)),
        ({"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": None,
          "completion_tokens_details": None}, Usage(12, 3)),
        ({"input_tokens": 30, "output_tokens": 9, "total_tokens": 39,
          "input_tokens_details": {"cached_tokens": 20},
          "output_tokens_details": {"reasoning_tokens": 4}}, Usage(30, 9, 20, 4)),
        ({"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 100,
          "cache_creation_input_tokens": 20}, Usage(125, 7, 100)),
        ({"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": None,
          "cache_creation_input_tokens": 0}, Usage(5, 7, None)),
        ({"input_tokens": 5, "cache_read_input_tokens": 0}, Usage(5, None, 0)),
        ({"output_tokens": 15}, Usage(completion_tokens=15)),  # Anthropic message_delta
        ({"prompt_tokens": 12.0, "completion_tokens": 3.5}, Usage(12)),
        ({"prompt_tokens": True, "completion_tokens": "3", "input_tokens": 4}, Usage(4)),
        ({"prompt_tokens": -1, "completion_tokens": float("nan")}, None),
        ({"prompt_tokens": float("inf"), "completion_tokens": [3]}, None),
        ({"prompt_tokens": 0, "completion_tokens": 0}, Usage(0, 0)),
        ({"prompt_tokens_details": {"cached_tokens": "8"}}, None),
        ({"prompt_tokens_details": "x", "completion_tokens_details": [1]}, None),
        ({}, None), (None, None), ("usage", None), ([1, 2], None), (42, None),
    ],
)
def test_parse_usage(usage, expected):
    assert parse_usage({"usage": usage}) == expected


@pytest.mark.parametrize("doc", [None, [], "usage", 3, {"no": "usage"}, {"usage": None}])
def test_no_usage(doc):
    assert parse_usage(doc) is None


def test_usage_total():
    assert Usage(3, 4).total == 7
    assert Usage(prompt_tokens=3).total == 3
    assert Usage(completion_tokens=4).total == 4
    assert Usage().total is None


# --- hostile bodies ---------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = ["messages", "content", "role", "name", "tool_calls", "function", "arguments", "type",
        "text", "prompt", "system", "tools", "input", "instructions", "output", "image_url",
        "tool_result", "tool_use", "function_call", "max_tokens", "max_completion_tokens",
        "max_output_tokens", "n", "usage", "prompt_tokens", "completion_tokens",
        "input_tokens", "output_tokens", "cache_read_input_tokens",
        "cache_creation_input_tokens", "prompt_tokens_details", "cached_tokens"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
           | st.sampled_from(["text", "image_url", "tool_use", "tool_result", "input_text",
                              "function_call"]))
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5),
    max_leaves=30,
)
bodies = st.dictionaries(st.sampled_from(KEYS), json_like, max_size=6) | json_like


@settings(max_examples=500, deadline=None)
@given(bodies)
def test_hostile_bodies_never_raise(body):
    assert isinstance(request_text(body), str)
    tokens = estimate_prompt_tokens(body)
    assert isinstance(tokens, int) and tokens >= 0
    assert isinstance(output_tokens(body, 16), int) and output_tokens(body, 16) >= 1
    usage = parse_usage(body)
    assert usage is None or isinstance(usage, Usage)
    for value in ([] if usage is None else [usage.prompt_tokens, usage.completion_tokens,
                                            usage.cached_tokens, usage.reasoning_tokens]):
        assert value is None or (type(value) is int and value >= 0)
    usage = parse_usage({"usage": body})
    assert usage is None or usage.total is None or not math.isnan(usage.total)


def test_module_constants_match_the_documented_formula():
    assert (_tokens.TOKENS_PER_MESSAGE, _tokens.REPLY_PRIMING, IMAGE_TOKENS) == (4, 3, 85)
