"""An endpoint following the provider's rate-limit headers (made-up times, no sockets)."""

from __future__ import annotations

import asyncio

from llmframe import RunConfig
from llmframe._pool import Target
from llmframe._ratelimits import RateLimits


def _target(**endpoint) -> Target:
    config = RunConfig([{"url": "http://127.0.0.1:9/v1", **endpoint}])
    return Target(0, config.endpoints[0], config)


def test_remaining_zero_holds_until_the_reset():
    t = _target()
    t.observe(RateLimits(remaining_requests=0, reset_requests=2.5), 0, now=100.0)
    assert t.hold_until == 102.5 and not t.eligible(101.0) and t.eligible(102.6)


def test_a_partly_drained_token_bucket_waits_only_for_what_is_needed():
    """OpenAI's reset is when the bucket is full again: 60 s for a drained minute bucket;
    a request needing 600 of the 6,000 waits for about 600 tokens, not the whole minute."""
    t = _target()
    t.observe(RateLimits(limit_tokens=6000, remaining_tokens=100, reset_tokens=59.0), 700,
              now=0.0)
    assert 5.0 < t.hold_until < 7.0
    t = _target()  # no limit stated: remaining tokens but not enough, reset is all we know
    t.observe(RateLimits(remaining_tokens=100, reset_tokens=4.0), 700, now=0.0)
    assert t.hold_until == 4.0
    t = _target()  # enough left: no hold
    t.observe(RateLimits(limit_tokens=6000, remaining_tokens=1000, reset_tokens=50.0), 700,
              now=0.0)
    assert t.hold_until == 0.0


def test_a_reset_past_the_cap_puts_the_endpoint_out_with_a_reason():
    t = _target()
    t.observe(RateLimits(remaining_requests=0, reset_requests=86_340.0), 0, now=0.0)
    assert t.health.out(1000.0) and t.hold_until == 0.0
    assert "no requests left" in t.stats.note


def test_limits_not_set_are_learned_and_shared_between_workers():
    t = _target()
    t.share = 0.5
    t.observe(RateLimits(limit_requests=1200, limit_tokens=60_000), 0, now=0.0)
    assert t.limiter.max_rate / t.limiter.time_period == 10.0  # 1200/min, half of it
    assert t.tokens.rate == 500.0
    assert t.stats.note == "learned rpm 1,200, tpm 60,000 from its headers"
    mine = _target(rpm=60, tpm=1000)  # set by the user: never replaced by headers
    mine.observe(RateLimits(limit_requests=1200, limit_tokens=60_000), 0, now=0.0)
    assert mine.tokens.rate == 1000 / 60 and mine.stats.note is None


def test_a_learned_limit_follows_the_provider_when_it_changes():
    t = _target()
    t.observe(RateLimits(limit_tokens=60_000), 0, now=0.0)
    t.observe(RateLimits(limit_tokens=30_000), 0, now=1.0)
    assert t.tokens.rate == 500.0
    assert t.stats.note == "learned tpm 30,000 from its headers"


def test_a_new_share_scales_the_endpoints_limits_without_a_burst():
    # a Ray actor's part of the endpoint's limits moves with the work (_shares)
    async def main():
        t = _target(rps=100, tpm=6000, max_concurrency=8)
        t.set_share(0.5)
        # a limiter lets its rate + 1 through in some second: each part one a second less
        assert round(t.limiter.max_rate / t.limiter.time_period, 9) == 49.0
        assert t.tokens.rate == 50.0 and t.cap == 4
        assert not t.limiter.has_capacity()  # the new limiter starts used: no extra burst
        await asyncio.sleep(0.03)
        assert t.limiter.has_capacity()  # and refills at its rate
        t.set_share(0.0)  # no rows: nothing in flight here, the rates left as they were
        assert t.cap == 0 and t.tokens.rate == 50.0
        learned = _target()
        learned.observe(RateLimits(limit_requests=1200), 0, now=0.0)
        learned.set_share(0.25)
        assert round(learned.limiter.max_rate / learned.limiter.time_period, 9) == 4.0

    asyncio.run(main())
