"""The notebooks run top to bottom in a real Jupyter kernel, and show what they should."""

import ast
import re
import time

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

from conftest import ROOT


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append(out["text"])
        data = out.get("data", {})
        parts.append(data.get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_quickstart_runs_and_shows_results():
    path = ROOT / "notebooks" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "1000 prompts" in text
    assert "rows answered: 1000, errors: 0" in text
    assert "aligned: True" in text
    # the per-endpoint split follows the weights 3:2:1
    found = re.search(r"shares: (\{.*\})", text)
    assert found, text
    shares = ast.literal_eval(found.group(1))
    assert shares.keys() == {"fast", "medium", "slow-flaky"}, text
    # weights 3:2:1; the flaky endpoint's 429s (Retry-After pauses, AIMD) move a little of
    # its share to the others
    assert shares["fast"] > shares["medium"] > shares["slow-flaky"] > 0.08
    assert abs(shares["fast"] - 0.5) < 0.07 and abs(shares["medium"] - 1 / 3) < 0.07
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the latency plot
    assert "One fact about tides" in text
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.slow
def test_kernel_interrupt_stops_the_call_and_keeps_answered_rows():
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        setup = (
            "import polars as pl, llmframe\n"
            "from llmframe.testing import MockServer\n"
            "srv = MockServer(latency=(0.05, 60)).start()\n"
            "df = pl.DataFrame({'p': [f'r{i}' for i in range(300)]})\n"
        )
        reply = kc.execute_interactive(setup, timeout=60)
        assert reply["content"]["status"] == "ok"
        msg_id = kc.execute("out = df.llm.complete('p', endpoints=srv.url, progress=False)")
        time.sleep(2.0)
        started = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=30)
        took = time.monotonic() - started
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "Interrupted"
        assert took < 15
        outputs = []
        check = ("p = llmframe.recover()\n"
                 "print(p.height, p['response'].is_not_null().sum(),"
                 " p['error'].str.contains('interrupted').sum())")
        reply = kc.execute_interactive(
            check, timeout=60,
            output_hook=lambda m: outputs.append(m["content"].get("text", "")))
        assert reply["content"]["status"] == "ok"
        height, answered, cut = map(int, "".join(outputs).split())
        assert height == 300 and answered > 0 and answered + cut == 300
        # the kernel still works: a second call in the same kernel runs fine
        reply = kc.execute_interactive(
            "srv2 = MockServer().start()\n"
            "assert df.head(5).llm.complete('p', endpoints=srv2.url, progress=False)"
            "['response'].to_list() == [f'echo: r{i}' for i in range(5)]\n"
            "srv.stop(); srv2.stop()", timeout=60)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
