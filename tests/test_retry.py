import email.utils

import pytest

from llmframe._retry import AttemptError, RetryPolicy, is_retryable_status, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "nan", "Retry-After": "9"}, 9.0),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "Fri, 99 Foo 2024 25:61:00 GMT"}, None),
        ({"Retry-After": email.utils.formatdate(NOW + 20, usegmt=True)}, 20.0),
        ({"Retry-After": email.utils.formatdate(NOW - 20, usegmt=True)}, 0.0),
    ],
)
def test_parse_retry_after(headers, expected):
    assert parse_retry_after(headers, now=NOW) == expected


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_retryable(status):
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 422])
def test_not_retryable(status):
    assert not is_retryable_status(status)


def err(**kw):
    kw.setdefault("retryable", True)
    return AttemptError("http_error", "boom", **kw)


def test_backoff_is_exponential_and_capped_without_jitter():
    policy = RetryPolicy.build(max_attempts=10, initial=0.5, maximum=8, jitter=0)
    assert [policy.next_wait(n, err(status=503)) for n in range(1, 8)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_jitter_only_shortens_the_wait():
    policy = RetryPolicy.build(max_attempts=10, initial=0.5, maximum=8, jitter=0.25)
    waits = [policy.next_wait(3, err(status=503)) for _ in range(200)]
    assert all(1.5 <= w <= 2.0 for w in waits)
    assert len(set(waits)) > 1


def test_gives_up_after_max_attempts_and_on_permanent_errors():
    policy = RetryPolicy.build(max_attempts=3, jitter=0)
    assert policy.next_wait(2, err(status=503)) is not None
    assert policy.next_wait(3, err(status=503)) is None
    assert policy.next_wait(1, err(status=400, retryable=False)) is None


def test_retry_after_wins_when_reasonable():
    policy = RetryPolicy.build(max_attempts=5, jitter=0, max_retry_after=60)
    assert policy.next_wait(1, err(status=429, retry_after=7)) == 7.0
    assert policy.next_wait(1, err(status=429, retry_after=0)) == 0.0
    # an absurd Retry-After falls back to the backoff rule
    assert policy.next_wait(1, err(status=429, retry_after=86400)) == 0.5
