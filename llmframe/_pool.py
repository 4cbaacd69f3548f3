"""The endpoint pool: one :class:`Target` per endpoint (transport, limits, health, in-flight
count, stats) and the choice of where the next request goes.

Choice = smooth weighted round-robin over the endpoints that can take a request now: below
their in-flight window (``_health``), with a token of their own ``rps`` (aiolimiter's
``has_capacity``, then ``acquire`` once chosen, which then never waits). A retry prefers an
endpoint other than the one that just failed. Endpoints that are cooling down or paused
are skipped while another can serve; when none can, they are used anyway (the rows' own
retry policy decides). An endpoint that is *out* (told to wait past ``max_retry_after``)
is never used; when every endpoint is out, :meth:`EndpointPool.out_reason` says why.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter

from ._balancer import SmoothWeightedRoundRobin
from ._config import Endpoint, RunConfig
from ._health import Health
from ._results import EndpointStats
from ._retry import over_limit
from ._transport import Transport, open_transport

__all__ = ["EndpointPool", "Target"]


def _endpoint_limiter(rps: float) -> AsyncLimiter:
    """A smooth per-endpoint limiter: a bucket of 1/100 s worth of requests (at least 1),
    refilled continuously, so no burst of a whole second's budget ever goes out at once."""
    bucket = max(1.0, rps / 100)
    return AsyncLimiter(bucket, bucket / rps)


class Target:
    """Run-time state of one endpoint (loop-bound: built inside the run)."""

    __slots__ = ("endpoint", "headers", "health", "in_flight", "index", "key", "limiter",
                 "model", "name", "stats", "timeout", "transport", "url")

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
        self.limiter = _endpoint_limiter(endpoint.rps) if endpoint.rps else None
        max_in_flight = min(endpoint.max_concurrency or 1 << 30, config.concurrency)
        self.health = Health(max_in_flight)
        self.in_flight = 0
        self.stats = EndpointStats(self.name, endpoint.weight)
        self.transport: Transport

    def eligible(self, now: float, fallback: bool = False) -> bool:
        if self.in_flight >= self.health.allowed(now, fallback):
            return False
        return self.limiter is None or self.limiter.has_capacity()


class EndpointPool:
    """The run's endpoints. Build inside the run; ``close()`` at its end."""

    def __init__(self, config: RunConfig) -> None:
        self.targets = [Target(i, ep, config) for i, ep in enumerate(config.endpoints)]
        self.balancer = SmoothWeightedRoundRobin([ep.weight for ep in config.endpoints])
        self.max_retry_after = config.max_retry_after
        for t in self.targets:
            t.transport = open_transport(t.url, t.headers, config.transport,
                                         limit=config.concurrency)

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.targets if t.key]

    def pick(self, last: int, now: float) -> Target | None:
        """Where a request goes now (``last``: the endpoint that failed it, or -1), or None
        when no endpoint can take one yet."""
        targets = self.targets
        if last >= 0 and len(targets) > 1:
            i = self.balancer.pick(lambda i: i != last and targets[i].eligible(now))
            if i is not None:
                return targets[i]
        i = self.balancer.pick(lambda i: targets[i].eligible(now))
        if i is None and all(t.health.held(now) or t.health.out(now) for t in targets):
            # none is healthy: use them anyway, the rows' retry policy decides
            i = self.balancer.pick(lambda i: targets[i].eligible(now, fallback=True))
        return None if i is None else targets[i]

    def idle_wait(self, now: float) -> float:
        """How long to wait when no endpoint can take a request: until the first cooldown
        or pause ends (a completion wakes the dispatcher sooner), or a few ms for rate."""
        ends = [t.health.available_at() for t in self.targets if not t.health.out(now)]
        soonest = min((e for e in ends if e > now), default=0.0)
        return max(0.002, min(soonest - now, 1.0)) if soonest else 0.002

    def elsewhere(self, target: Target, now: float) -> bool:
        """Another endpoint, not out, could take the row."""
        return any(t is not target and not t.health.out(now) for t in self.targets)

    def out_reason(self, now: float) -> str | None:
        """Why no endpoint can take a row within the cap (every one is out), else None."""
        if not all(t.health.out(now) for t in self.targets):
            return None
        worst = min(self.targets, key=lambda t: t.health.out_until)
        return f"{over_limit(worst.health.out_for, self.max_retry_after)} ({worst.name})"

    async def close(self) -> None:
        for t in self.targets:
            await t.transport.close()
