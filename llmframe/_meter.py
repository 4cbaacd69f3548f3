"""Tokens and money of one run: what a request should reserve before it is sent, what it
used once answered, and the budget.

- **Reservation** (for ``tpm`` limits): the prompt's estimated tokens plus the answer's.
  The prompt is counted from the text of every message (``_tokens``: characters/4, or
  tiktoken when asked for and available), then scaled by what the provider's own
  ``usage`` showed so far (its tokenizer is not ours). The answer reserves ``max_tokens``
  when the request sets it, else ``output_tokens`` (512) until answers arrive; then the
  typical answer size seen (mean plus mean deviation, never above ``max_tokens``): a
  reservation of the worst case on every request would leave most of a token limit
  unused, and every answer settles the difference anyway.
- **Budget**: a request is sent only if the spend so far, plus the worst-case cost of
  the requests in flight, plus its own worst case (the prompt scaled by the highest
  recent provider/estimate ratio, and ``max_tokens``, else the largest answer seen or
  ``output_tokens``) stays within the budget. When it does not fit but requests are in
  flight, the run waits for them (their real cost is usually lower); when nothing is in
  flight, the budget is reached: the run stops sending. Until 16 answers have shown how
  the provider counts, at most twice as many requests as answers so far are in flight
  (one at first, then doubling each round trip, like TCP's slow start; a few round trips
  at the start of a budget run): a first wave of requests the estimate gets badly wrong
  (files, audio, large images) cannot overrun the budget.
  A timeout or an unreadable answer is charged its worst case (it may be billed); a
  refusal (an HTTP error) costs nothing. Answers without ``usage`` leave the estimate
  uncalibrated: their prompts are then charged one token a character (4x the estimate)
  plus ``max_tokens``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from ._config import Endpoint, RunConfig
from ._pacer import TokenBucket
from ._tokens import chars_tokens, estimate_prompt_tokens, output_tokens, tiktoken_counter
from ._usage import Usage

__all__ = ["Budget", "Gate", "Meter"]


_NO_USAGE_RATIO = 4.0  # characters/4 is the estimate: a token is at least one character
_CALIBRATED = 16  # answers before the estimates are trusted (the budget's slow start)
_CAP_KEYS = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens", "n"})


class Meter:
    """Token estimates of one run, learning from the answers' usage.

    >>> from llmframe import RunConfig
    >>> m = Meter(RunConfig(["http://a/v1"], output_tokens=100))
    >>> body = {"messages": [{"role": "user", "content": "x" * 400}]}
    >>> m.prompt_tokens(body), m.answer_cap(body), m.tokens(107, None)   # 100 + 4 + 3
    (107, None, 207)
    >>> m.learn(107, Usage(prompt_tokens=214, completion_tokens=10))
    >>> m.tokens(107, None)               # the provider counts twice as many; answers are 10
    224
    """

    __slots__ = ("_count", "_dev", "_out", "default_out", "ratio", "ratio_high", "seen",
                 "worst_out")

    def __init__(self, config: RunConfig, note: Callable[[str], None] | None = None) -> None:
        self.default_out = config.output_tokens
        self._count: Callable[[str], int] | None = None
        if config.tokenizer == "tiktoken":
            self._count = tiktoken_counter()
            if self._count is None:
                msg = ("tokenizer='tiktoken': tiktoken or its encoding file is not on this "
                       "machine (it is never downloaded during a run); counting characters/4")
                if note is not None:
                    note(msg)
                else:
                    warnings.warn(msg, stacklevel=2)
        self.ratio = 1.0
        self.ratio_high = 1.0  # a slowly decaying maximum of that ratio (for the budget)
        self._out: float | None = None
        self._dev = 0.0
        self.worst_out = 0
        self.seen = 0

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        """Our own count of a request's prompt tokens (before scaling)."""
        return estimate_prompt_tokens(body, self._count)

    @staticmethod
    def answer_cap(body: dict[str, Any]) -> int | None:
        """The request's own limit on answer tokens (``max_tokens`` and kin), if any."""
        if not _CAP_KEYS.intersection(body):
            return None
        cap = output_tokens(body, 0)
        return cap or None

    def expected_out(self, cap: int | None) -> int:
        if self._out is None:
            return cap or self.default_out
        typical = math.ceil(self._out + self._dev)
        return min(cap, typical) if cap else typical

    def worst_case_out(self, cap: int | None) -> int:
        return cap or max(self.default_out, self.worst_out)

    def tokens(self, prompt: int, cap: int | None) -> int:
        """Tokens to reserve for a request whose prompt we counted as ``prompt``."""
        return math.ceil(prompt * self.ratio) + self.expected_out(cap)

    def guess_usage(self, prompt: int, answer: Any) -> Usage:
        """An answer without ``usage``: its prompt as estimated and its text counted, and
        the answer size learned from that (so reservations still shrink to real answers)."""
        text = answer if isinstance(answer, str) else "" if answer is None else str(answer)
        out = chars_tokens(text)
        self._learn_out(out)
        return Usage(math.ceil(max(prompt, 0) * self.ratio), out)

    def unmetered(self) -> None:
        """An answer came without usage: from now on a prompt's worst case is one token a
        character (four times the estimate), since nothing will say otherwise."""
        self.ratio_high = max(self.ratio_high, _NO_USAGE_RATIO)

    def learn(self, prompt: int, usage: Usage) -> None:
        """Fold one answer's usage into the estimates. The maxima see every answer; the
        averages move slowly, so past the first 64 answers every 8th is enough (this runs
        on every answer of a token-limited run)."""
        self.seen = seen = self.seen + 1
        tokens, out = usage.prompt_tokens, usage.completion_tokens
        ratio = tokens / prompt if tokens and prompt > 0 else None
        if ratio is not None and ratio > self.ratio_high:
            self.ratio_high = ratio
        if out is not None and out > self.worst_out:
            self.worst_out = out
        if seen > 64 and seen & 7:
            return
        alpha = max(0.05, 1.0 / seen)
        if ratio is not None:
            self.ratio += alpha * (ratio - self.ratio)
            self.ratio_high += 0.02 * (ratio - self.ratio_high)
            self.ratio_high = max(self.ratio_high, ratio)
        if out is not None:
            self._learn_out(out, alpha)

    def _learn_out(self, out: int, alpha: float | None = None) -> None:
        if alpha is None:
            self.seen += 1
            alpha = max(0.05, 1.0 / self.seen)
        self.worst_out = max(self.worst_out, out)
        if self._out is None:
            self._out = float(out)
        else:
            self._dev += alpha * (abs(out - self._out) - self._dev)
            self._out += alpha * (out - self._out)


