"""The pacer and the GC hold as pure pieces, with a fake clock: no sleeping."""

import asyncio
import gc

import pytest

from llmframe._gc import gc_paused
from llmframe._pacer import Pacer


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("rate", [5, 100, 1000, 10_000])
def test_no_one_second_window_exceeds_the_rate(rate):
    clock = FakeClock()
    pacer = Pacer(rate, clock=clock, sleep=clock.sleep)
    times = []

    async def run():
        for _ in range(rate * 3):
            await pacer.acquire()
            times.append(clock.now)

    asyncio.run(run())
    # count sends in every window [t, t + 1) starting at a send
    j = 0
    densest = 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        densest = max(densest, i - j + 1)
    assert densest <= rate + pacer.burst
    assert times[-1] == pytest.approx((rate * 3 - 1) / rate, rel=0.02)  # and not slower
    assert all(s >= 0.001 for s in clock.slept)  # never a sub-millisecond spin


def test_bucket_is_small_and_starts_with_one_token():
    clock = FakeClock()
    pacer = Pacer(10_000, clock=clock)
    assert pacer.burst == 100
    assert pacer.try_acquire() and not pacer.try_acquire()
    clock.now = 10.0  # idle for a long time: at most one bucket's worth at once
    assert sum(pacer.try_acquire() for _ in range(1000)) == 100


def test_rejects_bad_rate():
    with pytest.raises(ValueError, match="rate"):
        Pacer(0)


def test_gc_hold_is_shared_and_restored():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
