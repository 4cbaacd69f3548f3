"""The mock server's structured output over HTTP: JSON built from the schema, the forms a
server accepts (and how it refuses the others), and the badjson/notjson faults."""

from __future__ import annotations

import http.client
import json
from typing import Any

import openai
import orjson
import pytest

from llmframe.testing import FAULTS, MockServer, MockState

CITY = {"type": "object", "additionalProperties": False, "required": ["city", "pop"],
        "properties": {"city": {"type": "string"}, "pop": {"type": "integer"}}}


def _conn(srv: MockServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)


def _post(srv: MockServer, doc: dict[str, Any],
          path: str = "/v1/chat/completions") -> tuple[int, Any]:
    conn = _conn(srv)
    try:
        conn.request("POST", path, body=orjson.dumps(doc),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


def _chat(prompt: str, response_format: Any = None, **extra: Any) -> dict[str, Any]:
    doc = {"model": "m", "messages": [{"role": "system", "content": "answer in JSON"},
                                      {"role": "user", "content": prompt}], **extra}
    if response_format is not None:
        doc["response_format"] = response_format
    return doc


def _schema_form(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema,
                                                   "strict": True}}


def _object_form(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "json_object"} if schema is None else {"type": "json_object",
                                                           "schema": schema}


def _content(srv: MockServer, prompt: str, response_format: Any) -> str:
    status, body = _post(srv, _chat(prompt, response_format))
    assert status == 200, body
    return body["choices"][0]["message"]["content"]


PERSON = {"type": "object", "properties": {
    "name": {"type": "string"},
    "address": {"type": "object", "properties": {"street": {"type": "string"},
                                                 "zip": {"type": "integer"}}},
    "born": {"type": "string", "format": "date"},
    "seen": {"type": "string", "format": "date-time"}}}
ORDERS = {"type": "object", "properties": {"items": {
    "type": "array", "minItems": 2, "maxItems": 3,
    "items": {"type": "object", "properties": {"sku": {"type": "string"},
                                               "price": {"type": "number"},
                                               "gift": {"type": "boolean"}}}}}}
LABEL = {"type": "object", "properties": {
    "label": {"type": "string", "enum": ["pos", "neg", "neutral"]},
    "kind": {"const": "review"}, "few": {"type": "array", "maxItems": 0}}}
NULLABLE = {"type": "object", "properties": {
    "score": {"anyOf": [{"type": "null"}, {"type": "integer", "maximum": 3}]},
    "note": {"type": ["null", "string"], "maxLength": 8},
    "rank": {"oneOf": [{"type": "number", "exclusiveMinimum": 10}, {"type": "null"}]}}}
REFS = {"type": "object", "$defs": {"Pet": {"type": "object", "properties": {
            "name": {"type": "string"}, "legs": {"$ref": "#/definitions/Legs"}}}},
        "definitions": {"Legs": {"type": "integer", "minimum": 10}},
        "properties": {"pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
                       "best": {"$ref": "#/$defs/Pet"}}}

CASES = [  # (schema, prompt, the answer: prompt "Paris", n = 5)
    (CITY, {"city": "echo: Paris", "pop": 5}),
    (PERSON, {"name": "echo: Paris", "address": {"street": "echo: Paris", "zip": 5},
              "born": "2024-01-06", "seen": "2024-01-06T12:00:00Z"}),
    (ORDERS, {"items": [{"sku": "echo: Paris", "price": 2.5, "gift": False}] * 2}),
    (LABEL, {"label": "neutral", "kind": "review", "few": []}),
    (NULLABLE, {"score": 3, "note": "echo: Pa", "rank": 10.5}),
    (REFS, {"pets": [{"name": "echo: Paris", "legs": 10}],
            "best": {"name": "echo: Paris", "legs": 10}}),
]


@pytest.mark.parametrize(("schema", "expected"), CASES,
                         ids=["flat", "nested", "list_of_objects", "enum", "nullable", "ref"])
def test_json_schema_answers_are_built_from_the_schema(mock_server, schema, expected):
    srv = mock_server()
    assert json.loads(_content(srv, "Paris", _schema_form(schema))) == expected
    # llama.cpp's form with the same schema gets the same answer
    assert json.loads(_content(srv, "Paris", _object_form(schema))) == expected
    assert srv.counts["json_schema"] == srv.counts["json_object"] == 1
    assert srv.counts["ok"] == 2


@pytest.mark.parametrize(("schema", "expected"), CASES, ids=[
    "flat", "nested", "list_of_objects", "enum", "nullable", "ref"])
def test_the_answers_validate_against_their_schema(schema, expected):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(expected, schema)  # the expectations above are valid answers


def test_each_prompt_gets_its_own_answer(mock_server):
    srv = mock_server()
    schema = {**CITY, "properties": {**CITY["properties"], **LABEL["properties"]}}
    answers = {p: json.loads(_content(srv, p, _schema_form(schema)))
               for p in ("a", "bb", "ccc", "dddd")}
    assert {p: (a["city"], a["pop"]) for p, a in answers.items()} == {
        p: (f"echo: {p}", len(p)) for p in answers}
    assert [a["label"] for a in answers.values()] == ["neg", "neutral", "pos", "neg"]
    assert len(srv.state.plans) == 1  # the schema is compiled once