class Budget:
    """The run's spend against ``limit`` USD.

    >>> b = Budget(1.0)
    >>> b.fits(0.6), b.reserve(0.6), b.fits(0.6)
    (True, None, False)
    >>> b.release(0.6, spent=0.2); b.fits(0.6), b.spent
    (True, 0.2)
    >>> b.reserve(0.3); b.release(0.3, spent=None); round(b.spent, 2)   # unknown: charged
    0.5
    """

    __slots__ = ("in_flight", "limit", "reserved", "spent")
    asking = False  # more may come (a budget shared between processes: _purse)

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0
        self.in_flight = 0

    def fits(self, cost: float) -> bool:
        return self.spent + self.reserved + cost <= self.limit * (1 + 1e-12)

    def reserve(self, cost: float) -> None:
        self.reserved += cost
        self.in_flight += 1

    def release(self, cost: float, spent: float | None) -> None:
        """A request ended: free its reservation ``cost``, and add what it ``spent``
        (None: unknown, so its reservation is charged)."""
        self.reserved = max(0.0, self.reserved - cost)
        self.in_flight -= 1
        self.spent += cost if spent is None else spent


def worst_cost(endpoint: Endpoint, meter: Meter, prompt: int, cap: int | None) -> float:
    """The most one request could cost at ``endpoint`` (for the budget): its prompt scaled
    by the highest recent ratio of the provider's count to ours (before any answer: one
    token a character), plus the most its answer may use."""
    # before any answer, nothing says how the provider counts: one token a character
    ratio = max(meter.ratio_high, 1.0) if meter.seen else _NO_USAGE_RATIO
    tokens_in = math.ceil(prompt * ratio)
    return endpoint.cost(tokens_in, meter.worst_case_out(cap)) or 0.0


class Gate:
    """The run-wide token and money limits a request passes before it is sent: the
    global ``tpm`` bucket, the budget, and the estimates both need."""

    __slots__ = ("_on", "budget", "meter", "tokens")

    def __init__(self, config: RunConfig) -> None:
        self.tokens = TokenBucket(config.tpm / 60) if config.tpm else None
        self.meter = Meter(config)
        self.budget = Budget(config.budget) if config.budget is not None else None
        self._on = self.tokens is not None or self.budget is not None

    def metered(self, targets: Any) -> bool:
        """Requests need a token estimate: a token limit (set or learned) or a budget."""
        if not self._on:  # once on, on for the run (a learned limit stays)
            self._on = any(t.tokens is not None for t in targets)
        return self._on

    def measure(self, job: Any) -> None:
        """Count the job's prompt (once) and set the tokens to reserve for its attempt."""
        meter = self.meter
        if job.prompt < 0:
            body = job.prepared.body
            job.prompt, job.cap = meter.prompt_tokens(body), meter.answer_cap(body)
        job.tokens = meter.tokens(job.prompt, job.cap)

    def afford(self, job: Any, endpoint: Endpoint) -> bool:
        """Reserve the job's worst-case cost at ``endpoint`` if the budget allows it."""
        budget = self.budget
        if budget is None:
            return True
        cost = worst_cost(endpoint, self.meter, job.prompt, job.cap)
        if not budget.fits(cost):
            return False
        seen = self.meter.seen
        if seen < _CALIBRATED and budget.in_flight > 2 * seen:
            return False  # slow start: the estimates are not calibrated yet
        budget.reserve(cost)
        job.cost = cost
        return True
