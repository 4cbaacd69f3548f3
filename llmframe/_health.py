"""Per-endpoint health: cooldown when failing, AIMD when throttled, Retry-After pauses.

A small state machine of plain numbers, driven by the engine with the loop's clock and
tested with made-up times:

- **Cooldown (a circuit breaker).** ``threshold`` failures in a row that say "this server
  is broken" (connection refused/reset, timeout, 5xx, an unparseable 200) take the endpoint
  out of rotation for ``cooldown`` seconds (1 s, doubling to 30 s); its traffic goes to the
  others. When the cooldown ends one probe request is let through; a success brings the
  endpoint back, a failure starts a longer cooldown.
- **AIMD on 429.** The endpoint's in-flight window is halved on a 429 (at most once a
  second or per typical latency, whichever is longer, so one burst of 429s counts once)
  and grows by ~1 per window of successes back to its limit: the endpoint is slowed down,
  not the run.
- **Retry-After** on a 429/503 pauses *that* endpoint until then; the others go on.

Cooldown moves traffic to healthy endpoints; it never holds rows back when there is none:
if every endpoint is cooling down, they are used anyway and each row's own retry policy
(backoff, ``max_attempts``) decides, so a dead single endpoint fails rows promptly rather
than stalling the run in ever longer cooldowns.
"""

from __future__ import annotations

__all__ = ["Health"]

_BROKEN = frozenset({"connection_error", "timeout", "invalid_response"})


class Health:
    """Health of one endpoint. ``allowed(now)`` is how many requests may be in flight.

    >>> h = Health(100, threshold=2)
    >>> h.allowed(0.0)
    100
    >>> h.on_failure(0.0, "http_error", 429, retry_after=2.0)
    >>> h.allowed(1.0), h.allowed(2.0)       # paused for 2 s, then half the window
    (0, 50)
    >>> h.on_failure(3.0, "connection_error"); h.on_failure(3.0, "connection_error")
    >>> h.allowed(3.5), h.allowed(4.0)      # 1 s cooldown, then a single probe
    (0, 1)
    >>> h.on_success(4.1, latency=0.1); h.allowed(4.1)
    50
    """

    __slots__ = ("_cooldown", "_ewma_latency", "_last_decrease", "_max_window", "_tripped_at",
                 "cooldown_until", "cooldowns", "failures", "paused_until", "probing",
                 "threshold", "throttled", "window")

    def __init__(self, max_window: int, *, threshold: int = 5) -> None:
        self._max_window = float(max(1, max_window))
        self.window = self._max_window
        self.threshold = threshold
        self.failures = 0
        self.cooldown_until = 0.0
        self.paused_until = 0.0
        self.probing = False
        self._cooldown = 1.0
        self._tripped_at = -1e9
        self._last_decrease = -1e9
        self._ewma_latency = 0.0
        self.cooldowns = 0
        self.throttled = 0

    def allowed(self, now: float, ignore_cooldown: bool = False) -> int:
        if now < self.paused_until:
            return 0
        if not ignore_cooldown:
            if now < self.cooldown_until:
                return 0
            if self.probing:
                return 1
        return int(self.window) if self.window >= 1 else 1

    def cooling(self, now: float) -> bool:
        """In cooldown or waiting for its probe to succeed."""
        return self.probing or now < self.cooldown_until

    def available_at(self) -> float:
        """When a cooling or paused endpoint may take a request again."""
        return max(self.cooldown_until, self.paused_until)

    def on_success(self, now: float, latency: float = 0.0) -> None:
        self.failures = 0
        if self.probing:
            self.probing = False
            self._cooldown = 1.0
        self._ewma_latency += 0.05 * (latency - self._ewma_latency)
        if self.window < self._max_window:
            self.window = min(self._max_window, self.window + 1.0 / self.window)

    def on_failure(self, now: float, kind: str, status: int | None = None,
                   retry_after: float | None = None, sent_at: float | None = None) -> None:
        """Record a failed attempt. ``sent_at``: when it was sent; a failure of a request
        sent before the breaker tripped says nothing new (it is not a failed probe)."""
        if status == 429:
            self.throttled += 1
            if now - self._last_decrease >= max(1.0, self._ewma_latency):
                self.window = max(1.0, self.window / 2)
                self._last_decrease = now
        if retry_after is not None and status in (429, 503):
            self.paused_until = max(self.paused_until, now + retry_after)
        if kind in _BROKEN or (status is not None and status >= 500):
            if sent_at is not None and (sent_at < self._tripped_at
                                        or sent_at < self.cooldown_until):
                return  # sent before the trip, or while all endpoints were cooling: no probe
            self.failures += 1
            if self.probing or self.failures >= self.threshold:
                self.cooldown_until = now + self._cooldown
                self._tripped_at = now
                self._cooldown = min(self._cooldown * 2, 30.0)
                self.probing = True
                self.failures = 0
                self.cooldowns += 1
        elif status != 429:
            self.failures = 0  # a 4xx means the server is up and answering
