"""Both transports against servers that are not ours: aiohttp.web (chunked, gzip) and the
standard library's http.server (HTTP/1.0, body delimited by close)."""

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiohttp import web

from llmframe._runner import new_event_loop

from conftest import run_rows


def _chat(text: str) -> dict:
    return {"choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"web: {text}"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2}}


@pytest.fixture
def aiohttp_server():
    """An aiohttp.web app answering chat requests chunked, gzipped or plain by the prompt."""
    loop = new_event_loop()
    state = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        text = doc["messages"][-1]["content"]
        if text.startswith("status"):
            return web.json_response({"error": "nope"}, status=int(text.split()[1]),
                                     headers={"Retry-After": "0"})
        body = json.dumps(_chat(text)).encode()
        if text.startswith("chunked"):
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(body), 7):
                await resp.write(body[i:i + 7])
            await resp.write_eof()
            return resp
        if text.startswith("gzip"):
            return web.Response(body=gzip.compress(body), content_type="application/json",
                                headers={"Content-Encoding": "gzip"})
        return web.Response(body=body, content_type="application/json")

    async def start():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        return runner.addresses[0][1]

    port = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/v1"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(state["runner"].cleanup())
    loop.close()


@pytest.mark.parametrize("transport", ["fast", "aiohttp"])
def test_chunked_gzip_and_plain_bodies(aiohttp_server, transport):
    prompts = [f"{kind} {i}" for i in range(30) for kind in ("chunked", "gzip", "plain")]
    results, _ = run_rows(prompts, [aiohttp_server], transport=transport, concurrency=8)
    assert [results[i].response for i in range(len(prompts))] == [f"web: {p}" for p in prompts]


@pytest.mark.parametrize("transport", ["fast", "aiohttp"])
def test_http_errors_from_a_foreign_server(aiohttp_server, transport):
    results, _ = run_rows(["status 422", "status 503"], [aiohttp_server], transport=transport,
                          max_attempts=2, backoff_initial=0.01)
    assert results[0].status == 422 and results[0].attempts == 1
    assert results[1].status == 503 and results[1].attempts == 2


class _Http10(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # no keep-alive; the body ends when the connection closes

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        doc = json.loads(self.rfile.read(length))
        body = json.dumps(_chat(doc["messages"][-1]["content"])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if "no-length" not in doc["messages"][-1]["content"]:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("transport", ["fast", "aiohttp"])
def test_http10_server_with_and_without_content_length(transport):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Http10)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        prompts = [f"q{i}" if i % 2 else f"no-length {i}" for i in range(20)]
        results, _ = run_rows(prompts, [url], transport=transport, concurrency=4)
        assert [results[i].response for i in range(20)] == [f"web: {p}" for p in prompts]
    finally:
        server.shutdown()
        server.server_close()


def test_localhost_name_resolves_once_and_falls_back_between_addresses(mock_server):
    srv = mock_server()  # listens on 127.0.0.1 only; "localhost" may resolve to ::1 first
    url = srv.url.replace("127.0.0.1", "localhost")
    results, _ = run_rows([f"q{i}" for i in range(40)], [url], transport="fast")
    assert all(results[i].response == f"echo: q{i}" for i in range(40))
