"""Rate-limit headers (OpenAI, Anthropic) and spent-quota errors, from real-world shapes."""

from __future__ import annotations

import math

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from llmframe._ratelimits import (
    RateLimits,
    parse_duration,
    parse_rate_limits,
    parse_rfc3339,
    quota_spent,
)

NOW = 1_795_946_400.0  # 2026-11-29T10:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1s", 1.0), ("6m0s", 360.0), ("12ms", 0.012), ("1m30.5s", 90.5), ("2h0m0s", 7200.0),
        ("0s", 0.0), ("500us", 0.0005), ("500µs", 0.0005), ("500μs", 0.0005), ("7ns", 7e-9),
        ("0.5", 0.5), ("3", 3.0), (" 2s ", 2.0), ("1h2m3.25s", 3723.25), (".5s", 0.5),
        ("1.s", 1.0), ("20.04466179s", 20.04466179),
        ("", None), ("s", None), ("1", 1.0), ("-1s", None), ("-0.5", None), ("inf", None),
        ("nan", None), ("1e400", None), ("1" * 400, None), ("1" * 400 + "s", None),
        ("1d", None), ("1 s", None), ("1s2", None), ("1.2.3s", None), ("soon", None),
        ("0x10", None), ("1_000", None), (None, None), (5, None),
    ],
)
def test_parse_duration(text, expected):
    got = parse_duration(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T10:00:30Z", NOW + 30),
        ("2026-11-29T10:00:30.250Z", NOW + 30.25),
        ("2026-11-29T10:00:30.123456789Z", NOW + 30.123456789),
        ("2026-11-29t10:00:30z", NOW + 30),
        ("2026-11-29 10:00:30", NOW + 30),
        ("2026-11-29T11:00:30+01:00", NOW + 30),
        ("2026-11-29T05:30:30-0430", NOW + 30),
        ("2024-02-29T00:00:00Z", 1709164800.0),
        ("2023-02-29T00:00:00Z", None), ("2026-13-01T00:00:00Z", None),
        ("2026-11-29T24:00:00Z", None), ("2026-11-29", None), ("10:00:30", None),
        ("Sun, 29 Nov 2026 10:00:30 GMT", None), ("", None), (None, None),
    ],
)
def test_parse_rfc3339(text, expected):
    got = parse_rfc3339(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


OPENAI = {
    "x-ratelimit-limit-requests": "10000", "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-requests": "9999", "x-ratelimit-remaining-tokens": "1999000",
    "x-ratelimit-reset-requests": "6ms", "x-ratelimit-reset-tokens": "1m30.5s",
}
OPENAI_LIMITS = RateLimits(10000, 9999, 0.006, 2000000, 1999000, 90.5)
PLAIN = {"content-type": "application/json", "content-length": "512", "server": "uvicorn",
         "date": "Sun, 29 Nov 2026 10:00:00 GMT", "connection": "keep-alive",
         "x-request-id": "req_123"}


def test_openai_headers_in_every_case_style():
    mixed = {k.title(): v for k, v in OPENAI.items()}
    proxy = CIMultiDictProxy(CIMultiDict({**PLAIN, **mixed}))
    for headers in (OPENAI, mixed, {**PLAIN, **OPENAI}, proxy):
        assert parse_rate_limits(headers, NOW) == OPENAI_LIMITS


@pytest.mark.parametrize(
    "headers",
    [{}, PLAIN, CIMultiDictProxy(CIMultiDict(PLAIN)), {"retry-after": "3"},
     {"x-ratelimit-foo": "1"}, {"x-ratelimit-limit-requests": "lots"},
     {"x-ratelimit-remaining-tokens": "-5", "x-ratelimit-reset-tokens": "later"}],
)
def test_no_usable_rate_limit_headers_is_none(headers):
    assert parse_rate_limits(headers, NOW) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1000", 1000), ("1000.0", 1000), (" 7 ", 7), ("0", 0), ("1e3", 1000), ("1000.5", None),
     ("-1", None), ("nan", None), ("inf", None), ("", None), ("ten", None)],
)
def test_counts_in_headers(value, expected):
    limits = parse_rate_limits({"x-ratelimit-remaining-tokens": value,
                                "x-ratelimit-reset-tokens": "1s"}, NOW)
    assert limits is not None and limits.remaining_tokens == expected


ANTHROPIC = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2026-11-29T10:00:01Z",
    "anthropic-ratelimit-tokens-limit": "90000",
    "anthropic-ratelimit-tokens-remaining": "89000.0",
    "anthropic-ratelimit-tokens-reset": "2026-11-29T10:00:30.500Z",
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "anthropic-ratelimit-input-tokens-remaining": "100",
    "anthropic-ratelimit-input-tokens-reset": "2026-11-29T10:00:59Z",
}


