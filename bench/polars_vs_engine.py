"""One timing for bench/run.py: N rows through the engine alone, or through df.llm.complete.

    python bench/polars_vs_engine.py engine|polars N URL  # prints wall and CPU seconds
"""

from __future__ import annotations

import sys
import time

import polars as pl

import llmframe  # noqa: F401 - registers df.llm
from llmframe import RunConfig, stream_results
from llmframe._runner import run_sync


def main() -> None:
    mode, n, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    prompts = [f"Question {i}: what is {i} squared, briefly?" for i in range(n)]
    start, cpu = time.perf_counter(), time.process_time()
    if mode == "engine":
        config = RunConfig([url], rps=1e6, concurrency=256)
        rows = ((i, {"input": p}, None) for i, p in enumerate(prompts))

        async def go() -> int:
            count = 0
            async for batch in stream_results(rows, config):
                count += len(batch)
            return count

        assert run_sync(go) == n
    else:
        out = pl.DataFrame({"p": prompts}).llm.complete(
            "p", endpoints=url, rps=1e6, concurrency=256, progress=False)
        assert out["response"].null_count() == 0
    print(f"{time.perf_counter() - start:.3f} {time.process_time() - cpu:.3f}")


if __name__ == "__main__":
    main()
