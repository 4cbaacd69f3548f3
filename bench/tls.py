"""TLS for the benchmark: a test CA and server certificate, and the handshake cost alone.

    python bench/tls.py URL CA.pem N 0|1   # client CPU per new connection (1: resumed)

The https rows of ``bench/run.py`` use :func:`certificates` (trustme, a dev dependency:
``pip install -e ".[dev]"``) to serve ``llmframe serve-mock --tls-cert`` and point the
clients at the CA with ``SSL_CERT_FILE``. :func:`handshake_cost` opens ``N`` connections
one after another through llmframe's own transport (one request each, then closed) and
reports client CPU per connection: plain TCP, TLS with a full handshake, and TLS resuming
an earlier session; so the handshake's share is seen on its own.
"""

from __future__ import annotations

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


async def _connections(url: str, ca: str | None, n: int, resume: bool) -> float:
    from llmframe._fasthttp import FastTransport
    from llmframe._tls import client_context

    context = client_context(ca_bundle=ca) if url.startswith("https://") else None
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    shared = FastTransport(url + "/chat/completions", {}, ssl_context=context)

    async def one() -> None:  # a new connection each time; resumed: in the same transport
        transport = shared if resume else FastTransport(url + "/chat/completions", {},
                                                        ssl_context=context)
        await transport.post(body)
        await transport.close()

    await one()  # warm: imports, address resolution, a first session
    start = time.process_time()
    for _ in range(n):
        await one()
    return (time.process_time() - start) / n * 1e6


def handshake_cost(http_url: str, https_url: str, ca: Path, n: int = 2000) -> dict[str, float]:
    """Client CPU µs per new connection (with its one request): http, https with a full
    handshake, https resuming the transport's TLS session (as llmframe's later connections
    do), each in a fresh process (uvloop, as llmframe runs)."""
    out = {}
    for name, url, resume in (("http", http_url, "0"), ("https", https_url, "0"),
                              ("https resumed", https_url, "1")):
        proc = subprocess.run([sys.executable, __file__, url, str(ca), str(n), resume],
                              capture_output=True, text=True, timeout=300, check=True)
        out[name] = float(proc.stdout.strip().splitlines()[-1])
    out["handshake"] = round(out["https"] - out["http"], 1)
    out["handshake resumed"] = round(out["https resumed"] - out["http"], 1)
    return out


if __name__ == "__main__":
    from llmframe._runner import new_event_loop

    loop = new_event_loop()
    try:
        cost = loop.run_until_complete(_connections(sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                                    sys.argv[4] == "1"))
    finally:
        loop.close()
    print(f"{cost:.1f}")
