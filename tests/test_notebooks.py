"""The notebooks run top to bottom in a real Jupyter kernel, and show what they should."""

import ast
import queue
import re
import time

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

from conftest import ROOT, wait_until


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
    assert len(images) == 2  # the latency plot, the spend against the budget
    assert "One fact about tides" in text
    # the paid-provider part: an estimate, a budget that stops the run, spend under it
    assert "dry run: 300 rows to send, 0 invalid" in text and "estimated cost: $" in text
    found = re.search(r"stopped by the budget: (\d+) rows not sent", text)
    assert found and 0 < int(found.group(1)) < 300, text
    spent = re.search(r"spent \$([0-9.]+) of \$0.02 on (\d+) rows; refusals seen by the "
                      r"provider: (\d+)", text)
    assert spent and 0.015 < float(spent.group(1)) <= 0.02, text
    assert int(spent.group(2)) + int(found.group(1)) == 300 and spent.group(3) == "0", text
    # structured output: a Struct column from a pydantic model, unnested and filtered
    assert "response dtype: Struct({'city': String, 'country': String, 'coastal': Boolean})" \
        in text, text
    assert "echo: Where is Toulon?" in text and "coastal" in text
    # the cache: the second call sent nothing
    assert "requests sent for both calls: 4; second call cached: [True, True, True, True]" \
        in text, text
    assert "same answers: True" in text
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors



def _reply_to(kc, msg_id, timeout=60.0):
    """The shell reply to ``msg_id``; fail if none comes within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise queue.Empty
            reply = kc.get_shell_msg(timeout=left)
        except queue.Empty:
            pytest.fail(f"the kernel sent no reply to the cell within {timeout:g} s")
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


@pytest.mark.slow
def test_kernel_interrupt_stops_the_call_and_keeps_answered_rows(mock_server):
    # The endpoint is served from this process so the test can see what reached it: the
    # first `answered_first` requests are answered at once, every later one hangs (is never
    # answered).
    rows, answered_first, window = 300, 20, 50
    srv = mock_server(script=[None] * answered_first, faults={"hang": 1.0})
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        setup = (
            "import polars as pl, llmframe\n"
            f"df = pl.DataFrame({{'p': [f'r{{i}}' for i in range({rows})]}})\n"
        )
        reply = kc.execute_interactive(setup, timeout=60)
        assert reply["content"]["status"] == "ok"
        # timeout=600: no attempt can time out (and end the call) before the deadlines below
        msg_id = kc.execute(f"out = df.llm.complete('p', endpoints={srv.url!r}, "
                            f"concurrency={window}, timeout=600, progress=False)")
        # mid-run: every answer has been sent and the whole window is held by hanging
        # requests, so the call cannot finish by itself
        wait_until(lambda: srv.counts["ok"] >= answered_first and srv.counts["hang"] >= window,
                    lambda: f"{answered_first} answered and {window} hanging requests on the "
                            f"server; it has {dict(srv.counts)}")
        km.interrupt_kernel()
        reply = _reply_to(kc, msg_id)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "Interrupted"
        # stopped promptly: the call returned while its requests still hung on the server (it
        # waited neither for answers that never come nor for attempts to time out), and sent
        # nothing after the interrupt: no further rows, no retries
        assert srv.counts["requests"] == answered_first + window, dict(srv.counts)
        assert srv.counts["hang"] == window, dict(srv.counts)
        outputs = []
        check = ("p = llmframe.recover()\n"
                 "print(p.height, p['response'].is_not_null().sum(),"
                 " p['error'].str.contains('interrupted').sum())")
        for _ in range(5):  # a request that reaches the kernel while it still aborts after
            reply = kc.execute_interactive(  # the interrupt is "aborted", never run: again
                check, timeout=60,
                output_hook=lambda m: outputs.append(m["content"].get("text", "")))
            if reply["content"]["status"] != "aborted":
                break
            time.sleep(0.5)
        assert reply["content"]["status"] == "ok"
        height, answered, cut = map(int, "".join(outputs).split())
        # every answer the server sent is kept; the hanging and never-sent rows are marked
        # "not answered: interrupted" (not timed out, not lost)
        assert (height, answered, cut) == (rows, answered_first, rows - answered_first)
        # the kernel still works: a second call in the same kernel runs fine
        again = mock_server()
        reply = kc.execute_interactive(
            f"assert df.head(5).llm.complete('p', endpoints={again.url!r}, progress=False)"
            "['response'].to_list() == [f'echo: r{i}' for i in range(5)]", timeout=60)
        assert reply["content"]["status"] == "ok"
        assert again.counts["ok"] == 5
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
