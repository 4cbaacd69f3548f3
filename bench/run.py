"""Benchmark llmframe against a minimal hand-written aiohttp client, in the same run.

    python bench/run.py            # the full run reported in the README (~3 minutes)
    python bench/run.py --quick    # a small smoke run (seconds); no figures worth quoting

Starts its own local mock endpoints (``llmframe serve-mock``, separate processes), runs each
client as a subprocess, and prints one table: requests/s by the endpoint's own clock,
client CPU per request, client peak RSS, and the endpoint's CPU per request (reported
separately: it shares this machine). https rows run the same endpoint behind TLS
(``serve-mock --tls-cert``, a trustme certificate; the clients trust it by
``SSL_CERT_FILE``), and the TLS handshake's cost is measured on its own. Writes
``bench/out/results.json`` and a plot of throughput over time for the 1 s-latency case,
``bench/out/throughput_1s.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cached import cached_runs
from tls import certificates, handshake_cost

HERE = Path(__file__).resolve().parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Figures:
    scenario: str
    client: str
    requests: int
    ok_lines: int
    wall_s: float
    steady_rps: float
    overall_rps: float
    client_cpu_us: float
    client_rss_mb: float
    server_cpu_us: float
    per_second: list[int] = field(default_factory=list)


class Endpoint:
    """A ``llmframe serve-mock`` process."""

    def __init__(self, latency: float, tls: Path | None = None,
                 options: tuple[str, ...] = ()) -> None:
        extra = [*(["--tls-cert", str(tls)] if tls else []), *options]
        self.proc = subprocess.Popen(
            [PY, "-m", "llmframe", "serve-mock", "--port", "0", "--latency", str(latency),
             *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        found = re.search(r"(https?://\S+)", line)
        if not found:
            self.stop()
            raise RuntimeError(f"mock endpoint did not start: {line!r}")
        self.url = found.group(1)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def stats(self) -> dict:
        context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
        with urllib.request.urlopen(self.url + "/_stats", timeout=10, context=context) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_requests(path: Path, n: int) -> Path:
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as f:
            if sum(1 for _ in f) == n:
                return path
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"input": f"Question {i}: what is {i} squared, briefly?",
                                "id": i}) + "\n")
    return path


def run_client(cmd: list[str], timeout: float) -> tuple[float, float, float, int]:
    """Run ``cmd``; return (wall s, CPU s, peak RSS MB, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        sys.stderr.write(proc.stderr.read()[-2000:])
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code


def steady(per_second: list[int]) -> float:
    """Median of the per-second counts, leaving out the ramp-up and tail seconds."""
    if len(per_second) <= 4:
        return statistics.median(per_second) if per_second else 0.0
    return statistics.median(per_second[2:-2])


def measure(scenario: str, client: str, cmd: list[str], latency: float, n: int,
            out: Path, timeout: float, tls: Path | None = None) -> Figures:
    ep = Endpoint(latency, tls)
    try:
        cmd = [c.replace("{url}", ep.url) for c in cmd]
        cpu0 = ep.cpu_seconds()
        wall, cpu, rss, _code = run_client(cmd, timeout)
        server_cpu = ep.cpu_seconds() - cpu0
        stats = ep.stats()
    finally:
        ep.stop()
    counts = stats["per_second"]
    seconds = sorted(int(s) for s in counts)
    per_second = [counts.get(str(s), 0) for s in range(seconds[0], seconds[-1] + 1)] if seconds \
        else []
    served = stats["counts"].get("requests", 0)
    ok_lines = sum(1 for _ in out.open("rb")) if out.exists() else 0
    return Figures(scenario, client, served, ok_lines, round(wall, 2), steady(per_second),
                   round(served / wall, 1) if wall else 0.0,
                   round(cpu / max(served, 1) * 1e6, 1), round(rss, 1),
                   round(server_cpu / max(served, 1) * 1e6, 1), per_second)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--n0", type=int, default=100_000, help="requests at latency 0")
    p.add_argument("--rate", type=float, default=10_000, help="target req/s at 1 s latency")
    p.add_argument("--seconds", type=float, default=25, help="duration of the 1 s case")
    p.add_argument("--workers", type=int, default=2, help="llmframe --workers for the 1 s case")
    p.add_argument("--out", type=Path, default=HERE / "out")
    args = p.parse_args()
    if args.quick:
        args.n0, args.rate, args.seconds = 2_000, 400, 3
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="llmframe-bench-"))
    results: list[Figures] = []
    timeout = 600
    certs = certificates(tmp)  # https rows: serve-mock --tls-cert, clients trust its CA
    if certs is None:
        print("  trustme not installed (pip install -e '.[dev]'): no https rows",
              file=sys.stderr)
    else:
        os.environ["SSL_CERT_FILE"] = str(certs[0])
    tls = certs[1] if certs else None

    def llmframe_cmd(req: Path, out: Path, rps: float, conc: int, workers: int,
                     spec: str = "{url}") -> list[str]:
        cmd = [PY, "-m", "llmframe", "run", str(req), "-e", spec, "--rps", str(rps),
               "--concurrency", str(conc), "--save", str(out), "--errors",
               str(out.with_suffix(".err")), "--no-progress", "--timeout", "30"]
        return cmd + (["--workers", str(workers)] if workers > 1 else [])

    def base_cmd(req: Path, out: Path, rps: float, conc: int) -> list[str]:
        return [PY, str(HERE / "baseline_client.py"), str(req), str(out), "{url}",
                "--in-flight", str(conc), "--rps", str(rps)]

    # 1. latency 0: CPU per request, 256 in flight
    req0 = make_requests(tmp / "r0.jsonl", args.n0)
    https0 = [] if tls is None else [
        ("baseline aiohttp (https)", base_cmd(req0, tmp / "bh0.out", 0, 256)),
        ("llmframe run (https)", llmframe_cmd(req0, tmp / "lh0.out", 1e6, 256, 1))]
    for client, cmd in [
        ("baseline aiohttp", base_cmd(req0, tmp / "b0.out", 0, 256)),
        ("llmframe run", llmframe_cmd(req0, tmp / "l0.out", 1e6, 256, 1)),
        *https0,
        (f"llmframe run --workers {args.workers}",
         llmframe_cmd(req0, tmp / "w0.out", 1e6, 256, args.workers)),
        # token accounting on (estimate, buckets, settling), limits too high to bind
        ("llmframe run, tpm set", [*llmframe_cmd(req0, tmp / "t0.out", 1e6, 256, 1,
                                                 "url={url},tpm=1e12"), "--tpm", "1e12"]),
        # structured output: response_format on the wire, every answer parsed and validated
        ("llmframe run --schema", [*llmframe_cmd(req0, tmp / "s0.out", 1e6, 256, 1),
                                   "--schema", str(_schema_file(tmp))]),
    ]:
        out = Path(cmd[cmd.index("--save") + 1]) if "--save" in cmd else Path(cmd[3])
        results.append(measure("latency 0", client, cmd, 0.0, args.n0, out, timeout,
                               tls if client.endswith("(https)") else None))
        print(f"  {results[-1].scenario:<12} {client:<28} done", file=sys.stderr)

    # 2. latency 1 s at the target rate, ~1.35 x rate in flight
    n1 = int(args.rate * args.seconds)
    conc = int(args.rate * 1.35)
    req1 = make_requests(tmp / "r1.jsonl", n1)
    for client, cmd in [
        ("baseline aiohttp", base_cmd(req1, tmp / "b1.out", args.rate, conc)),
        ("llmframe run", llmframe_cmd(req1, tmp / "l1.out", args.rate, conc, 1)),
        (f"llmframe run --workers {args.workers}",
         llmframe_cmd(req1, tmp / "w1.out", args.rate, conc, args.workers)),
        *([] if tls is None else [(f"llmframe run --workers {args.workers} (https)",
                                   llmframe_cmd(req1, tmp / "wh1.out", args.rate, conc,
                                                args.workers))]),
    ]:
        out = Path(cmd[cmd.index("--save") + 1]) if "--save" in cmd else Path(cmd[3])
        results.append(measure("latency 1 s", client, cmd, 1.0, n1, out, timeout,
                               tls if client.endswith("(https)") else None))
        print(f"  {results[-1].scenario:<12} {client:<28} done", file=sys.stderr)

    # 3. memory flat in file size (latency 0)
    small, large = (args.n0 * 3 // 5, args.n0 * 12 // 5)
    for n in (small, large):
        req = make_requests(tmp / f"m{n}.jsonl", n)
        results.append(measure(f"memory {n:,}", "llmframe run",
                               llmframe_cmd(req, tmp / f"m{n}.out", 1e6, 256, 1), 0.0, n,
                               tmp / f"m{n}.out", timeout))
        print(f"  memory {n:,} done", file=sys.stderr)

    # 4. polars path vs the engine alone, in one process each
    polars = _polars_vs_engine(args.n0 if not args.quick else 2_000)

    # 5. the response cache: a rerun answered entirely from it, CLI and polars
    ep = Endpoint(0.0)
    try:
        cached = cached_runs(make_requests(tmp / "c.jsonl", args.n0 * 2), ep.url, tmp)
    finally:
        ep.stop()

    # 6. the TLS handshake on its own: client CPU per new connection, http vs https
    handshakes = None if certs is None else _handshakes(certs, 200 if args.quick else 2_000)

    _print_table(results, polars)
    _print_cached(cached)
    _print_https(results, handshakes, args.rate, args.workers)
    (args.out / "results.json").write_text(json.dumps(
        {"machine": _machine(), "results": [asdict(r) for r in results], "polars": polars,
         "cached": cached, "handshakes": handshakes}, indent=1))
    _plot([r for r in results if r.scenario == "latency 1 s"], args.out / "throughput_1s.png",
          args.rate)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


def _schema_file(tmp: Path) -> Path:
    """A small JSON Schema for the structured-output row (the endpoint builds the answer)."""
    path = tmp / "schema.json"
    path.write_text(json.dumps({"type": "object", "properties": {
        "answer": {"type": "string"}, "value": {"type": "integer"},
        "confident": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
    }, "required": ["answer", "value", "confident", "tags"]}))
    return path


def _handshakes(certs: tuple[Path, Path], n: int) -> dict[str, float]:
    http, https = Endpoint(0.0), Endpoint(0.0, certs[1])
    try:
        return handshake_cost(http.url, https.url, certs[0], n)
    finally:
        http.stop()
        https.stop()


def ramp(per_second: list[int], rate: float) -> int | None:
    """Seconds until the endpoint first served 90% of ``rate`` in one second.

    >>> ramp([100, 5000, 9500, 10000], 10000), ramp([10], 10000)
    (2, None)
    """
    return next((i for i, n in enumerate(per_second) if n >= 0.9 * rate), None)


def _print_https(results: list[Figures], handshakes: dict[str, float] | None, rate: float,
                 workers: int) -> None:
    by = {(r.scenario, r.client): r for r in results}
    http0, https0 = by.get(("latency 0", "llmframe run")), by.get(
        ("latency 0", "llmframe run (https)"))
    name = f"llmframe run --workers {workers}"
    http1, https1 = by.get(("latency 1 s", name)), by.get(("latency 1 s", f"{name} (https)"))
    if not (http0 and https0 and http1 and https1 and handshakes):
        return
    cpu = https0.client_cpu_us / http0.client_cpu_us
    share = https1.steady_rps / http1.steady_rps if http1.steady_rps else 0.0
    seconds = [ramp(r.per_second, rate) for r in (http1, https1)]
    shown = ["never" if s is None else f"{s} s" for s in seconds]
    connections = int(rate * 1.35)
    full = rate >= 8000  # the targets are for the full run (10,000/s)
    verdict = ("met" if https1.steady_rps >= 8000 and share >= 0.75 else "NOT met") if full \
        else f"not applicable at {rate:,.0f}/s"
    print(f"\nhttps vs http (the same endpoint behind TLS, same run; targets from issue 12):"
          f"\n  latency 0, client CPU: {https0.client_cpu_us:.1f} vs {http0.client_cpu_us:.1f}"
          f" µs/req = {cpu:.2f}x (target <= 1.5x: {'met' if cpu <= 1.5 else 'NOT met'})"
          f"\n  latency 1 s, {name}: steady {https1.steady_rps:,.0f} vs "
          f"{http1.steady_rps:,.0f} req/s = {share:.0%} (targets >= 8,000 and >= 75%: "
          f"{verdict})"
          f"\n  ramp to 90% of {rate:,.0f}/s: {shown[1]} over https, {shown[0]} over http"
          f"\n  handshake alone, client CPU per new connection (one after another): full "
          f"{handshakes['handshake']:,.0f} µs, resuming an earlier TLS session "
          f"{handshakes['handshake resumed']:,.0f} µs ({handshakes['https']:,.0f} / "
          f"{handshakes['https resumed']:,.0f} vs {handshakes['http']:,.0f} µs over http, "
          f"request included); ~{connections:,} connections at {rate:,.0f}/s and 1 s latency")


def _print_cached(cached: dict[str, dict[str, float]]) -> None:
    print("\nresponse cache, latency 0 (rows/s: of the run itself / of the whole process):")
    for name, fig in cached.items():
        print(f"  {name:<16} {fig['rows']:>9,.0f} rows  {fig['run_rows_s']:>9,.0f} rows/s  "
              f"{fig['process_rows_s']:>9,.0f} rows/s")


def _polars_vs_engine(n: int, repeat: int = 3) -> dict[str, float]:
    """Best of ``repeat`` alternating runs each (runs on 2 shared cores are noisy)."""
    times: dict[str, list[tuple[float, float]]] = {"engine": [], "polars": []}
    ep = Endpoint(0.0)
    try:
        for _ in range(repeat):
            for mode in times:
                code = subprocess.run(
                    [PY, str(HERE / "polars_vs_engine.py"), mode, str(n), ep.url],
                    capture_output=True, text=True, timeout=600)
                wall, cpu = code.stdout.strip().splitlines()[-1].split()
                times[mode].append((float(wall), float(cpu)))
    finally:
        ep.stop()
    out = {}
    for mode, values in times.items():
        out[f"{mode}_wall"] = min(w for w, _ in values)
        out[f"{mode}_cpu"] = min(c for _, c in values)
    out["wall_ratio"] = round(out["polars_wall"] / out["engine_wall"], 3)
    out["cpu_ratio"] = round(out["polars_cpu"] / out["engine_cpu"], 3)
    return out


def _machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def _print_table(results: list[Figures], polars: dict[str, float]) -> None:
    print(f"\nllmframe benchmark — {_machine()} (clients and endpoint share these cores)\n")
    head = (f"{'scenario':<16} {'client':<34} {'requests':>9} {'steady req/s':>12} "
            f"{'overall req/s':>13} {'client CPU µs/req':>17} {'peak RSS MB':>11} "
            f"{'endpoint CPU µs/req':>19}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r.scenario:<16} {r.client:<34} {r.requests:>9,} {r.steady_rps:>12,.0f} "
              f"{r.overall_rps:>13,.0f} {r.client_cpu_us:>17,.1f} {r.client_rss_mb:>11,.1f} "
              f"{r.server_cpu_us:>19,.1f}")
    by = {(r.scenario, r.client): r for r in results}
    plain = by.get(("latency 0", "llmframe run"))
    tpm = by.get(("latency 0", "llmframe run, tpm set"))
    if plain and tpm and plain.client_cpu_us:
        change = tpm.client_cpu_us / plain.client_cpu_us - 1
        print(f"\ntoken limits on (tpm set, not binding): client CPU {tpm.client_cpu_us:.1f} "
              f"vs {plain.client_cpu_us:.1f} µs/req ({change:+.0%})")
    schema = by.get(("latency 0", "llmframe run --schema"))
    if plain and schema and plain.client_cpu_us:
        change = schema.client_cpu_us / plain.client_cpu_us - 1
        print(f"structured output (--schema, every answer validated): client CPU "
              f"{schema.client_cpu_us:.1f} vs {plain.client_cpu_us:.1f} µs/req ({change:+.0%})")
    print(f"\npolars df.llm.complete vs the engine alone (latency 0, best of 3): "
          f"wall {polars['polars_wall']:.2f} vs {polars['engine_wall']:.2f} s "
          f"(ratio {polars['wall_ratio']:.3f}), CPU {polars['polars_cpu']:.2f} vs "
          f"{polars['engine_cpu']:.2f} s (ratio {polars['cpu_ratio']:.3f})")


def _plot(results: list[Figures], path: Path, rate: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for r in results:
        ax.plot(range(len(r.per_second)), r.per_second, marker=".", label=r.client)
    ax.axhline(rate, color="grey", linestyle="--", linewidth=1, label=f"target {rate:,.0f}/s")
    ax.set_xlabel("second of the run")
    ax.set_ylabel("requests/s (endpoint clock)")
    ax.set_title("Throughput at 1 s latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