def test_json_object_without_a_schema_is_any_object(mock_server):
    srv = mock_server()
    assert json.loads(_content(srv, "hi there", _object_form())) == {"echo": "hi there"}
    assert srv.counts["json_object"] == 1


def test_a_recursive_ref_takes_the_shortest_way_out(mock_server):
    tree = {"$ref": "#/$defs/Node", "$defs": {"Node": {
        "type": "object", "required": ["name", "kids"],
        "properties": {"name": {"type": "string"}, "parent": {"anyOf": [
            {"$ref": "#/$defs/Node"}, {"type": "null"}]},
            "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}}}
    srv = mock_server()
    leaf = {"name": "echo: x", "kids": []}
    assert json.loads(_content(srv, "x", _schema_form(tree))) == {
        "name": "echo: x", "parent": None, "kids": [leaf]}


def test_completions_answer_structured_too(mock_server):
    srv = mock_server()
    status, body = _post(srv, {"prompt": "Oslo", "response_format": _schema_form(CITY)},
                         "/v1/completions")
    assert status == 200
    assert json.loads(body["choices"][0]["text"]) == {"city": "echo: Oslo", "pop": 4}


def test_usage_counts_the_json_and_max_tokens_cuts_it(mock_server):
    srv = mock_server()
    _, body = _post(srv, _chat("Paris", _schema_form(CITY)))
    content = body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == 17  # { " city " : " echo : Paris " , ...
    _, body = _post(srv, _chat("Paris", _schema_form(CITY), max_tokens=5))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert content.startswith(choice["message"]["content"])
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice["message"]["content"])


def test_a_plain_request_is_unaffected(mock_server):
    srv = mock_server(response_formats=("json_object",))
    status, body = _post(srv, _chat("Hello there"))
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "echo: Hello there"
    assert body["usage"]["completion_tokens"] == 4
    status, body = _post(srv, _chat("Hello there", {"type": "text"}))  # always accepted
    assert body["choices"][0]["message"]["content"] == "echo: Hello there"
    assert srv.counts["ok"] == 2
    assert srv.counts["json_schema"] == srv.counts["json_object"] == 0


def test_llama_cpp_like_server_refuses_json_schema_with_a_500(mock_server):
    srv = mock_server(response_formats=("json_object",))
    status, body = _post(srv, _chat("Paris", _schema_form(CITY)))
    assert status == 500
    assert body["error"]["type"] == "internal_server_error"
    assert "response_format" in body["error"]["message"]
    assert "json_schema" in body["error"]["message"]
    assert json.loads(_content(srv, "Paris", _object_form(CITY))) == {
        "city": "echo: Paris", "pop": 5}
    assert srv.counts["rejected_json_schema"] == 1
    assert srv.counts["500"] == 1
    assert srv.counts["json_object"] == srv.counts["ok"] == 1


def test_strict_openai_like_server_refuses_json_object_with_a_400(mock_server):
    srv = mock_server(response_formats="json_schema")
    status, body = _post(srv, _chat("Paris", _object_form()))
    assert status == 400
    assert body == {"error": {
        "message": "Invalid parameter: 'response_format' of type 'json_object' is not "
                   "supported with this model.",
        "type": "invalid_request_error", "param": "response_format", "code": None}}
    assert json.loads(_content(srv, "Paris", _schema_form(CITY)))["pop"] == 5
    assert srv.counts["rejected_json_object"] == srv.counts["json_schema"] == 1


def test_unknown_or_malformed_response_formats_are_400s(mock_server):
    srv = mock_server()
    status, body = _post(srv, _chat("x", {"type": "xml"}))
    assert status == 400
    assert body["error"]["param"] == "response_format.type"
    assert "response_format.type" in body["error"]["message"]
    status, body = _post(srv, _chat("x", "json"))
    assert (status, body["error"]["param"]) == (400, "response_format")
    status, body = _post(srv, _chat("x", {"type": "json_schema"}))
    assert (status, body["error"]["param"]) == (400, "response_format.json_schema")
    status, body = _post(srv, _chat("x", _schema_form({"$ref": "#/$defs/Nope"})))
    assert status == 400
    assert "can't be resolved" in body["error"]["message"]
    assert srv.counts["400"] == 4


def test_response_formats_none_ignores_the_field(mock_server):
    srv = mock_server(response_formats=None)  # a server that does not know response_format
    assert _content(srv, "Paris", _schema_form(CITY)) == "echo: Paris"
    assert _content(srv, "Paris", {"type": "xml"}) == "echo: Paris"
    assert srv.counts["ok"] == 2
    assert srv.counts["json_schema"] == 0


def test_response_formats_are_validated():
    assert MockState(response_formats="json_object, json_schema").response_formats == (
        "json_object", "json_schema")
    with pytest.raises(ValueError, match="unknown response format"):
        MockState(response_formats=("json_schema", "yaml"))


def test_badjson_and_notjson_break_structured_answers(mock_server):
    assert {"badjson", "notjson"} <= set(FAULTS)
    srv = mock_server(script=["badjson", "notjson", "badjson", None])
    form = _schema_form(CITY)
    assert json.loads(_content(srv, "Paris", form)) == {"pop": 5}  # "city" dropped
    _, body = _post(srv, _chat("Paris", form))
    prose = body["choices"][0]["message"]["content"]
    assert prose.startswith("Sure! Here is the JSON you asked for: {")
    with pytest.raises(json.JSONDecodeError):
        json.loads(prose)
    assert body["usage"]["completion_tokens"] > 0
    assert json.loads(_content(srv, "Paris", _object_form())) == ["Paris"]  # not an object
    assert json.loads(_content(srv, "Paris", form)) == {"city": "echo: Paris", "pop": 5}
    assert srv.counts["badjson"] == 2
    assert srv.counts["notjson"] == 1
    assert srv.counts["ok"] == 1
    assert srv.counts["json_schema"] == 3
    assert srv.counts["json_object"] == 1


def test_badjson_without_required_properties_gives_a_wrong_type(mock_server):
    srv = mock_server(faults={"badjson": 1.0})
    assert json.loads(_content(srv, "Paris", _schema_form(PERSON)))["name"] == 5
    assert json.loads(_content(srv, "Paris", _schema_form(ORDERS)))["items"] == "echo: Paris"


def test_shape_faults_leave_plain_requests_alone(mock_server):
    srv = mock_server(script=["badjson", "notjson"])
    assert _content(srv, "a", None) == "echo: a"
    assert _content(srv, "b", None) == "echo: b"
    assert srv.counts["ok"] == 2
    assert srv.counts["badjson"] == srv.counts["notjson"] == 0


def test_first_fault_badjson_breaks_each_prompts_first_answer(mock_server):
    srv = mock_server(first_fault="badjson")
    form = _schema_form(CITY)
    for prompt in ("a", "b"):
        assert json.loads(_content(srv, prompt, form)) == {"pop": 1}
        assert json.loads(_content(srv, prompt, form)) == {"city": f"echo: {prompt}", "pop": 1}
    assert srv.counts["badjson"] == 2
    assert srv.counts["ok"] == 2


def test_shape_fault_rates_mix_with_the_old_faults(mock_server):
    srv = mock_server(faults={"badjson": 0.3, "429": 0.2}, seed=7)
    form = _schema_form(CITY)
    statuses = [_post(srv, _chat(f"row {i}", form))[0] for i in range(200)]
    counts = srv.counts
    assert statuses.count(429) == counts["429"] > 0
    assert counts["badjson"] > 0
    assert counts["badjson"] + counts["ok"] == statuses.count(200) == counts["json_schema"]


def test_shape_faults_in_provider_mode(mock_server):
    srv = mock_server(rpm=6000, ratelimit_headers="openai", script=["notjson", None])
    form = _schema_form(CITY)
    assert _content(srv, "Paris", form).startswith("Sure!")
    assert json.loads(_content(srv, "Paris", form)) == {"city": "echo: Paris", "pop": 5}
    assert srv.counts["notjson"] == srv.counts["ok"] == 1
    assert srv.counts["json_schema"] == 2


def test_provider_mode_refuses_like_the_server_it_plays(mock_server):
    srv = mock_server(rpm=6000, response_formats=["json_object"])
    conn = _conn(srv)
    conn.request("POST", "/v1/chat/completions", body=orjson.dumps(
        _chat("Paris", _schema_form(CITY))), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = orjson.loads(resp.read())
    conn.close()
    assert resp.status == 500
    assert "response_format" in body["error"]["message"]
    assert resp.headers["x-ratelimit-limit-requests"] == "6000"
    assert srv.counts["rejected_json_schema"] == srv.counts["500"] == 1


def test_openai_sdk_accepts_structured_answers(mock_server):
    srv = mock_server(latency=0.01)
    client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
    chat = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "Lyon"}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "city", "schema": CITY, "strict": True}})
    assert json.loads(chat.choices[0].message.content) == {"city": "echo: Lyon", "pop": 4}
    assert chat.choices[0].finish_reason == "stop"


def test_openai_sdk_parses_a_pydantic_model(mock_server):
    pydantic = pytest.importorskip("pydantic")

    class Address(pydantic.BaseModel):
        street: str
        zip_code: int

    class Person(pydantic.BaseModel):
        name: str
        mood: str | None
        homes: list[Address]

    srv = mock_server()
    client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
    chat = client.beta.chat.completions.parse(
        model="mock-model", messages=[{"role": "user", "content": "Ann"}],
        response_format=Person)
    person = chat.choices[0].message.parsed
    assert person == Person(name="echo: Ann", mood="echo: Ann",
                            homes=[Address(street="echo: Ann", zip_code=3)])
