"""The floor: a minimal hand-written aiohttp client (uvloop, orjson, pooled connections).

No balancing, no retries, no per-row bookkeeping beyond writing the answer: what any
llmframe feature costs is measured against this, in the same benchmark run.

    python bench/baseline_client.py REQUESTS.jsonl OUT.jsonl URL --in-flight 256 --rps 0
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import aiohttp
import orjson
import uvloop


async def main(args: argparse.Namespace) -> None:
    url = args.url.rstrip("/") + "/chat/completions"
    with open(args.requests, "rb") as f:
        lines = [orjson.loads(line) for line in f if line.strip()]
    out = open(args.out, "wb")  # noqa: SIM115
    connector = aiohttp.TCPConnector(limit=args.in_flight, limit_per_host=0)
    headers = {"Content-Type": "application/json"}
    sem = asyncio.Semaphore(args.in_flight)
    period = 1.0 / args.rps if args.rps else 0.0
    gc.disable()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int, row: dict) -> None:
            body = orjson.dumps({"messages": [{"role": "user", "content": row["input"]}]})
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    data = orjson.loads(await resp.read())
                    text = data["choices"][0]["message"]["content"]
                out.write(orjson.dumps({"index": i, "response": text},
                                       option=orjson.OPT_APPEND_NEWLINE))
            finally:
                sem.release()

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = set()
        for i, row in enumerate(lines):
            await sem.acquire()
            if period:
                due = start + i * period
                now = loop.time()
                if due > now + 0.001:
                    await asyncio.sleep(due - now)
            t = loop.create_task(one(i, row))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))
    out.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("requests")
    p.add_argument("out")
    p.add_argument("url")
    p.add_argument("--in-flight", type=int, default=256)
    p.add_argument("--rps", type=float, default=0)
    t0 = time.perf_counter()
    uvloop.run(main(p.parse_args()))
