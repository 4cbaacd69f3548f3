"""The endpoint pool: one :class:`Target` per endpoint (transport, limits, health, in-flight
count, stats) and the choice of where the next request goes.

Choice = smooth weighted round-robin over the endpoints that can take a request now: below
their in-flight window (``_health``), with a token of their own ``rps`` (aiolimiter's
``has_capacity``, then ``acquire`` once chosen, which then never waits). A retry prefers an
endpoint other than the one that just failed. AIMD windows and pauses steer: when no other
endpoint has room, the full windows, then the paused endpoints are used (a refused row
waits its own Retry-After). Endpoints cooling down (broken) are skipped while another can
serve; when every one is, they are used anyway (the rows' own retry policy decides). An
endpoint that is *out* (told to wait past ``max_retry_after``) is never used; when every
endpoint is out, :meth:`EndpointPool.out_reason` says why.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter

from ._balancer import SmoothWeightedRoundRobin
from ._config import Endpoint, RunConfig
from ._endpoint import proxy_of
from ._health import Health
from ._pacer import TokenBucket
from ._ratelimits import RateLimits
from ._results import EndpointStats
from ._retry import over_limit
from ._shares import part, part_rate
from ._structured import Formats
from ._transport import Transport, open_transport

__all__ = ["EndpointPool", "Target"]


def _endpoint_limiter(rps: float, *, spent: bool = False) -> AsyncLimiter:
    """A smooth per-endpoint limiter: a bucket of 1/100 s worth of requests (at least 1),
    refilled continuously, so no burst of a whole second's budget ever goes out at once.
    ``spent``: it replaces one mid-run (a new share), so it starts with its bucket used
    (a fresh one would give a bucket's worth more at every change)."""
    bucket = max(1.0, rps / 100)
    limiter = AsyncLimiter(bucket, bucket / rps)
    if spent:  # aiolimiter's leaky bucket: its level and when it last leaked
        limiter._level = bucket
        limiter._last_check = asyncio.get_running_loop().time()
    return limiter


class Target:
    """Run-time state of one endpoint (loop-bound: built inside the run)."""

    __slots__ = (
        "cap",
        "endpoint",
        "formats",
        "headers",
        "health",
        "hold_until",
        "in_flight",
        "index",
        "key",
        "learn_rate",
        "learn_tokens",
        "learned_rpm",
        "learned_tpm",
        "limiter",
        "max_wait",
        "model",
        "name",
        "share",
        "stats",
        "timeout",
        "tokens",
        "transport",
        "url",
    )

    def __init__(self, index: int, endpoint: Endpoint, config: RunConfig) -> None:
        self.index = index
        self.endpoint = endpoint
        self.name = endpoint.name
        self.url = endpoint.request_url(config.api)
        self.model = endpoint.model or config.model
        headers = {"Content-Type": "application/json", **(endpoint.headers or {})}
        self.key = endpoint.api_key()
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        self.headers = headers
        self.timeout = endpoint.timeout or config.timeout
        rate = endpoint.request_rate
        self.limiter = _endpoint_limiter(rate) if rate else None
        self.tokens = TokenBucket(endpoint.tpm / 60) if endpoint.tpm else None
        self.learn_rate, self.learn_tokens = rate is None, self.tokens is None
        self.learned_rpm = self.learned_tpm = 0
        self.hold_until = 0.0  # the provider said none is left until then (headers)
        self.share = 1.0  # of the limits learned from headers (1/N with --workers N)
        self.max_wait = config.max_retry_after
        max_in_flight = min(endpoint.max_concurrency or 1 << 30, config.concurrency)
        self.health = Health(max_in_flight)
        self.in_flight = 0
        self.cap = 1 << 30  # in flight at most (this process's part of max_concurrency)
        self.stats = EndpointStats(self.name, endpoint.weight, priced=endpoint.priced)
        # the response_format form it is asked in (structured output only)
        self.formats = Formats(config.schema) if config.schema is not None else None
        self.transport: Transport

    def eligible(self, now: float, level: int = 0) -> bool:
        if (self.in_flight >= self.health.allowed(now, level) or now < self.hold_until
                or self.in_flight >= self.cap):
            return False
        if self.tokens is not None and not self.tokens.ready(now):
            return False
        return self.limiter is None or self.limiter.has_capacity()

    def observe(self, limits: RateLimits, need: int, now: float) -> None:
        """Follow the provider's rate-limit headers: learn the limits not set (rpm, tpm;
        ``share``: this process's part of them), and hold the endpoint when none is left:
        until the reset when ``remaining`` is 0; when fewer tokens remain than a request
        needs, for the time the refill takes (OpenAI's reset is when the bucket is full
        again). A reset past ``max_retry_after`` (a daily limit) puts the endpoint out for
        that long."""
        rpm, tpm = limits.limit_requests, limits.limit_tokens
        if self.learn_rate and rpm and rpm != self.learned_rpm:  # learned, or changed
            self.learned_rpm = rpm
            self.limiter = _endpoint_limiter(rpm * self.share / 60)
            self._learned(f"rpm {rpm:,}")
        if self.learn_tokens and tpm and tpm != self.learned_tpm:
            self.learned_tpm = tpm
            self.tokens = TokenBucket(tpm * self.share / 60)
            self._learned(f"tpm {tpm:,}")
        wait = 0.0
        if limits.remaining_requests == 0 and limits.reset_requests:
            wait = limits.reset_requests
        remaining, reset = limits.remaining_tokens, limits.reset_tokens
        if remaining is not None and reset and remaining < max(need, 1):
            # until enough is back at the per-minute rate (buckets may hold less than a
            # minute's worth), and never past the reset, when all of it is back
            missing = max(need, 1) - remaining
            wait = max(wait, reset if not tpm else min(reset, missing * 60 / tpm))
        if wait > self.max_wait:
            self.health.on_failure(now, "rate_limited", None, out_for=wait)
            self.stats.note = f"out: no requests left for {wait:,.0f} s (rate-limit headers)"
        elif wait:
            self.hold_until = max(self.hold_until, now + wait)

    def set_share(self, share: float) -> None:
        """This process's part of the endpoint's limits (its ``max_concurrency``, its
        rates: set or learned) now: ``llmframe.ray``'s actors' shares follow their work
        (``_shares``). 0: nothing in flight here (the rates are left as they are)."""
        ep = self.endpoint
        if ep.max_concurrency is not None:
            self.cap = part(ep.max_concurrency, share)
        if share <= 0:
            return
        self.share = share
        rate = ep.request_rate or self.learned_rpm / 60
        if rate:
            self.limiter = _endpoint_limiter(part_rate(rate, share), spent=True)
        tpm = ep.tpm or self.learned_tpm
        if tpm:  # what is owed stays owed
            level = self.tokens.level if self.tokens is not None else None
            self.tokens = TokenBucket(tpm * share / 60)
            if level is not None:
                self.tokens.level = min(level, self.tokens.burst)

    def _learned(self, what: str) -> None:
        """Say what was learned (the latest value of each limit)."""
        tail = " from its headers"
        note = self.stats.note
        parts = note[len("learned "):-len(tail)].split(", ") if note and note.endswith(
            tail) else []
        parts = [p for p in parts if p.split()[0] != what.split()[0]] + [what]
        self.stats.note = f"learned {', '.join(parts)}{tail}"


def check_network(config: RunConfig) -> None:
    """What a run would read when it starts (TLS files, proxies from the environment),
    checked now: for ``--workers``, so a bad one stops the run before any worker starts."""
    for ep in config.endpoints:
        ep.ssl_context(warn=False)  # verify=false: each worker says so itself
        proxy_of(ep, ep.url, config.proxy)


class EndpointPool:
    """The run's endpoints. Build inside the run; ``close()`` at its end."""

    def __init__(self, config: RunConfig, share: float = 1.0) -> None:
        self.targets = [Target(i, ep, config) for i, ep in enumerate(config.endpoints)]
        for t in self.targets:
            t.share = share
        self.balancer = SmoothWeightedRoundRobin([ep.weight for ep in config.endpoints])
        self.max_retry_after = config.max_retry_after
        for t in self.targets:
            proxy = proxy_of(t.endpoint, t.url, config.proxy)
            t.stats.via = None if proxy is None else str(proxy)
            t.transport = open_transport(t.url, t.headers, config.transport,
                                         limit=config.concurrency,
                                         ssl_context=t.endpoint.ssl_context(),
                                         proxy=proxy)

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.targets if t.key]

    def pick(self, last: int, now: float, back: bool = False) -> Target | None:
        """Where a request goes now, or None when no endpoint can take one yet. ``last``:
        the endpoint that failed it (-1: none); ``back``: it waited the Retry-After that
        endpoint asked for, so it goes back there (else: to another, if one works)."""
        targets = self.targets
        if back and last >= 0 and targets[last].eligible(now, 2):  # its pause is the same
            return targets[last]                                # signal this row waited
        if last >= 0 and len(targets) > 1 and not back:
            i = self.balancer.pick(lambda i: i != last and targets[i].health.working(now)
                                   and targets[i].eligible(now))
            if i is not None:
                return targets[i]
        i = self.balancer.pick(lambda i: targets[i].eligible(now))
        if i is None:  # every AIMD window is full: windows steer, they never cap the run
            i = self.balancer.pick(lambda i: targets[i].eligible(now, 1))
        if i is None:  # pauses steer too: no other endpoint has room, so use a paused one
            i = self.balancer.pick(lambda i: targets[i].eligible(now, 2))
        if i is None and all(t.health.cooling(now) or t.health.out(now) for t in targets):
            # every endpoint is broken as far as we know: use them anyway, the rows' own
            # retry policy decides (a dead single endpoint fails rows, never stalls)
            i = self.balancer.pick(lambda i: targets[i].eligible(now, 3))
        return None if i is None else targets[i]

    def idle_wait(self, now: float) -> float:
        """How long to wait when no endpoint can take a request: until the first cooldown
        or pause ends (a completion wakes the dispatcher sooner), or a few ms for rate."""
        live = [t for t in self.targets if not t.health.out(now)]
        soonest = min((e for t in live if (e := max(t.health.available_at(), t.hold_until))
                       > now), default=None)
        tokens = [t.tokens.wait(now) for t in live if t.tokens is not None]
        if soonest is None and not any(tokens):
            return 0.002
        # an endpoint waiting for its own rate limiter has a token again within 1/rate
        waits = [1.0, *(t.limiter.time_period / t.limiter.max_rate for t in live
                        if t.limiter is not None)]
        if soonest is not None:
            waits.append(soonest - now)
        if any(tokens):
            waits.append(min(w for w in tokens if w > 0))
        return max(0.002, min(waits))

    def elsewhere(self, target: Target, now: float) -> bool:
        """Another endpoint is healthy now (not out, cooling, paused, failing or mostly
        refusing) and has room: a retry may go there after the backoff instead of the
        Retry-After."""
        return any(t is not target and t.health.healthy(now)
                   and t.in_flight < t.health.allowed(now) for t in self.targets)

    def alternative(self, target: Target, now: float) -> bool:
        """Another endpoint is not out (a row told to wait past the cap may go there)."""
        return any(t is not target and not t.health.out(now) for t in self.targets)

    def out_reason(self, now: float) -> str | None:
        """Why no endpoint can take a row within the cap (every one is out), else None."""
        if not all(t.health.out(now) for t in self.targets):
            return None
        spent = [t for t in self.targets if t.health.out_why]
        if len(spent) == len(self.targets):
            return "; ".join(f"{t.health.out_why} at {t.name}" for t in spent)
        worst = min(self.targets, key=lambda t: t.health.out_until)
        return f"{over_limit(worst.health.out_for, self.max_retry_after)} ({worst.name})"

    async def close(self) -> None:
        for t in self.targets:
            await t.transport.close()