def test_anthropic_headers():
    got = parse_rate_limits({k.title(): v for k, v in ANTHROPIC.items()}, NOW)
    assert got == RateLimits(50, 49, 1.0, 90000, 89000, 30.5)  # tokens-* wins over input-*


def test_anthropic_without_tokens_takes_the_most_restrictive_family_but_no_limit():
    """Separate input and output limits are not a limit on their sum: nothing is learned
    from them, but the remaining/reset of the tighter one still holds the endpoint."""
    headers = {k: v for k, v in ANTHROPIC.items() if "-ratelimit-tokens-" not in k}
    headers |= {"anthropic-ratelimit-output-tokens-limit": "16000",
                "anthropic-ratelimit-output-tokens-remaining": "15000",
                "anthropic-ratelimit-output-tokens-reset": "2026-11-29T10:00:02Z"}
    got = parse_rate_limits(headers, NOW)
    assert (got.limit_tokens, got.remaining_tokens, got.reset_tokens) == (None, 100, 59.0)
    headers["anthropic-ratelimit-input-tokens-remaining"] = "79000"
    got = parse_rate_limits(headers, NOW)
    assert (got.limit_tokens, got.remaining_tokens, got.reset_tokens) == (None, 15000, 2.0)
    only_output = {k: v for k, v in headers.items() if "input" not in k}
    assert parse_rate_limits(only_output, NOW).limit_tokens is None


def test_anthropic_resets_are_never_negative_and_default_to_now():
    past = {"anthropic-ratelimit-requests-reset": "2020-01-01T00:00:00Z"}
    assert parse_rate_limits(past, NOW).reset_requests == 0.0
    assert parse_rate_limits(past).reset_requests == 0.0
    soon = {"anthropic-ratelimit-tokens-reset": "2999-01-01T00:00:00Z"}
    assert parse_rate_limits(soon).reset_tokens > 0
    junk = {"anthropic-ratelimit-tokens-reset": "tomorrow", "anthropic-ratelimit-tokens-limit": "5"}
    assert parse_rate_limits(junk, NOW) == RateLimits(limit_tokens=5)


def test_openai_values_win_over_anthropic_ones():
    headers = {"x-ratelimit-limit-tokens": "10", "anthropic-ratelimit-tokens-limit": "20",
               "anthropic-ratelimit-requests-limit": "30"}
    assert parse_rate_limits(headers, NOW) == RateLimits(limit_requests=30, limit_tokens=10)


@pytest.mark.parametrize("headers", [None, 42, "x-ratelimit-limit-tokens", [("a", "b")],
                                     {1: "2"}, {b"x-ratelimit-limit-tokens": b"5"},
                                     {"x-ratelimit-limit-tokens": None},
                                     {"x-ratelimit-limit-tokens": 5}, {"": "x"}])
def test_hostile_headers_never_raise(headers):
    assert parse_rate_limits(headers, NOW) is None


def test_the_mock_providers_own_formats_round_trip():
    from llmframe.testing._provider import go_duration, rfc3339

    for seconds in (0, 0.0121, 1, 59.999, 360, 90.5, 3600.25, 86400 * 3 + 0.001):
        assert parse_duration(go_duration(seconds)) == pytest.approx(
            math.ceil(seconds * 1000 - 1e-6) / 1000)
    for unix in (NOW, NOW + 0.25, 1e9 + 0.999):
        assert parse_rfc3339(rfc3339(unix)) == pytest.approx(unix, abs=1e-3)


