"""Benchmark llmframe on Ray Data against the single-process engine, in the same run.

    python bench/ray.py            # ~2 minutes: 1 s latency, 2,000 req/s, 30,000 rows
    python bench/ray.py --quick    # a smoke run

Starts a ``llmframe serve-mock`` endpoint answering after 1 s, then runs the same rows
(a) with ``llmframe run`` in one process, (b) with ``llmframe.ray.complete`` on a one-node
Ray cluster (2 CPUs) and (c) on a two-node cluster (two 1-CPU nodes on this machine:
``ray.cluster_utils.Cluster``). Prints requests/s by the endpoint's clock (steady: the
median second without the first and last two), the busiest second against ``--rps`` (the
job-wide limit must hold), and the machine's CPU per request (every process: clients,
Ray's own daemons; the endpoint's CPU left out). On this 2-core machine the "two nodes"
share the same cores: the figure shows what the extra coordination costs, not a speedup.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import Endpoint, make_requests

PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


RAY_SCRIPT = """
import sys, polars as pl, ray, llmframe.ray
from ray.cluster_utils import Cluster
nodes, url, rps, path = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2 if nodes == 1 else 1})
for _ in range(nodes - 1):
    c.add_node(num_cpus=1)
ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
df = pl.read_ndjson(path).select("input")
print("START", flush=True)
out = llmframe.ray.complete(df, "input", endpoints=[url], rps=rps,
                            concurrency=int(rps * 1.35), actors=2, batch_size=500)
print("OK", out["error"].null_count(), out.height, flush=True)
ray.shutdown(); c.shutdown()
"""


def _run(name: str, cmd: list[str], latency: float, rps: float, timeout: float,
         options: tuple[str, ...] = ()) -> dict:
    ep = Endpoint(latency, options=options)
    try:
        cmd = [c.replace("{url}", ep.url) for c in cmd]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        if "ray" in name:  # leave out the cluster's start-up
            while proc.stdout.readline().strip() != "START":
                if proc.poll() is not None:
                    raise RuntimeError(f"{name}: the Ray driver stopped before starting")
        cpu0, server0, wall0 = machine_cpu(), ep.cpu_seconds(), time.perf_counter()
        out, _ = proc.communicate(timeout=timeout)
        wall = time.perf_counter() - wall0
        cpu = machine_cpu() - cpu0 - (ep.cpu_seconds() - server0)
        stats = ep.stats()
    finally:
        ep.stop()
    counts = stats["per_second"]
    seconds = sorted(int(s) for s in counts)
    per_second = [counts.get(str(s), 0) for s in range(seconds[0], seconds[-1] + 1)]
    served = stats["counts"].get("requests", 0)
    steady = statistics.median(per_second[2:-2]) if len(per_second) > 4 else 0
    ok = stats["counts"].get("ok", 0)
    return {"client": name, "served": served, "steady": steady, "busiest": max(per_second),
            "wall": round(wall, 1), "cpu_us": round(cpu / max(served, 1) * 1e6, 1),
            "ok": ok, "refused": stats["counts"].get("429", 0),
            "rows_per_s": round(ok / wall, 1) if wall else 0.0,
            "per_second": per_second, "note": out.strip().splitlines()[-1:] if out else []}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rps", type=float, default=2000)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = p.parse_args()
    if args.quick:
        args.rps, args.seconds = 200, 5
    tmp = Path(tempfile.mkdtemp(prefix="llmframe-bench-ray-"))
    n = int(args.rps * args.seconds)
    req = make_requests(tmp / "r.jsonl", n)
    script = tmp / "ray_driver.py"
    script.write_text(RAY_SCRIPT)
    runs = _commands(req, args.rps, script, tmp)
    results = [_run(name, cmd, 1.0, args.rps, 600) for name, cmd in runs]
    print(f"\nllmframe on Ray — {os.cpu_count()} cores (clients, Ray and the endpoint share "
          f"them); 1 s latency, --rps {args.rps:,.0f}, {n:,} rows\n")
    _table(results, [("client", "client", "<26"), ("served", "served", ">8,"),
                     ("steady req/s", "steady", ">12,.0f"),
                     ("busiest second", "busiest", ">14,"), ("wall s", "wall", ">7.1f"),
                     ("machine CPU µs/req", "cpu_us", ">18,.1f")])
    held = all(r["busiest"] <= args.rps for r in results[1:])
    print(f"\nRay: the job-wide rps held in every second (<= {args.rps:,.0f}): "
          f"{'yes' if held else 'NO'}; Ray leases the rate in slices, ~9% under it by design")
    hostile = _hostile(script, tmp, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray.json").write_text(json.dumps({"clean": results, "hostile": hostile},
                                                  indent=1))


#: endpoints that behave like a throttling provider: (name, serve-mock options, rps)
HOSTILE = [
    ("10% 429s, Retry-After 1 s", ("--fault", "429=0.1", "--retry-after", "1"), 1000),
    ("provider rpm 30,000 (500/s)", ("--rpm", "30000", "--window", "1"), 1000),
]


def _commands(req: Path, rps: float, script: Path, tmp: Path, nodes: int = 2
              ) -> list[tuple[str, list[str]]]:
    """The clients: ``llmframe run`` in one process, then Ray on 1..``nodes`` nodes."""
    conc = str(int(rps * 1.35))
    return [
        ("llmframe run (1 process)", [PY, "-m", "llmframe", "run", str(req), "-e", "{url}",
                                      "--rps", str(rps), "--concurrency", conc,
                                      "--save", str(tmp / "o.jsonl"), "--errors",
                                      str(tmp / "e.jsonl"), "--no-progress", "--overwrite"]),
        *((f"llmframe.ray, {k} node{'s' * (k > 1)}",
           [PY, str(script), str(k), "{url}", str(rps), str(req)])
          for k in range(1, nodes + 1)),
    ]


def _hostile(script: Path, tmp: Path, quick: bool) -> list[dict]:
    """The single process and Ray on one node against throttling endpoints (0.2 s
    latency): rows answered per second, and how many requests were refused."""
    n = 1000 if quick else 10_000
    req = make_requests(tmp / "hostile.jsonl", n)
    out = []
    for scenario, options, rps in HOSTILE:
        for name, cmd in _commands(req, rps, script, tmp, nodes=1):
            out.append({"scenario": scenario, **_run(name, cmd, 0.2, rps, 600, options)})
    print(f"\nthrottling endpoints — 0.2 s latency, {n:,} rows, the client's --rps 1,000\n")
    _table(out, [("endpoint", "scenario", "<30"), ("client", "client", "<26"),
                 ("rows ok", "ok", ">8,"), ("rows/s", "rows_per_s", ">8,.0f"),
                 ("429s", "refused", ">7,"), ("wall s", "wall", ">7.1f")])
    return out


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` under a header; ``columns``: (title, key, format spec), the spec's
    alignment and width (``<26``, ``>8,``) used for the title too."""
    def title_spec(spec: str) -> str:
        return spec[0] + "".join(c for c in spec[1:].split(".")[0] if c.isdigit())

    head = " ".join(f"{title:{title_spec(spec)}}" for title, _, spec in columns)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(" ".join(f"{r[key]:{spec}}" for _, key, spec in columns))


if __name__ == "__main__":
    main()
