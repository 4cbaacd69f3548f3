"""The budget when the provider counts differently from the estimate, or not at all.

A fake transport plays the provider (allowed for a unit test: the budget's end-to-end
behaviour is in test_limits.py); it bills what *it* counts, and the test checks the
provider's own bill against the budget.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from llmframe.testing import MockTransport

from conftest import run_rows

PRICE = 1000.0  # USD per 1M tokens: $0.001 a token


class Provider:
    """Bills ``factor`` x our characters/4 for the prompt and ``answer`` tokens out."""

    def __init__(self, factor: float, answer: int = 20, usage: bool = True,
                 latency: float = 0.1) -> None:
        self.factor, self.answer, self.usage, self.latency = factor, answer, usage, latency
        self.billed = 0.0
        self.calls = 0
        self.in_flight = self.most_in_flight = 0

    def cost(self, text: str) -> tuple[int, float]:
        prompt = int(len(text) / 4 * self.factor) + 7
        return prompt, (prompt + self.answer) * PRICE / 1e6

    async def __call__(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(self.latency)
        self.in_flight -= 1
        text = orjson.loads(body)["messages"][-1]["content"]
        prompt, cost = self.cost(text)
        self.billed += cost
        doc = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}
        if self.usage:
            doc["usage"] = {"prompt_tokens": prompt, "completion_tokens": self.answer}
        return 200, {}, orjson.dumps(doc)


def _run(provider: Provider, rows: int, budget: float):
    texts = ["word " * 200 for _ in range(rows)]
    endpoint = {"url": "http://provider.test/v1", "price_in": PRICE, "price_out": PRICE}
    return run_rows(texts, [endpoint], budget=budget, concurrency=64,
                    params={"max_tokens": 20},
                    transport=lambda url, headers: MockTransport(provider))


@pytest.mark.parametrize("factor", [0.5, 3.0, 10.0])
def test_the_provider_bill_stays_within_one_request_of_the_budget(factor):
    provider = Provider(factor)
    one = provider.cost("word " * 200)[1]
    budget = 30 * one
    results, stats = _run(provider, 200, budget)
    assert stats.stopped_by == "budget"
    # never more than one request over, even when we underestimate the prompt 10x
    assert provider.billed <= budget + one
    # and not stopped far too early either
    assert provider.billed >= budget - 2 * (one if factor >= 1 else 2 * one)
    answered = sum(r.ok for r in results.values())
    assert answered == provider.calls and stats.not_sent == 200 - answered


def test_answers_without_usage_are_charged_their_worst_case():
    provider = Provider(3.0, usage=False)
    one = provider.cost("word " * 200)[1]
    budget = 30 * one
    results, stats = _run(provider, 200, budget)
    assert stats.stopped_by == "budget"
    assert provider.billed <= budget + one
    # unknown: each answered row carries what the budget charged, marked as estimated (a
    # resumed run counts it), never passed off as the provider's figure
    answered = [r for r in results.values() if r.ok]
    assert all(r.cost_estimated and r.cost_usd >= one for r in answered)


def test_a_budget_reaches_full_concurrency_after_its_slow_start():
    """Slow start doubles the requests in flight each round trip until 16 answers have
    calibrated the estimates; then the run's concurrency is used."""
    provider = Provider(1.0)
    one = provider.cost("word " * 200)[1]
    results, stats = _run(provider, 200, 10_000 * one)
    assert stats.stopped_by is None and all(r.ok for r in results.values())
    assert provider.most_in_flight == 64  # the run's concurrency, from the first wave


def test_a_resumed_run_counts_the_charges_of_answers_without_usage(tmp_path):
    """The save lines carry what the budget charged (marked estimated), so resuming with
    the same budget sends nothing more."""
    import json

    import llmframe

    provider = Provider(1.0, usage=False)
    one = provider.cost("word " * 200)[1]
    req = tmp_path / "r.jsonl"
    req.write_text("".join(json.dumps({"input": "word " * 200}) + "\n" for _ in range(100)))
    endpoint = {"url": "http://provider.test/v1", "price_in": PRICE, "price_out": PRICE}
    options = {"endpoints": [endpoint], "budget": 20 * one, "params": {"max_tokens": 20},
               "transport": lambda url, headers: MockTransport(provider)}
    with pytest.raises(llmframe.BudgetReached):
        llmframe.run_file(req, **options)
    calls = provider.calls
    saved = [json.loads(x) for x in req.with_name("r.save.jsonl").read_text().splitlines()]
    assert saved and all(x["cost_estimated"] and x["cost_usd"] > 0 for x in saved)
    with pytest.raises(llmframe.BudgetReached):
        llmframe.run_file(req, resume=True, **options)
    assert provider.calls == calls