SPENT = [
    (429, '{\n    "error": {\n        "message": "You exceeded your current quota, please check '
          'your plan and billing details. For more information on this error, read the docs: '
          'https://platform.openai.com/docs/guides/error-codes/api-errors.",\n        "type": '
          '"insufficient_quota",\n        "param": null,\n        "code": "insufficient_quota"'
          '\n    }\n}'),
    (429, '{\n    "error": {\n        "message": "You exceeded your current quota, please check '
          'your plan and billing details. For more information on this error, read the docs: '
          'https://platform.openai.com/docs/guides/error-codes/api-errors.",\n        "type": '
          '"insuff'),  # cut at 300 characters, before the type
    (429, b'{"error": {"message": "x", "type": "insufficient_quota", "code": null}}'),
    (None, '{"error": {"code": "insufficient_quota"}}'),
    (400, '{"error": {"message": "Billing hard limit has been reached", "type": '
          '"invalid_request_error", "param": null, "code": "billing_hard_limit_reached"}}'),
    (429, '{"error": {"message": "Your account is not active, please check your billing '
          'details on our website.", "type": "billing_not_active", "param": null}}'),
    (400, '{"type":"error","error":{"type":"invalid_request_error","message":"Your credit '
          'balance is too low to access the Anthropic API. Please go to Plans & Billing to '
          'upgrade or purchase credits."}}'),
    (402, '{"error":{"message":"Insufficient credits. Add more using '
          'https://openrouter.ai/settings/credits","code":402}}'),
    (403, '{"error": {"code": "insufficient_credits"}}'),
    (402, '{"error":{"message":"Insufficient Balance","type":"unknown_error"}}'),
    (402, "This request requires more credits, or fewer max_tokens."),
    (402, None), (402, ""), (402, b"\xff\xfe"),
    (429, b"INSUFFICIENT_QUOTA"),
    (403, '{"error": {"code": "403", "message": "Out of call volume quota for OpenAI API. '
          'Quota will be replenished in 10.23:59:59."}}'),  # Azure: spent for the period
]
NOT_SPENT = [
    (429, '{"error":{"code":"429","message": "Requests to the ChatCompletions_Create Operation '
          'under Azure OpenAI API version 2024-02-15-preview have exceeded token rate limit of '
          'your current OpenAI S0 pricing tier. Please retry after 6 seconds. Please go here: '
          'https://aka.ms/oai/quotaincrease if you would like to further increase the default '
          'rate limit."}}'),
    (429, '{"error": {"code": 429, "message": "Quota exceeded for quota metric \'Generate '
          'Content API requests per minute\' and limit \'GenerateContent request limit per '
          'minute for a region\' of service \'generativelanguage.googleapis.com\' for consumer '
          '\'project_number:1234\'.", "status": "RESOURCE_EXHAUSTED"}}'),
    (429, '{"error": {"code": 429, "message": "Quota exceeded for aiplatform.googleapis.com/'
          'generate_content_requests_per_minute_per_project_per_base_model with base model: '
          'gemini-1.5-pro.", "status": "RESOURCE_EXHAUSTED"}}'),
    # Gemini's per-minute limit opens with the very words of OpenAI's spent quota
    (429, '{\n  "error": {\n    "code": 429,\n    "message": "You exceeded your current quota, '
          'please check your plan and billing details. For more information on this error, '
          'head to: https://ai.google.dev/gemini-api/docs/rate-limits.\\n* Quota exceeded for '
          'metric: generativelanguage.googleapis.com/generate_content_free_tier_requests'),
    (429, '[{"error": {"code": 429, "message": "You exceeded your current quota. Go to https:/'
          '/aistudio.google.com/apikey to upgrade your quota tier", "status": "RESOURCE_EXHAU'),
    (429, '{"error": {"message": "Rate limit reached for gpt-4 in organization org-abc on '
          'tokens per min (TPM): Limit 10000, Used 9500, Requested 800. Please try again in '
          '1.8s. Visit https://platform.openai.com/account/rate-limits to learn more.", "type": '
          '"tokens", "param": null, "code": "rate_limit_exceeded"}}'),
    (429, '{"type":"error","error":{"type":"rate_limit_error","message":"This request would '
          'exceed the rate limit for your organization of 40,000 input tokens per minute."}}'),
    (429, '{"error":{"message":"Rate limit reached for model `llama3-70b-8192` on tokens per '
          'minute (TPM): Limit 6000. Please try again in 5s.","code":"rate_limit_exceeded"}}'),
    (529, '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'),
    (429, '{"message":"Requests rate limit exceeded"}'),
    (503, "upstream connect error or disconnect/reset before headers"),
    (200, '{"choices": [{"message": {"content": "insufficient_quota means ..."}}]}'),
    (429, None), (429, ""), (429, b""), (None, None), (401, "Incorrect API key provided"),
    (429, 12345), (429, ["insufficient_quota"]),
]


@pytest.mark.parametrize(("status", "body"), SPENT)
def test_spent_quota(status, body):
    assert quota_spent(status, body) is True


@pytest.mark.parametrize(("status", "body"), NOT_SPENT)
def test_rate_limits_and_other_errors_are_not_a_spent_quota(status, body):
    assert quota_spent(status, body) is False


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

header_names = st.sampled_from(sorted(OPENAI) + sorted(ANTHROPIC) + [
    "anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset",
    "X-RateLimit-Reset-Tokens", "content-type"]) | st.text(max_size=30)
header_values = st.text(max_size=40) | st.sampled_from(
    ["1s", "6m0s", "1e308", "-0", "1000.0", "2026-11-29T10:00:30Z", "9999-12-31T23:59:60Z",
     "0000-01-01T00:00:00Z", "nan", "٣"])


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(header_names, header_values, max_size=12))
def test_parse_rate_limits_never_raises(headers):
    got = parse_rate_limits(headers, NOW)
    assert got is None or isinstance(got, RateLimits)
    for value in ([] if got is None else [got.reset_requests, got.reset_tokens]):
        assert value is None or (math.isfinite(value) and value >= 0)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), st.none(), st.integers(), st.floats()))
def test_parse_duration_never_raises(text):
    got = parse_duration(text)
    assert got is None or (math.isfinite(got) and got >= 0)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.integers(-1, 999)), st.one_of(st.none(), st.text(), st.binary()))
def test_quota_spent_never_raises(status, body):
    assert quota_spent(status, body) in (True, False)
