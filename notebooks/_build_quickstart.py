import nbformat as nbf
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
md("""# llmframe quickstart

One LLM request per row of a polars column, balanced over several OpenAI-compatible
endpoints by weight, rate-limited and retried. This notebook runs entirely on local test
endpoints (`llmframe.testing.MockServer`), which answer `echo: <prompt>` after a random
latency — swap in real endpoint URLs (and `api_key_env`) to use a real model."""),
code("""import polars as pl
import llmframe
from llmframe.testing import MockServer

# three local OpenAI-compatible endpoints with different speeds, and a few faults on one
servers = [
    MockServer(latency=(0.01, 0.05), seed=1, name="fast").start(),
    MockServer(latency=(0.02, 0.15), seed=2, name="medium").start(),
    MockServer(latency=(0.05, 0.30), faults={"429": 0.03, "500": 0.02}, retry_after=0.2,
               seed=3, name="slow-flaky").start(),
]
endpoints = [
    {"url": servers[0].url, "weight": 3},
    {"url": servers[1].url, "weight": 2},
    {"url": servers[2].url, "weight": 1},
]
names = {srv.url: srv.state.name for srv in servers}
endpoints"""),
md("Load the sample prompts (`read_jsonl` keeps the line index; bad lines would be flagged, not fatal)."),
code("""df = llmframe.read_jsonl("../data/requests.jsonl")
print(f"{df.height} prompts")
df.head(3)"""),
md("Run one request per row. The call is synchronous, works inside the notebook's running event loop, and shows a progress bar."),
code("""out = df.llm.complete("input", endpoints=endpoints, rps=400, concurrency=64, metadata=True)
print(f"rows answered: {out['response'].is_not_null().sum()}, errors: {out['error'].is_not_null().sum()}")
out.select("index", "input", "response", "attempts", "latency_ms").head(5)"""),
md("Every row got its own answer, aligned with its prompt:"),
code("""aligned = (out["response"] == "echo: " + out["input"]).all()
print("aligned:", aligned)"""),
md("How the work was split across endpoints (weights 3 : 2 : 1; the flaky one's 429s pause it briefly and shrink its window, so it gives a little of its share to the others), and their latency:"),
code("""split = (
    out.with_columns(pl.col("endpoint").replace(names).alias("name"))
    .group_by("name")
    .agg(
        rows=pl.len(),
        retried=(pl.col("attempts") > 1).sum(),
        p50_ms=pl.col("latency_ms").median(),
        p95_ms=pl.col("latency_ms").quantile(0.95),
    )
    .with_columns(share=pl.col("rows") / pl.col("rows").sum())
    .sort("rows", descending=True)
)
print("shares:", {n: round(s, 3) for n, s in zip(split["name"], split["share"])})
split"""),
code("""import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3.5))
for url, name in names.items():
    lat = out.filter(pl.col("endpoint") == url)["latency_ms"].to_numpy()
    ax.hist(lat, bins=40, alpha=0.6, label=f"{name} ({len(lat)} rows)")
ax.set_xlabel("latency of the answering attempt (ms)")
ax.set_ylabel("rows")
ax.set_title("Latency per endpoint")
ax.legend()
plt.show()"""),
md("The expression form returns a `{response, error}` struct and works in lazy frames too:"),
code("""small = pl.LazyFrame({"topic": ["tides", "volcanoes", None]})
small.with_columns(
    answer=pl.format("One fact about {}", pl.col("topic")).llm.complete(endpoints=endpoints, progress=False)
).unnest("answer").collect()"""),
md("""## Paid providers: limits, cost and a budget

A provider-mode test endpoint acts like a paid API: a token and request limit with
`x-ratelimit-*` headers (and 429s past them), `usage` in every answer. Give the endpoint its
limits and prices; `llmframe.estimate` says what a run would send and cost before anything
is sent."""),
code("""paid = MockServer(tpm=120_000, rpm=3_000, window=2, latency=(0.02, 0.1), name="paid").start()
priced = [{"url": paid.url, "tpm": 120_000, "rpm": 3_000, "price_in": 2.5, "price_out": 10.0}]
sample = df.head(300)
print(llmframe.estimate(sample, "input", endpoints=priced, params={"max_tokens": 32}))"""),
md("A budget smaller than the whole job: the run stops sending before it would pass it, keeps what was answered, and says how many rows were not sent."),
code("""try:
    billed = sample.llm.complete("input", endpoints=priced, params={"max_tokens": 32},
                                 budget=0.02, metadata=True)
except llmframe.BudgetReached as stop:
    print(stop)
    billed = stop.partial
spent = billed["cost_usd"].sum()
print(f"spent ${spent:.4f} of $0.02 on {billed['cost_usd'].is_not_null().sum()} rows; "
      f"refusals seen by the provider: {paid.counts['429']}")
billed.select("input", "prompt_tokens", "completion_tokens", "cost_usd", "error").head(5)"""),
code("""fig, ax = plt.subplots(figsize=(7, 3))
answered = billed.filter(pl.col("cost_usd").is_not_null()).sort("index")
ax.plot(answered["cost_usd"].cum_sum().to_numpy(), label="spend")
ax.axhline(0.02, color="red", linestyle="--", label="budget")
ax.set_xlabel("rows answered (input order)")
ax.set_ylabel("USD")
ax.set_title("Spend against the budget")
ax.legend()
plt.show()
paid.stop()"""),
md("""## Structured output: typed columns, not strings

Pass `schema=` (a pydantic model, a `pl.Struct`, or a JSON Schema dict): each answer is asked
for as JSON of that shape, validated (an answer that breaks it is retried, at another
endpoint when there is one), and the `response` column is a Struct you can unnest, filter and
join. The local endpoints build JSON from the schema (a real model fills it in)."""),
code("""from pydantic import BaseModel

class City(BaseModel):
    city: str
    country: str
    coastal: bool

cities = pl.DataFrame({"name": ["Toulon", "Lyon", "Berlin", "Porto"]})
typed = cities.llm.complete(pl.format("Where is {}? Answer in JSON.", pl.col("name")),
                            endpoints=endpoints, schema=City, progress=False)
print("response dtype:", typed.schema["response"])
typed.unnest("response").filter(pl.col("coastal"))"""),
md("""## A response cache: running a cell again costs nothing

`cache=True` keeps every answer in a SQLite file under your cache directory (or pass a
path). Asking again for what was already answered sends no request, spends no rate, tokens
or budget, and marks the rows `cached`."""),
code("""import tempfile, os
cache = os.path.join(tempfile.mkdtemp(), "answers.sqlite3")
before = sum(s.counts["requests"] for s in servers)
first = cities.llm.complete("name", endpoints=endpoints, cache=cache, progress=False)
again = cities.llm.complete("name", endpoints=endpoints, cache=cache, metadata=True, progress=False)
sent = sum(s.counts["requests"] for s in servers) - before
print(f"requests sent for both calls: {sent}; second call cached: {again['cached'].to_list()}")
print("same answers:", first["response"].to_list() == again["response"].to_list())"""),
code("""for srv in servers:
    srv.stop()
print({names[s.url]: dict(s.counts) for s in servers})"""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "notebooks/quickstart.ipynb")
