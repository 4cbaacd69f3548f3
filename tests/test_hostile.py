"""Hostile input files: never a traceback; every non-blank line ends as exactly one result
or one error row with its line index and a reason."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmframe import RunConfig, iter_rows
from llmframe._files import FileRun, run_file_async
from llmframe._runner import run_sync
from llmframe.testing import MockServer

BOM = b"\xef\xbb\xbf"


def expected_lines(content: bytes) -> list[int]:
    """Indices of the non-blank lines, splitting as a binary file iterates (on b'\\n')."""
    pieces = content.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    out = []
    for i, line in enumerate(pieces):
        if i == 0 and line.startswith(BOM):
            line = line[len(BOM):]
        if line.strip():
            out.append(i)
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)
hostile_line = st.one_of(
    st.binary(max_size=60),                                            # any bytes at all
    st.text(max_size=40).map(lambda t: json.dumps({"input": t}).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),                 # non-object JSON too
    st.text(max_size=10).map(lambda t: b'{"input": "' + t.encode("utf-8", "surrogatepass")
                             + b'\\ud800"}'),                          # lone surrogate
    st.just(b'{"input": "a\\u0000b", "input": "dup"}'),                # NUL, duplicate keys
    st.just(b'{"input": "crlf"}\r'),
    st.just(b"\x00\x00"),
    st.just(b"[" * 5000 + b"]" * 5000),                                # deep nesting
    st.just(b"   "),
)
hostile_file = st.tuples(st.booleans(), st.lists(hostile_line, max_size=12)).map(
    lambda t: (BOM if t[0] else b"") + b"\n".join(t[1]) + b"\n")


@settings(max_examples=300, deadline=None)
@given(hostile_file)
def test_reader_yields_one_row_per_non_blank_line(content):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "h.jsonl"
        path.write_bytes(content)
        rows = list(iter_rows(path))
    assert [r[0] for r in rows] == expected_lines(content)
    for index, payload, reason in rows:
        if reason is not None:
            assert f"line {index + 1}:" in reason
        else:
            assert isinstance(payload, dict)


@pytest.fixture(scope="module")
def server():
    with MockServer() as srv:
        yield srv


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=hostile_file)
def test_every_line_ends_as_one_result_or_one_error(server, tmp_path_factory, content):
    d = tmp_path_factory.mktemp("h")
    path = d / "h.jsonl"
    path.write_bytes(content)
    job = FileRun(path, d / "s.jsonl", d / "e.jsonl",
                  RunConfig([server.url], max_attempts=1), progress=False)
    run_sync(lambda: run_file_async(job))
    saved = [json.loads(x) for x in job.save.read_bytes().splitlines()]
    errors = [json.loads(x) for x in job.errors.read_bytes().splitlines()]
    got = sorted([r["index"] for r in saved] + [r["index"] for r in errors])
    assert got == expected_lines(content)
    for r in errors:
        assert r["error"]  # a reason, always
    for r in saved:
        assert r["response"] == "echo: " + r["request"]["input"]


def test_huge_lines_and_specific_cases_through_the_cli(tmp_path, server):
    big = "x" * 3_000_000
    lines = [
        BOM + json.dumps({"input": "first, after a BOM"}).encode(),
        json.dumps({"input": big}).encode(),                      # 3 MB, valid
        b'{"input": "' + b"y" * 2_000_000 + b"\xff" + b'"}',      # 2 MB, not UTF-8
        json.dumps({"input": "crlf line"}).encode() + b"\r",
        b'{"input": "lone \\udc00 surrogate"}',
        b"[" * 100_000,
        b'{"input": "nul \\u0000 inside"}',
        b'{"input": "a", "input": "b"}',
        b"",
        b"7",
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    proc = subprocess.run([sys.executable, "-m", "llmframe", "run", str(path), "-e", server.url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    saved = {json.loads(x)["index"]: json.loads(x)
             for x in (tmp_path / "hostile.save.jsonl").read_bytes().splitlines()}
    errors = {json.loads(x)["index"]: json.loads(x)
              for x in (tmp_path / "hostile.errors.jsonl").read_bytes().splitlines()}
    assert sorted(saved) == [0, 1, 3, 6, 7]
    assert sorted(errors) == [2, 4, 5, 9]
    assert saved[1]["response"] == "echo: " + big
    assert saved[6]["response"] == "echo: nul \x00 inside"
    assert saved[7]["response"] == "echo: b"  # duplicate keys: the last wins
    assert "not valid UTF-8" in errors[2]["error"]
    assert "line 5" in errors[4]["error"] and "line 6" in errors[5]["error"]
    assert "expected a JSON object" in errors[9]["error"]
