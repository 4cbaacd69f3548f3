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


def waits(policy, errors, **kw):
    """The waits one row gets for a sequence of failures (None: gave up)."""
    state = policy.new_state()
    out = []
    for e in errors:
        d = policy.decide(state, e, **kw)
        out.append(d.wait)
        if d.wait is None:
            break
    return out


def test_backoff_is_exponential_and_capped_without_jitter():
    policy = RetryPolicy(max_attempts=10, initial=0.5, maximum=8, jitter=0)
    assert waits(policy, [err(status=503)] * 7) == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_jitter_only_shortens_the_wait():
    policy = RetryPolicy(max_attempts=10, initial=0.5, maximum=8, jitter=0.25)
    third = [waits(policy, [err(status=503)] * 3)[-1] for _ in range(200)]
    assert all(1.5 <= w <= 2.0 for w in third)
    assert len(set(third)) > 1


def test_gives_up_after_max_attempts_and_on_permanent_errors():
    policy = RetryPolicy(max_attempts=3, jitter=0)
    assert waits(policy, [err(status=503)] * 5) == [0.5, 1.0, None]
    assert waits(policy, [err(status=400, retryable=False)]) == [None]


def test_retry_after_wins_when_within_the_cap():
    policy = RetryPolicy(max_attempts=5, jitter=0, max_retry_after=60)
    assert waits(policy, [err(status=429, retry_after=7)]) == [7.0]
    assert waits(policy, [err(status=429, retry_after=0)]) == [0.5]  # "now": the backoff
    d = policy.decide(policy.new_state(), err(status=429, retry_after=7))
    assert (d.retry_after, d.out_for) == (7, None)


def test_a_retry_that_can_go_elsewhere_waits_the_backoff_not_the_retry_after():
    policy = RetryPolicy(max_attempts=5, jitter=0, max_retry_after=60)
    d = policy.decide(policy.new_state(), err(status=429, retry_after=30), elsewhere=True)
    assert d.wait == 0.5 and d.retry_after == 30


def test_retry_after_past_the_cap_puts_the_endpoint_out_once_in_one_place():
    """Defect 2: the cap applies once; past it the endpoint is out for what was asked,
    the row goes elsewhere, or ends at once with what the server asked."""
    policy = RetryPolicy(max_attempts=5, jitter=0, max_retry_after=60)
    elsewhere = policy.decide(policy.new_state(), err(status=429, retry_after=86400),
                              elsewhere=True)
    assert elsewhere.wait == 0.5 and elsewhere.out_for == 86400
    assert elsewhere.retry_after is None  # never a pause of the raw value
    alone = policy.decide(policy.new_state(), err(status=429, retry_after=86400))
    assert alone.wait is None and alone.out_for == 86400
    assert alone.reason == "server asked to retry after 86400 s, over the 60 s limit"


def test_the_row_state_is_tenacitys_own():
    policy = RetryPolicy(max_attempts=3, jitter=0)
    state = policy.new_state()
    policy.decide(state, err(status=503))
    assert state.attempt_number == 2 and state.retry_object is policy._retrying
