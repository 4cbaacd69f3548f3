"""Per-endpoint health: cooldown when failing, AIMD and a pause when saturated, out when
told to wait past the cap.

A small state machine of plain numbers, driven by the engine with the loop's clock and
tested with made-up times:

- **Cooldown (a circuit breaker).** ``threshold`` failures in a row that say "this server
  is broken" (connection refused/reset, timeout, 5xx, an unparseable 200) take the endpoint
  out of rotation for ``cooldown`` seconds (1 s, doubling to 30 s); its traffic goes to the
  others. When the cooldown ends one probe request is let through; a success brings the
  endpoint back, a failure starts a longer cooldown.
- **A 429 is about one request.** The row waits what its own Retry-After asks (see
  ``_retry``); the endpoint goes on. Only when refusals dominate its recent answers
  (at least half of the last ``RECENT``) is its in-flight window halved (AIMD: at most once
  per second or typical latency, counting only requests sent after the last decrease; it
  grows back by ~1 per window of successes), and when at least 3/4 are refused the
  endpoint is **paused** for the Retry-After asked (1 s without one). A 429 from a
  request sent before a pause began never extends it. The window steers load to
  endpoints with room; when none has room under its window, the full one is used: a
  smaller window never lowers the run's total (each refused row already waits its
  Retry-After, and with rate-based limits a smaller window only slows the run).
- **Out.** A Retry-After past ``max_retry_after`` (a spent daily quota says 86400) puts
  the endpoint out of the run for that long; a spent quota or credit (``leave``) for the
  rest of the run.

Pauses and windows move traffic to the other endpoints while those have room, and never
hold rows back otherwise; cooldowns move traffic to working endpoints, and when every
endpoint that is not out is cooling, they are used anyway and each row's own retry policy
decides. So a single endpoint refusing most first attempts
(each row then waits its Retry-After) runs as fast as a client that simply waits
Retry-After per request, and a dead single endpoint fails rows promptly.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Health"]

_BROKEN = frozenset({"connection_error", "timeout", "invalid_response"})
RECENT = 20


class Health:
    """Health of one endpoint. ``allowed(now)`` is how many requests may be in flight.

    >>> h = Health(100, threshold=2)
    >>> h.allowed(0.0)
    100
    >>> h.on_failure(0.0, "http_error", 429, retry_after=2.0)   # one 429: the row waits
    >>> h.allowed(0.5)
    100
    >>> for t in range(8): h.on_failure(1.0, "http_error", 429, retry_after=2.0, sent_at=0.9)
    >>> h.allowed(1.5), h.allowed(3.1)       # mostly refused: paused 2 s, window halved
    (0, 50)
    >>> h.on_failure(3.0, "connection_error"); h.on_failure(3.0, "connection_error")
    >>> h.allowed(3.5), h.allowed(4.0)      # 1 s cooldown, then a single probe
    (0, 1)
    >>> h.on_success(4.1, latency=0.1); h.allowed(4.1)
    50
    >>> h.on_failure(5.0, "http_error", 429, out_for=86400.0); h.out(5.0)
    True
    """

    __slots__ = ("_cooldown", "_ewma_latency", "_last_decrease", "_max_window", "_recent",
                 "_refused", "_tripped_at", "cooldown_until", "cooldowns", "failures",
                 "out_for", "out_until", "out_why", "pause_began", "paused_until", "pauses",
                 "probing", "threshold", "throttled", "window")

    def __init__(self, max_window: int, *, threshold: int = 5) -> None:
        self._max_window = float(max(1, max_window))
        self.window = self._max_window
        self.threshold = threshold
        self.failures = 0
        self.cooldown_until = 0.0
        self.paused_until = 0.0
        self.pause_began = -1e9
        self.out_until = 0.0
        self.out_for = 0.0
        self.out_why: str | None = None
        self.probing = False
        self._cooldown = 1.0
        self._tripped_at = -1e9
        self._last_decrease = -1e9
        self._ewma_latency = 0.0
        self._recent: deque[bool] = deque(maxlen=RECENT)  # True: refused (429)
        self._refused = 0
        self.cooldowns = 0
        self.throttled = 0
        self.pauses = 0

    def allowed(self, now: float, level: int = 0) -> int:
        """Requests this endpoint may have in flight now. ``level`` 1: no endpoint has room
        under its AIMD window, so use the full one; 2: none has room otherwise, so ignore
        pauses too; 3: every endpoint is cooling down, so ignore that too. An endpoint that
        is out is never used."""
        if now < self.out_until:
            return 0
        if level < 3:
            if now < self.cooldown_until:
                return 0
            if self.probing:
                return 1
        if level < 2 and now < self.paused_until:
            return 0
        if level:
            return int(self._max_window)
        return int(self.window) if self.window >= 1 else 1

    def cooling(self, now: float) -> bool:
        """In cooldown or waiting for its probe to succeed (broken, as far as we know)."""
        return self.probing or now < self.cooldown_until

    def working(self, now: float) -> bool:
        """Not out, cooling or paused, and no failure streak (where a retry may go)."""
        return not self.held(now) and not self.out(now) and self.failures == 0

    def healthy(self, now: float) -> bool:
        """Working, and answering: most of its recent answers (at least one) are not
        refusals. Where a refused row may go after its backoff instead of waiting its
        Retry-After."""
        return self.working(now) and 2 * self._refused < len(self._recent)

    def held(self, now: float) -> bool:
        """Cooling down, waiting for its probe, or paused (but not out)."""
        return self.cooling(now) or now < self.paused_until

    def out(self, now: float) -> bool:
        """Told to wait past the cap: not used at all until then."""
        return now < self.out_until

    def leave(self, why: str) -> None:
        """Out for the rest of the run (a spent quota), saying why."""
        self.out_until = float("inf")
        self.out_why = why

    def available_at(self) -> float:
        """When a cooling or paused endpoint may take a request again."""
        return max(self.cooldown_until, self.paused_until)

    def _answered(self, refused: bool) -> None:
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._refused -= recent[0]
        recent.append(refused)
        self._refused += refused

    def on_success(self, now: float, latency: float = 0.0) -> None:
        self.failures = 0
        if self.probing:
            self.probing = False
            self._cooldown = 1.0
        self._answered(False)
        self._ewma_latency += 0.05 * (latency - self._ewma_latency)
        if self.window < self._max_window:
            self.window = min(self._max_window, self.window + 1.0 / self.window)

    def on_failure(self, now: float, kind: str, status: int | None = None, *,
                   retry_after: float | None = None, out_for: float | None = None,
                   sent_at: float | None = None) -> None:
        """Record a failed attempt. ``retry_after`` is what the server asked, already
        capped; ``out_for`` is set when it asked for more than the cap. ``sent_at``: when
        the request was sent (defaults to ``now``)."""
        sent = now if sent_at is None else sent_at
        if out_for is not None:
            self.out_until = max(self.out_until, now + out_for)
            self.out_for = out_for
        if status == 429:
            self._throttled(now, sent, retry_after)
            return
        if kind in _BROKEN or (status is not None and status >= 500):
            self._broken(now, sent)
        else:
            self.failures = 0  # a 4xx means the server is up and answering

    def _throttled(self, now: float, sent: float, retry_after: float | None) -> None:
        self.throttled += 1
        self._answered(True)
        seen, refused = len(self._recent), self._refused
        if seen < 8 or 2 * refused < seen:
            return  # a refusal among answers: this request waits, the endpoint goes on
        if sent >= self._last_decrease and now - self._last_decrease >= max(
                1.0, self._ewma_latency):
            self.window = max(1.0, self.window / 2)
            self._last_decrease = now
        if 4 * refused >= 3 * seen and sent >= self.pause_began:
            self.paused_until = max(self.paused_until, now + (retry_after or 1.0))
            self.pause_began = now
            self.pauses += 1
            self._recent.clear()
            self._refused = 0

    def _broken(self, now: float, sent: float) -> None:
        if sent < self._tripped_at or sent < self.cooldown_until:
            return  # sent before the trip, or while all endpoints were cooling: no probe
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.cooldown_until = now + self._cooldown
            self._tripped_at = now
            self._cooldown = min(self._cooldown * 2, 30.0)
            self.probing = True
            self.failures = 0
            self.cooldowns += 1
