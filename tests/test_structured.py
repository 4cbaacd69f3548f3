"""Structured output end to end: schema= on the polars calls and --schema on the CLI, against
the project's test server answering JSON built from the schema (and refusing forms, and
breaking the schema, on request)."""

import json

import polars as pl
import pytest
from test_cli import read_jsonl, run_cli, write_requests

import llmframe
from llmframe import ConfigError

from conftest import run_rows

CITY = pl.Struct({"city": pl.String, "population": pl.Int64, "coastal": pl.Boolean,
                  "tags": pl.List(pl.String)})
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"},
                   "coastal": {"type": "boolean"},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["city", "population", "coastal", "tags"],
}


def expected(prompt: str) -> dict:
    """What the test server builds for CITY from a prompt (see testing/_structured)."""
    return {"city": f"echo: {prompt}", "population": len(prompt),
            "coastal": len(prompt) % 2 == 0, "tags": [f"echo: {prompt}"]}


@pytest.mark.parametrize("kind", ["struct", "json_schema", "pydantic"])
def test_response_column_is_the_struct_of_the_schema(mock_server, kind):
    srv = mock_server(latency=0.002)
    if kind == "pydantic":
        pydantic = pytest.importorskip("pydantic")

        class City(pydantic.BaseModel):
            city: str
            population: int
            coastal: bool
            tags: list[str]

        schema = City
    else:
        schema = CITY if kind == "struct" else CITY_SCHEMA
    prompts = [f"city number {i}" for i in range(40)] + [None]
    df = pl.DataFrame({"p": prompts})
    out = df.llm.complete("p", endpoints=[srv.url], schema=schema, progress=False)
    assert out.schema["response"] == CITY
    assert out["response"].to_list() == [expected(p) for p in prompts[:-1]] + [None]
    assert out["error"].null_count() == len(out)
    # typed columns people can filter and join
    assert out.filter(pl.col("response").struct.field("population") > 13).height == 30
    assert srv.counts["json_schema"] == 40


def test_expression_form_knows_its_dtype_before_sending(mock_server):
    srv = mock_server()
    expr = pl.col("p").llm.complete(endpoints=[srv.url], schema=CITY, progress=False)
    lazy = pl.LazyFrame({"p": ["a", "bb"]}).with_columns(expr.alias("out"))
    assert lazy.collect_schema()["out"] == pl.Struct({"response": CITY, "error": pl.String})
    assert srv.counts["requests"] == 0
    out = lazy.collect()
    assert out["out"].struct.field("response").to_list() == [expected("a"), expected("bb")]


def test_a_server_refusing_json_schema_is_asked_in_json_object_and_it_is_remembered(
        mock_server):
    llama = mock_server(response_formats=("json_object",))  # llama.cpp's server
    openai_like = mock_server(response_formats=("json_schema",))
    df = pl.DataFrame({"p": [f"p{i}" for i in range(60)]})
    out = df.llm.complete("p", endpoints=[llama.url, openai_like.url], schema=CITY,
                          concurrency=1, progress=False, metadata=True)
    assert out["error"].null_count() == 60
    assert out["response"].to_list() == [expected(f"p{i}") for i in range(60)]
    assert out["attempts"].to_list() == [1] * 60  # a refused form is not the row's attempt
    assert llama.counts["rejected_json_schema"] == 1  # asked once, then remembered
    assert llama.counts["json_object"] == 30 and openai_like.counts["json_schema"] == 30
    assert openai_like.counts.get("rejected_json_object", 0) == 0


def test_with_many_in_flight_the_switch_happens_once(mock_server):
    llama = mock_server(response_formats=("json_object",), latency=0.01)
    results, _stats = run_rows([f"q{i}" for i in range(300)], [llama.url], schema=CITY,
                              concurrency=64)
    assert all(r.ok for r in results.values())
    # only what was in flight before the first refusal came back was refused
    assert llama.counts["rejected_json_schema"] <= 64
    assert llama.counts["json_object"] == 300


def test_an_endpoint_refusing_every_form_leaves_and_its_rows_go_elsewhere(mock_server):
    plain = mock_server(response_formats=())
    good = mock_server()
    results, stats = run_rows([f"q{i}" for i in range(50)], [plain.url, good.url],
                              schema=CITY, concurrency=1)
    assert all(r.ok for r in results.values())
    assert all(r.attempts == 1 for r in results.values())
    assert "structured output" in stats.endpoints[0].note
    # alone, every row ends in an error naming both forms: never a crash
    results, _ = run_rows([f"q{i}" for i in range(5)], [plain.url], schema=CITY)
    for r in results.values():
        assert not r.ok and r.error_type in ("format_rejected", "unavailable")
        assert "json_schema" in r.error and "json_object" in r.error


