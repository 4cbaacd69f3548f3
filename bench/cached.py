"""The response cache in the benchmark: a run answered entirely from the cache, against the
same run answered by the endpoint (filling the cache), through ``llmframe run`` and through
``df.llm.complete``, in the same run.

    python bench/cached.py polars N URL CACHE   # one process: the polars calls, timed

``bench/run.py`` calls :func:`cached_runs`; the figures are rows/s of the run itself (the
rate ``llmframe run`` prints; the wall time of the call for polars) and of the whole
process (Python start and imports included).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def _cli(req: Path, url: str, cache: Path, out: Path) -> dict[str, float]:
    cmd = [PY, "-m", "llmframe", "run", str(req), "-e", url, "--rps", "1e6", "--overwrite",
           "--no-progress", f"--cache={cache}", "--save", str(out), "--errors",
           str(out.with_suffix(".err"))]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    done = re.search(r"done: ([\d,]+) of [\d,]+ rows in ([\d.]+) s", proc.stderr)
    cached = re.search(r"cached ([\d,]+)", proc.stderr)
    if proc.returncode != 0 or not done or not cached:
        raise RuntimeError(f"llmframe run failed: {proc.stderr[-2000:]}")
    rows = int(done.group(1).replace(",", ""))
    return {"rows": rows, "cached": int(cached.group(1).replace(",", "")),
            "run_rows_s": round(rows / max(float(done.group(2)), 1e-3)),
            "process_rows_s": round(rows / wall)}


def cached_runs(req: Path, url: str, tmp: Path) -> dict[str, dict[str, float]]:
    """``llmframe run`` and ``df.llm.complete``, each twice on one cache: first answered by
    the endpoint at ``url`` (latency 0), then entirely from the cache."""
    out: dict[str, dict[str, float]] = {}
    cache = tmp / "bench-cache.sqlite3"
    out["cli filling"] = _cli(req, url, cache, tmp / "c.out")
    out["cli cached"] = _cli(req, url, cache, tmp / "c.out")
    n = out["cli cached"]["rows"]
    cache2 = tmp / "bench-cache-polars.sqlite3"
    proc = subprocess.run([PY, __file__, "polars", str(int(n)), url, str(cache2)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"polars cached run failed: {proc.stderr[-2000:]}")
    for line in proc.stdout.strip().splitlines():
        name, rate, process = line.split()
        out[f"polars {name}"] = {"rows": n, "run_rows_s": float(rate),
                                 "process_rows_s": float(process)}
    for f in tmp.glob("bench-cache*"):
        f.unlink()
    return out


def _polars(n: int, url: str, cache: str) -> None:
    started = time.perf_counter()
    import polars as pl

    import llmframe  # noqa: F401 - registers df.llm

    df = pl.DataFrame({"p": [f"Question {i}: what is {i} squared, briefly?" for i in range(n)]})
    for name in ("filling", "cached"):
        t0 = time.perf_counter()
        out = df.llm.complete("p", endpoints=[url], rps=1e6, cache=cache, progress=False)
        wall = time.perf_counter() - t0
        assert out["error"].null_count() == n, "some rows failed"
        whole = time.perf_counter() - started if name == "filling" else wall
        print(name, round(n / wall), round(n / whole))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "polars":
        sys.exit(__doc__)
    _polars(int(sys.argv[2]), sys.argv[3], sys.argv[4])
