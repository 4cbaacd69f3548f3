"""TLS for the benchmark: a test CA and server certificate, and the handshake cost alone.

    python bench/tls.py URL CA.pem [N]   # client CPU per new connection, TCP vs TLS

The https rows of ``bench/run.py`` use :func:`certificates` (trustme, a dev dependency:
``pip install -e ".[dev]"``) to serve ``llmframe serve-mock --tls-cert`` and point the
clients at the CA with ``SSL_CERT_FILE``. :func:`handshake_cost` opens ``N`` connections
through llmframe's own transport (64 at a time, one request each, then closed) and reports
client CPU per connection, plain TCP and TLS, so the handshake's share is seen on its own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path


def certificates(tmp: Path) -> tuple[Path, Path] | None:
    """``(ca.pem, server.pem)`` for 127.0.0.1 (ECDSA P-256, as trustme issues), or None
    without trustme."""
    try:
        import trustme
    except ImportError:
        return None
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, server_file = tmp / "ca.pem", tmp / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(server_file))
    return ca_file, server_file


async def _connections(url: str, ca: str | None, n: int) -> float:
    from llmframe._fasthttp import FastTransport
    from llmframe._tls import client_context

    context = client_context(ca_bundle=ca) if url.startswith("https://") else None
    gate = asyncio.Semaphore(64)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()

    async def one() -> None:
        async with gate:
            transport = FastTransport(url + "/chat/completions", {}, ssl_context=context)
            try:
                await transport.post(body)
            finally:
                await transport.close()

    await one()  # warm: imports, address resolution
    start = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    return (time.process_time() - start) / n * 1e6


def handshake_cost(http_url: str, https_url: str, ca: Path, n: int = 2000) -> dict[str, float]:
    """Client CPU µs per new connection (with its one request), over http and https, in a
    fresh process each (uvloop, as llmframe runs)."""
    out = {}
    for name, url in (("http", http_url), ("https", https_url)):
        proc = subprocess.run([sys.executable, __file__, url, str(ca), str(n)],
                              capture_output=True, text=True, timeout=300, check=True)
        out[name] = float(proc.stdout.strip().splitlines()[-1])
    out["handshake"] = round(out["https"] - out["http"], 1)
    return out


if __name__ == "__main__":
    from llmframe._runner import new_event_loop

    loop = new_event_loop()
    try:
        cost = loop.run_until_complete(_connections(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    finally:
        loop.close()
    print(f"{cost:.1f}")