def test_an_answer_breaking_the_schema_is_retried_elsewhere(mock_server):
    bad = mock_server(faults={"badjson": 1.0})
    good = mock_server()
    results, _stats = run_rows([f"q{i}" for i in range(80)], [bad.url, good.url],
                              schema=CITY, max_attempts=3)
    assert all(r.ok for r in results.values())
    assert all(r.response == expected(f"q{r.index}") for r in results.values())
    retried = [r for r in results.values() if r.attempts == 2]
    assert retried and all(r.endpoint == good.url for r in retried)
    assert bad.counts["badjson"] == len(retried)


@pytest.mark.parametrize("fault", ["badjson", "notjson"])
def test_an_answer_that_keeps_breaking_the_schema_ends_as_an_error_with_its_text(
        mock_server, fault):
    srv = mock_server(faults={fault: 1.0})
    df = pl.DataFrame({"p": ["x1", "x2"]})
    out = df.llm.complete("p", endpoints=[srv.url], schema=CITY, max_attempts=2,
                          progress=False, metadata=True)
    assert out["response"].to_list() == [None, None]  # never a half-filled struct
    assert out["error_type"].to_list() == ["invalid_output"] * 2
    assert all("does not match the schema" in e for e in out["error"])
    assert out["attempts"].to_list() == [2, 2]
    raw = out["raw_response"].to_list()
    assert all(isinstance(t, str) and t for t in raw)
    if fault == "notjson":
        assert all(t.startswith("Sure!") for t in raw)


def test_a_first_bad_answer_is_retried_and_the_second_kept(mock_server):
    srv = mock_server(first_fault="badjson")
    results, _ = run_rows([f"q{i}" for i in range(20)], [srv.url], schema=CITY)
    assert all(r.ok and r.attempts == 2 for r in results.values())


def test_an_answer_cut_by_max_tokens_is_not_retried(mock_server):
    srv = mock_server()
    results, _ = run_rows(["a long prompt of many words to cut"], [srv.url], schema=CITY,
                          params={"max_tokens": 3})
    r = results[0]
    assert r.error_type == "invalid_output" and r.attempts == 1
    assert "max_tokens" in r.error and r.raw_response


def test_bad_schemas_fail_before_sending(mock_server):
    srv = mock_server()
    df = pl.DataFrame({"p": ["a"]})
    cases = [
        ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"},
                                                           {"type": "integer"}]}}}, "a"),
        ({"type": "string"}, "object"),
        (pl.Struct({"a": pl.Object}), "a"),
    ]
    for schema, named in cases:
        with pytest.raises(ConfigError, match=named):
            df.llm.complete("p", endpoints=[srv.url], schema=schema, progress=False)
    with pytest.raises(ConfigError, match="response_format"):
        df.llm.complete("p", endpoints=[srv.url], schema=CITY, progress=False,
                        params={"response_format": {"type": "json_object"}})
    with pytest.raises(ConfigError, match="raw"):
        df.llm.complete("p", endpoints=[srv.url], schema=CITY, api="raw", progress=False)
    assert srv.counts["requests"] == 0


def test_cli_schema_saves_the_parsed_object_and_keeps_raw_text_of_failures(
        tmp_path, mock_server):
    srv = mock_server(script=[None] * 10 + ["badjson"] * 20)
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(CITY_SCHEMA))
    req = write_requests(tmp_path / "req.jsonl", [{"input": f"town {i}", "id": i}
                                                  for i in range(12)])
    proc = run_cli("run", req, "-e", srv.url, "--schema", schema, "--max-attempts", 2,
                   "--concurrency", 1)
    assert proc.returncode == 1, proc.stderr
    saved = read_jsonl(tmp_path / "req.save.jsonl")
    errors = read_jsonl(tmp_path / "req.errors.jsonl")
    assert len(saved) == 10 and len(errors) == 2
    for line in saved:
        assert line["response"] == expected(line["request"]["input"])
    for line in errors:
        assert line["error_type"] == "invalid_output"
        assert json.loads(line["raw_response"]) != expected(line["input"])


