from collections import Counter

import pytest

from llmframe._balancer import SmoothWeightedRoundRobin


def test_shares_are_exact_over_a_period():
    rr = SmoothWeightedRoundRobin([1, 2, 3])
    counts = Counter(rr.pick() for _ in range(600))
    assert counts == {0: 100, 1: 200, 2: 300}


def test_spread_not_bursty():
    rr = SmoothWeightedRoundRobin([1, 1])
    assert [rr.pick() for _ in range(6)] == [0, 1, 0, 1, 0, 1]


def test_ineligible_endpoints_are_skipped():
    rr = SmoothWeightedRoundRobin([5, 1])
    picks = [rr.pick(lambda i: i != 0) for _ in range(10)]
    assert picks == [1] * 10
    assert rr.pick(lambda i: False) is None


def test_fractional_weights():
    rr = SmoothWeightedRoundRobin([0.5, 1.5])
    counts = Counter(rr.pick() for _ in range(400))
    assert counts == {0: 100, 1: 300}


@pytest.mark.parametrize("weights", [[], [0, 1], [-1]])
def test_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        SmoothWeightedRoundRobin(weights)