def test_cli_bad_schema_file_exits_2_naming_it(tmp_path, mock_server):
    srv = mock_server()
    req = write_requests(tmp_path / "req.jsonl", [{"input": "a"}])
    for text, says in [("{not json", "not valid JSON"), ('"a string"', "JSON Schema object"),
                       ('{"type": "object", "properties": {"a": {"type": ["string", '
                        '"integer"]}}}', "a")]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        proc = run_cli("run", req, "-e", srv.url, "--schema", bad)
        assert proc.returncode == 2, proc.stderr
        assert "bad.json" in proc.stderr and says in proc.stderr
    proc = run_cli("run", req, "-e", srv.url, "--schema", tmp_path / "missing.json")
    assert proc.returncode == 2 and "missing.json" in proc.stderr
    assert srv.counts["requests"] == 0


def test_file_round_trip_with_a_schema(tmp_path, mock_server):
    srv = mock_server()
    req = write_requests(tmp_path / "req.jsonl", [{"input": f"t{i}"} for i in range(5)])
    df = llmframe.read_jsonl(req).llm.complete("input", endpoints=[srv.url], schema=CITY,
                                               progress=False, metadata=True)
    saved, errors = llmframe.write_results(df, tmp_path / "s.jsonl", tmp_path / "e.jsonl")
    assert (saved, errors) == (5, 0)
    for line in read_jsonl(tmp_path / "s.jsonl"):
        assert line["response"] == expected(line["request"]["input"])


def _chat(content, **message):
    return json.dumps({"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": content, **message}}]}).encode()


def test_a_blip_naming_response_format_after_answers_is_retried_not_a_refusal():
    """A proxy's 500 that echoes the request (and so names response_format) at an endpoint
    that already answered in that form is a blip: retried, and the form is kept."""
    from llmframe.testing import MockTransport

    calls = []

    def handler(body):
        calls.append(json.loads(body)["response_format"]["type"])
        if len(calls) in (3, 7):
            return 500, {}, b'{"error": "Connection error, kwargs={response_format: ...}"}'
        return 200, {}, _chat(json.dumps({"city": "x", "population": 1, "coastal": True,
                                           "tags": []}))

    transport = MockTransport(handler)
    results, _ = run_rows([f"q{i}" for i in range(10)], ["http://127.0.0.1:9/v1"],
                          schema=CITY, transport=lambda url, headers: transport,
                          concurrency=1, backoff_initial=0.01)
    assert all(r.ok for r in results.values())
    assert set(calls) == {"json_schema"} and len(calls) == 12


def test_a_refusal_is_kept_not_retried_and_a_value_polars_refuses_errs_alone():
    from llmframe.testing import MockTransport

    refusal = MockTransport(lambda body: (200, {}, _chat(None, refusal="I can't help.")))
    results, _ = run_rows(["q"], ["http://127.0.0.1:9/v1"], schema=CITY,
                          transport=lambda url, headers: refusal)
    r = results[0]
    assert r.error_type == "invalid_output" and "refused" in r.error
    assert r.raw_response == "I can't help." and r.attempts == 1
    # a value polars cannot hold (if one ever got past the check) errs alone, not the call
    from llmframe._columns import struct_column

    dtype = pl.Struct({"p": pl.Int64, "q": pl.List(pl.String)})
    column, refused = struct_column("r", [{"p": 1, "q": ["a"]}, {"p": 10**30, "q": []}, None],
                                    dtype)
    assert column.dtype == dtype and list(refused) == [1]
    assert column.to_list() == [{"p": 1, "q": ["a"]}, None, None]


def test_decimal_fields_round_trip_through_the_files(tmp_path, mock_server):
    srv = mock_server()
    req = write_requests(tmp_path / "req.jsonl", [{"input": f"item {i}"} for i in range(3)])
    schema = pl.Struct({"item": pl.String, "price": pl.Decimal(10, 2)})
    df = llmframe.read_jsonl(req).llm.complete("input", endpoints=[srv.url], schema=schema,
                                               progress=False, metadata=True)
    assert df.schema["response"] == schema and df["error"].null_count() == 3
    assert llmframe.write_results(df, tmp_path / "s.jsonl", tmp_path / "e.jsonl") == (3, 0)
    assert all(isinstance(line["response"]["price"], float)
               for line in read_jsonl(tmp_path / "s.jsonl"))
