import datetime as dt
import enum
import subprocess
import sys
from decimal import Decimal
from typing import Any, Literal, Optional

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmframe._exceptions import ConfigError
from llmframe._json import dumps
from llmframe._schema import OutputError, Schema, schema_of

CITY = pl.Struct({"city": pl.String, "country": pl.String, "population": pl.Int64,
                  "coastal": pl.Boolean})
ANSWER = '{"city": "Toulon", "country": "France", "population": 171953, "coastal": true}'
NESTED = {
    "type": "object", "title": "Person",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "score": {"type": ["number", "null"]},
        "born": {"type": "string", "format": "date"},
        "seen": {"type": "string", "format": "date-time"},
        "color": {"enum": ["red", "green"]},
        "address": {"$ref": "#/$defs/Address"},
        "friends": {"type": "array", "items": {"$ref": "#/$defs/Address"}, "maxItems": 3},
        "meta": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    "required": ["name", "age", "address", "friends"],
    "$defs": {"Address": {"type": "object", "properties": {
        "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "required": ["city"]}},
}
ADDRESS = pl.Struct({"city": pl.String, "zip": pl.String})
NESTED_DTYPE = pl.Struct({
    "name": pl.String, "age": pl.Int64, "score": pl.Float64, "born": pl.Date,
    "seen": pl.Datetime("us"), "color": pl.String, "address": ADDRESS,
    "friends": pl.List(ADDRESS), "meta": pl.String})


def series(schema: Schema, answers: list[Any]) -> pl.Series:
    """The column of answers (texts are parsed first), built with the schema's dtype."""
    values = [schema.parse(a) if isinstance(a, str) else a for a in answers]
    return pl.Series(values, dtype=schema.dtype, strict=True)


def error_of(schema: Schema, answer: Any) -> str:
    with pytest.raises(OutputError) as info:
        schema.parse(answer)
    return str(info.value)


def config_error(value: Any) -> str:
    with pytest.raises(ConfigError) as info:
        schema_of(value)
    return str(info.value)


def objects(node: Any) -> list[dict[str, Any]]:
    """Every schema with properties inside ``node``."""
    if isinstance(node, list):
        return [o for n in node for o in objects(n)]
    if not isinstance(node, dict):
        return []
    found = [node] if isinstance(node.get("properties"), dict) else []
    return found + [o for v in node.values() for o in objects(v)]


# --- input kinds -> dtype


def test_a_struct_keeps_its_dtype_and_asks_for_every_field():
    dtype = pl.Struct({"a": pl.Int8, "b": pl.List(pl.Struct({"c": pl.Float32})),
                       "d": pl.Array(pl.UInt16, 2), "e": pl.Enum(["x", "y"]),
                       "f": pl.Categorical(), "g": pl.Date, "h": pl.Datetime("ms")})
    s = schema_of(dtype)
    assert s.dtype == dtype and s.name == "response"
    props = s.json_schema["properties"]
    assert s.json_schema["required"] == list("abdefgh")
    assert props["a"] == {"type": "integer", "minimum": -128, "maximum": 127}
    assert props["b"]["items"]["properties"]["c"] == {"type": "number"}
    assert props["d"] == {"type": "array", "minItems": 2, "maxItems": 2,
                          "items": {"type": "integer", "minimum": 0, "maximum": 65535}}
    assert props["e"] == {"type": "string", "enum": ["x", "y"]}
    assert props["h"] == {"type": "string", "format": "date-time"}
    got = series(s, ['{"a": 3, "b": [{"c": 1}], "d": [1, 2], "e": "y", "f": "q", '
                     '"g": "2024-02-29", "h": "2024-01-01T10:00:00Z"}'])
    assert got.to_list() == [{"a": 3, "b": [{"c": 1.0}], "d": [1, 2], "e": "y", "f": "q",
                              "g": dt.date(2024, 2, 29), "h": dt.datetime(2024, 1, 1, 10)}]
    good = {"a": 3, "b": [], "d": [1, 2], "e": "y", "f": "q", "g": "2024-02-29",
            "h": "2024-01-01T10:00:00"}
    assert error_of(s, good | {"a": 300}) == "$.a: expected <= 127, got 300"
    assert error_of(s, good | {"d": [1, 2, 3]}) == "$.d: expected at most 2 items, got [1,2,3]"
    assert error_of(s, good | {"d": [1, -1]}) == "$.d[1]: expected >= 0, got -1"
    assert error_of(s, good | {"e": "z"}) == '$.e: expected one of ["x","y"], got "z"'
    assert error_of(s, good | {"f": None}) == "$.f: expected a string, got null"


def test_decimal_and_float32_fields_take_json_numbers():
    s = schema_of(pl.Struct({"price": pl.Decimal(10, 2), "ratio": pl.Float32}))
    assert s.json_schema["properties"] == {"price": {"type": "number"},
                                           "ratio": {"type": "number"}}
    got = series(s, ['{"price": 12.5, "ratio": 1}'])
    assert got.to_list() == [{"price": Decimal("12.50"), "ratio": 1.0}]


def test_a_zoned_datetime_field_gets_utc_values():
    s = schema_of(pl.Struct({"at": pl.Datetime("us", "Europe/Paris")}))
    got = series(s, ['{"at": "2024-01-01T10:00:00Z"}', '{"at": "2024-01-01T12:00:00+02:00"}'])
    assert got.struct.field("at").dt.convert_time_zone("UTC").dt.hour().to_list() == [10, 10]


def test_a_json_schema_gives_its_dtype_with_refs_inlined():
    s = schema_of(NESTED)
    assert s.dtype == NESTED_DTYPE and s.name == "Person"
    assert "$defs" not in s.json_schema and "$ref" not in orjson.dumps(s.json_schema).decode()
    assert s.json_schema["properties"]["address"]["properties"]["zip"]["pattern"]
    assert NESTED["properties"]["address"] == {"$ref": "#/$defs/Address"}  # not mutated


@pytest.mark.parametrize(("node", "dtype"), [
    ({"type": "string", "enum": ["a"]}, pl.String), ({"const": 3}, pl.Int64),
    ({"enum": [1, 2.5]}, pl.Float64), ({"type": "boolean"}, pl.Boolean),
    ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, pl.Int64),
    ({"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "string"}}]},
     pl.List(pl.String)),
    ({"allOf": [{"type": "number"}], "description": "x"}, pl.Float64),
    ({"type": "object"}, pl.String), ({"type": "object", "additionalProperties": {}}, pl.String),
    ({"properties": {"x": {"type": "integer"}}}, pl.Struct({"x": pl.Int64})),
])
def test_json_schema_nodes_map_to_one_polars_type(node, dtype):
    s = schema_of({"type": "object", "properties": {"v": node}})
    assert s.dtype == pl.Struct({"v": dtype})


def test_draft_07_definitions_are_inlined_too():
    s = schema_of({"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}},
                   "definitions": {"A": {"type": "array", "items": {"type": "integer"}}}})
    assert s.dtype == pl.Struct({"a": pl.List(pl.Int64)})
    assert s.json_schema == {"type": "object", "properties": {"a": {"type": "array",
                             "items": {"type": "integer"}}}}


def test_a_title_that_is_no_valid_name_gives_response():
    assert schema_of({"title": "A city!", "properties": {"a": {"type": "string"}}}).name \
        == "response"


def test_a_schema_passes_through_and_is_built_once():
    s = schema_of(CITY)
    assert schema_of(s) is s
    assert s.response_format("json_schema") is s.response_format("json_schema")
    with pytest.raises(ValueError, match="json_object"):
        s.response_format("grammar")


def test_the_wire_forms():
    s = schema_of(NESTED)
    assert s.response_format("json_object") == {"type": "json_object", "schema": s.json_schema}
    assert s.response_format("json_schema") == {"type": "json_schema", "json_schema": {
        "name": "Person", "schema": s.strict_schema, "strict": True}}


def test_key_is_canonical_and_tells_schemas_apart():
    reordered = dict(reversed(list(NESTED.items())))
    assert schema_of(reordered).key() == schema_of(NESTED).key()
    assert schema_of(CITY).key() != schema_of(NESTED).key()
    assert isinstance(schema_of(CITY).key(), bytes)


def test_struct_to_json_schema_and_back():
    dtype = pl.Struct({"a": pl.Int64, "b": pl.Float64, "c": pl.String, "d": pl.Boolean,
                       "e": pl.Date, "f": pl.Datetime("us"),
                       "g": pl.List(pl.Struct({"h": pl.List(pl.Int64)}))})
    assert schema_of(schema_of(dtype).json_schema).dtype == dtype


DTYPES = st.recursive(
    st.sampled_from([pl.Int64(), pl.Float64(), pl.String(), pl.Boolean(), pl.Date()]),
    lambda inner: st.one_of(
        st.builds(pl.List, inner),
        st.dictionaries(st.text("abcé _.", min_size=1, max_size=4), inner, min_size=1,
                        max_size=3).map(pl.Struct)), max_leaves=8)
LEAVES = {pl.Int64: st.integers(-(2**63), 2**63 - 1), pl.String: st.text(max_size=5),
          pl.Float64: st.floats(allow_nan=False, allow_infinity=False),
          pl.Boolean: st.booleans(), pl.Date: st.dates()}


def values_of(dtype: Any) -> st.SearchStrategy[Any]:
    if isinstance(dtype, pl.Struct):
        return st.fixed_dictionaries({f.name: values_of(f.dtype) for f in dtype.fields})
    if isinstance(dtype, pl.List):
        return st.lists(values_of(dtype.inner), max_size=3)
    return LEAVES[dtype.base_type()]


@settings(max_examples=60, deadline=None)
@given(DTYPES)
def test_any_struct_round_trips(inner):
    dtype = pl.Struct({"v": inner})
    assert schema_of(schema_of(dtype).json_schema).dtype == dtype


@settings(max_examples=60, deadline=None)
@given(st.data(), DTYPES)
def test_answers_of_any_struct_parse_into_a_column_of_it(data, inner):
    dtype = pl.Struct({"v": inner})
    s = schema_of(dtype)
    rows = data.draw(st.lists(values_of(dtype), min_size=1, max_size=3))
    parsed = [s.parse(orjson.dumps(row).decode()) for row in rows]
    assert series(s, parsed).to_list() == rows


# --- strict variant


def test_strict_closes_objects_requires_all_and_makes_optional_nullable():
    s = schema_of(NESTED)
    for obj in objects(s.strict_schema):
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    props = s.strict_schema["properties"]
    assert props["score"]["type"] == ["number", "null"]
    assert props["born"] == {"type": ["string", "null"], "format": "date"}
    assert props["color"] == {"anyOf": [{"enum": ["red", "green"], "type": "string"},
                                        {"type": "null"}]}
    assert props["meta"] == {"type": ["string", "null"],
                             "description": "(a JSON object, as text)"}
    assert props["address"]["properties"]["zip"]["type"] == ["string", "null"]
    assert props["name"] == {"type": "string", "minLength": 1}
    assert "additionalProperties" not in NESTED["$defs"]["Address"]  # not mutated
    strict = schema_of(s.strict_schema)
    assert strict.dtype == s.dtype


def pydantic_models() -> Any:
    pydantic = pytest.importorskip("pydantic")

    class Color(str, enum.Enum):
        red = "red"
        green = "green"

    class Address(pydantic.BaseModel):
        city: str
        zip: Optional[str] = None  # noqa: UP045 - the form pydantic users write

    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(alias="Name", description="full name")
        age: int = pydantic.Field(ge=0)
        nick: Optional[str] = None  # noqa: UP045
        level: int = 3
        color: Color
        kind: Literal["a", "b"] = "a"
        address: Address
        homes: list[Address] = pydantic.Field(default_factory=list)
        born: Optional[dt.date] = None  # noqa: UP045

        @pydantic.field_validator("age")
        @classmethod
        def not_thirteen(cls, value: int) -> int:
            if value == 13:
                raise ValueError("unlucky age")
            return value

    return Person, Address


def test_pydantic_model_dtype_and_strict_variant():
    person, _ = pydantic_models()
    s = schema_of(person)
    assert s.name == "Person"
    assert s.dtype == pl.Struct({
        "Name": pl.String, "age": pl.Int64, "nick": pl.String, "level": pl.Int64,
        "color": pl.String, "kind": pl.String, "address": ADDRESS, "homes": pl.List(ADDRESS),
        "born": pl.Date})
    strict = s.strict_schema
    for obj in objects(strict):
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    props = strict["properties"]
    assert props["nick"] == {"type": ["string", "null"], "title": "Nick"}  # default None gone
    assert props["level"] == {"type": ["integer", "null"], "title": "Level"}  # no default
    assert props["color"]["enum"] == ["red", "green"]  # required, so not nullable
    assert props["kind"]["anyOf"][1] == {"type": "null"}
    assert props["homes"]["anyOf"][0]["items"]["properties"]["zip"]["type"] \
        == ["string", "null"]
    assert props["born"] == {"type": ["string", "null"], "format": "date", "title": "Born"}
    assert props["Name"]["description"] == "full name"
    assert "$defs" not in strict and "$ref" not in orjson.dumps(strict).decode()


def test_pydantic_answers_are_validated_by_the_model():
    person, _ = pydantic_models()
    s = schema_of(person)
    answer = {"Name": "Ada", "age": 36, "color": "red", "address": {"city": "Paris"},
              "level": None, "kind": None, "homes": [{"city": "Lyon", "zip": "69001"}],
              "born": "1815-12-10"}
    value = s.parse(orjson.dumps(answer).decode())
    assert value == {"Name": "Ada", "age": 36, "nick": None, "level": 3, "color": "red",
                     "kind": "a", "address": {"city": "Paris", "zip": None},
                     "homes": [{"city": "Lyon", "zip": "69001"}],
                     "born": dt.date(1815, 12, 10)}
    assert series(s, [value]).dtype == s.dtype
    assert "$.age: Value error, unlucky age" in error_of(s, orjson.dumps(answer | {"age": 13}))
    assert error_of(s, orjson.dumps(answer | {"age": -1})) \
        == "$.age: Input should be greater than or equal to 0"


def test_pydantic_is_not_imported_by_the_module():
    code = "import sys, llmframe._schema; assert 'pydantic' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- config errors


@pytest.mark.parametrize(("schema", "where", "why"), [
    ({"properties": {"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}},
     "$.properties.a.anyOf", "one type"),
    ({"properties": {"t": {"type": "array", "items": {"type": ["string", "integer", "null"]}}}},
     "$.properties.t.items.type", "one type"),
    ({"properties": {"n": {"$ref": "#/$defs/N"}},
      "$defs": {"N": {"properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/N"}}}}}},
     "$.properties.n.properties.kids.items", "recursive"),
    ({"type": "array", "items": {"type": "string"}}, "$", "top level"),
    ({"type": "object"}, "$", "top level"),
    ({"properties": {"a": {"type": "date"}}}, "$.properties.a", "'date'"),
    ({"properties": {"a": {}}}, "$.properties.a", "None"),
    ({"properties": {"a": {"$ref": "#/$defs/Nope"}}}, "$.properties.a", "$defs"),
    ({"properties": {"a": {"type": "string", "pattern": "("}}}, "$.properties.a.pattern",
     "regular"),
    ({"properties": {"a": {"type": "string", "enum": [1]}}}, "$.properties.a", "string values"),
    ({"properties": {"a": {"type": "integer", "minimum": "0"}}}, "$.properties.a.minimum",
     "number"),
    ({"properties": {"a": {"allOf": [{"type": "string"}, {"maxLength": 3}]}}},
     "$.properties.a.allOf", "merge"),
    ({"properties": {"a": {"type": "array"}}}, "$.properties.a.items", "JSON Schema object"),
])
def test_config_errors_name_the_path_and_why(schema, where, why):
    message = config_error({"type": "object", **schema} if "type" not in schema else schema)
    assert message.startswith(f"schema at {where}: ")
    assert why in message


@pytest.mark.parametrize(("dtype", "where"), [
    (pl.Struct({"blob": pl.Binary}), "$.blob"),
    (pl.Struct({"a": pl.List(pl.Struct({"d": pl.Duration()}))}), "$.a[].d"),
    (pl.Struct({"n": pl.Null}), "$.n"), (pl.Struct({"o": pl.Object}), "$.o"),
    (pl.Struct({"e": pl.Struct({})}), "$.e"),
])
def test_unsupported_polars_types_are_named(dtype, where):
    message = config_error(dtype)
    assert message.startswith(f"schema at {where}: a polars ")


def test_other_values_are_refused():
    assert "pl.Struct" in config_error("city")
    assert "pl.Struct" in config_error(pl.Struct)
    person, _ = pydantic_models()
    assert "not an instance" in config_error(person(Name="A", age=1, color="red",
                                                    address={"city": "P"}))


# --- parse


def test_parse_a_flat_answer_and_its_code_fenced_forms():
    s = schema_of(CITY)
    expected = {"city": "Toulon", "country": "France", "population": 171953, "coastal": True}
    for text in (ANSWER, f"  {ANSWER}\n", f"```json\n{ANSWER}\n```", f"```\n{ANSWER}```\n",
                 f"\n```JSON\n  {ANSWER}  \n```  ", ANSWER.encode(), orjson.loads(ANSWER)):
        assert s.parse(text) == expected
    assert series(s, [ANSWER]).to_list() == [expected]


def test_parse_converts_and_drops_extras():
    s = schema_of(NESTED)
    value = s.parse(orjson.dumps({
        "name": "Ada", "age": 36.0, "score": 3, "born": "1815-12-10",
        "seen": "2024-01-01T12:00:00+02:00", "color": "green", "extra": 1,
        "address": {"city": "Paris", "zip": None, "x": 2},
        "friends": [{"city": "Lyon", "zip": "69001"}, {"city": "Nice"}],
        "meta": {"k": 1, "j": 2}}))
    assert value == {
        "name": "Ada", "age": 36, "score": 3.0, "born": dt.date(1815, 12, 10),
        "seen": dt.datetime(2024, 1, 1, 10), "color": "green",
        "address": {"city": "Paris", "zip": None},
        "friends": [{"city": "Lyon", "zip": "69001"}, {"city": "Nice", "zip": None}],
        "meta": '{"k":1,"j":2}'}
    assert type(value["age"]) is int and type(value["score"]) is float
    sparse = s.parse('{"name": "B", "age": 1, "address": {"city": "X"}, "friends": [], '
                     '"meta": "{\\"k\\": 1}"}')
    assert sparse["score"] is None and sparse["meta"] == '{"k":1}'
    got = series(s, [value, sparse])
    assert got.dtype == NESTED_DTYPE
    assert got.to_list()[0] == value
    assert got.struct.field("friends").list.len().to_list() == [2, 0]


@pytest.mark.parametrize(("answer", "message"), [
    ("", "not JSON: "), ("Sure! Here it is.", "not JSON: "), ("```json\n{\n```", "not JSON: "),
    ('{"name": "A"}', "$.age: missing required field"),
    ('{"name": "A", "age": true, "address": {"city": "P"}, "friends": []}',
     "$.age: expected an integer, got true"),
    ('{"name": "A", "age": 1.5, "address": {"city": "P"}, "friends": []}',
     "$.age: expected an integer, got 1.5"),
    ('{"name": "A", "age": 1, "address": {"city": 12}, "friends": []}',
     "$.address.city: expected a string, got 12"),
    ('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": [{"city": "L"}, {}]}',
     "$.friends[1].city: missing required field"),
    ('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": [{"city": null}]}',
     "$.friends[0].city: expected a string, got null"),
    ('{"name": "A", "age": 1, "address": {"city": "P", "zip": "7500"}, "friends": []}',
     "$.address.zip: expected a match of '^[0-9]{5}$'"),
    ('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": [], "color": "blue"}',
     '$.color: expected one of ["red","green"], got "blue"'),
    ('{"name": "", "age": 1, "address": {"city": "P"}, "friends": []}',
     "$.name: expected at least 1 characters"),
    ('{"name": "A", "age": -1, "address": {"city": "P"}, "friends": []}',
     "$.age: expected >= 0, got -1"),
    ('{"name": "A", "age": 1, "address": null, "friends": []}',
     "$.address: expected an object, got null"),
    ('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": {}}',
     "$.friends: expected an array, got {}"),
    ('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": [{"city": "a"}, '
     '{"city": "b"}, {"city": "c"}, {"city": "d"}]}', "$.friends: expected at most 3 items"),
    ('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": [], "born": "1815-13-10"}',
     '$.born: expected a date (YYYY-MM-DD), got "1815-13-10"'),
    ('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": [], "seen": "noon"}',
     "$.seen: expected a date-time"),
    ('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": [], "meta": "[1]"}',
     '$.meta: expected an object, got "[1]"'),
    ('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": [], "score": "1"}',
     '$.score: expected a number, got "1"'),
    ('[1, 2]', "$: expected an object, got [1,2]"), ("null", "$: expected an object, got null"),
    (None, "not JSON: "), (b"\xff", "not JSON: "),
])
def test_parse_rejects_with_the_path(answer, message):
    assert error_of(schema_of(NESTED), answer).startswith(message)


def test_odd_keys_are_quoted_in_paths():
    s = schema_of(pl.Struct({"a b": pl.List(pl.Boolean)}))
    assert error_of(s, '{"a b": [true, 0]}') == '$["a b"][1]: expected a boolean, got 0'


def test_numbers_and_bounds():
    s = schema_of({"type": "object", "properties": {
        "i": {"type": "integer"}, "x": {"type": "number", "exclusiveMaximum": 1},
        "c": {"const": "yes"}}})
    assert s.parse('{"i": 9223372036854775807}')["i"] == 2**63 - 1
    assert "expected <= 9223372036854775807" in error_of(s, '{"i": 9223372036854775808}')
    assert error_of(s, '{"x": 1}') == "$.x: expected < 1, got 1"
    assert error_of(s, '{"x": false}') == "$.x: expected a number, got false"
    assert error_of(s, '{"c": "no"}') == '$.c: expected one of ["yes"], got "no"'
    assert s.parse('{"c": "yes", "x": 0}') == {"i": None, "x": 0.0, "c": "yes"}


# --- values fit their column's dtype, checked per answer


def test_a_json_schema_integer_fits_int64_whatever_its_maximum():
    s = schema_of({"type": "object", "properties": {"n": {"type": "integer", "maximum": 1e20}}})
    assert error_of(s, '{"n": 18446744073709551616}') \
        == "$.n: expected <= 9223372036854775807 (Int64), got 1.8446744073709552e+19"
    assert error_of(s, {"n": 2**64}).startswith("$.n: expected <= 9223372036854775807 (Int64)")
    assert error_of(s, '{"n": -9223372036854775809}').startswith("$.n: expected an integer")
    edges = [s.parse({"n": 2**63 - 1}), s.parse('{"n": -9223372036854775808}')]
    assert series(s, edges).struct.field("n").to_list() == [2**63 - 1, -(2**63)]


def test_struct_integers_fit_their_width():
    s = schema_of(pl.Struct({"u": pl.UInt64, "i": pl.Int128, "b": pl.Int8}))
    top = {"u": 2**64 - 1, "i": 2**127 - 1, "b": -128}
    text = '{"u": 18446744073709551615, "i": 170141183460469231731687303715884105727, "b": -128}'
    assert s.parse(text) == top  # a 128-bit integer read exactly
    assert series(s, [text]).to_list() == [top]
    assert error_of(s, top | {"u": 2**64}).startswith("$.u: expected <= 18446744073709551615")
    assert error_of(s, top | {"i": 2**127}).startswith("$.i: expected <= 1701411834604692")
    assert error_of(s, top | {"b": -129}) == "$.b: expected >= -128, got -129"


def test_decimal_fields_are_rounded_to_scale_and_bounded_by_precision():
    s = schema_of(pl.Struct({"p": pl.Decimal(10, 2), "w": pl.Decimal(38, 10)}))
    texts = ['{"p": 12345678.994, "w": 1234567890123456789012345678.0123456789}',
             '{"p": 12345678.995, "w": 0}', '{"p": -99999999.99, "w": -1}',
             '{"p": -0.001, "w": 0.00000000005}', '{"p": 7, "w": 2.5e-3}']
    values = [s.parse(t) for t in texts]
    assert [v["p"] for v in values] == [Decimal("12345678.99"), Decimal("12345679.00"),
                                        Decimal("-99999999.99"), Decimal("0.00"), Decimal("7.00")]
    assert values[0]["w"] == Decimal("1234567890123456789012345678.0123456789")  # exact
    assert values[3]["w"] == Decimal("0E-10")  # half-even: 0.00000000005 -> 0.0000000000
    assert all(type(v["p"]) is Decimal for v in values)
    assert series(s, values).to_list() == values
    assert error_of(s, '{"p": 99999999.995, "w": 0}') == (
        "$.p: expected at most 8 digits before the point (Decimal(precision=10, scale=2)), "
        "got 99999999.995")
    assert error_of(s, '{"p": 123456789, "w": 0}').startswith("$.p: expected at most 8 digits")
    assert error_of(s, '{"p": 1e30, "w": 0}').startswith("$.p: expected at most 8 digits")
    assert error_of(s, '{"p": "1.5", "w": 0}') == '$.p: expected a number, got "1.5"'
    assert error_of(s, '{"p": NaN, "w": 0}').startswith("not JSON: ")
    assert s.parse({"p": 1.5, "w": 1}) == {"p": Decimal("1.50"), "w": Decimal("1.0000000000")}


def test_float32_fields_are_finite_and_within_its_range():
    s = schema_of(pl.Struct({"f": pl.Float32}))
    edges = [s.parse('{"f": 3.4028235e38}'), s.parse('{"f": -3.4028235e38}'), s.parse({"f": 1})]
    column = series(s, edges).struct.field("f")
    assert column.is_finite().all() and column.to_list()[2] == 1.0
    for big in ("3.5e38", "-1e39"):
        assert error_of(s, f'{{"f": {big}}}').startswith("$.f: expected ")
    assert error_of(s, '{"f": 3.5e38}') == (
        "$.f: expected a finite number within ±3.4028235e38 (Float32), got 3.5e+38")
    for odd in (float("inf"), float("nan"), 10**400):
        assert error_of(s, {"f": odd}).startswith("$.f: expected a ")


def test_datetime_fields_fit_their_time_unit():
    s = schema_of(pl.Struct({"ns": pl.Datetime("ns"), "us": pl.Datetime("us"),
                             "ms": pl.Datetime("ms"), "d": pl.Date}))
    low = {"ns": "1677-09-21T00:12:43.145225", "us": "0001-01-01T00:00:00",
           "ms": "0001-01-01T00:00:00Z", "d": "0001-01-01"}
    high = {"ns": "2262-04-12T01:47:16.854775+02:00", "us": "9999-12-31T23:59:59.999999",
            "ms": "9999-12-31T23:59:59.999", "d": "9999-12-31"}
    got = series(s, [orjson.dumps(low).decode(), orjson.dumps(high).decode()]).to_list()
    assert got[0]["ns"] == dt.datetime(1677, 9, 21, 0, 12, 43, 145225)
    assert got[1]["ns"] == dt.datetime(2262, 4, 11, 23, 47, 16, 854775)
    assert got[0]["us"] == dt.datetime.min and got[1]["d"] == dt.date.max
    for at in ("1677-09-21T00:12:43.145224", "2262-04-11T23:47:16.854776", "3000-01-01T00:00:00"):
        assert error_of(s, low | {"ns": at}) == (
            "$.ns: expected a date-time within 1677-09-21T00:12:43.145225 .. "
            f'2262-04-11T23:47:16.854775 (Datetime ns), got "{at}"')
    # past Python's range once in UTC: an error, not a crash
    assert error_of(s, low | {"us": "0001-01-01T00:00:00+01:00"}).startswith(
        "$.us: expected a date-time (ISO 8601)")


# --- restore: a stored value back to the dtype, without a pydantic model's validators


def billing_model() -> Any:
    pydantic = pytest.importorskip("pydantic")

    class Bill(pydantic.BaseModel):
        qty: int
        cents: int
        amount: int = 0
        price: Decimal = Decimal(0)
        meta: dict[str, Any] = pydantic.Field(default_factory=dict)
        due: Optional[dt.date] = None  # noqa: UP045
        note: str = "none"

        @pydantic.field_validator("cents")
        @classmethod
        def to_cents(cls, value: int) -> int:
            return value * 100

        @pydantic.field_validator("amount", mode="before")
        @classmethod
        def amount_in_cents(cls, value: Any) -> Any:
            return round(value * 100) if isinstance(value, float) else value

    return Bill


def test_restore_does_not_run_the_model_validators_again():
    s = schema_of(billing_model())
    value = s.parse('{"qty": 2, "cents": 3, "due": "2024-02-29"}')
    assert value["cents"] == 300
    stored = dumps(value).decode()  # as a checkpoint line or a cache entry holds it
    assert s.restore(stored) == value and s.restore(orjson.loads(stored)) == value
    assert s.restore(stored)["due"] == dt.date(2024, 2, 29)
    assert s.parse(stored)["cents"] == 30000  # what parse would do: why restore exists
    assert s.restore(value) == value  # already converted: kept
    with pytest.raises(OutputError, match=r"^\$\.cents: expected an integer"):
        s.restore(stored.replace("300", '"x"'))
    with pytest.raises(OutputError, match=r"^\$\.qty: missing required field"):
        s.restore("{}")


def test_restore_converts_stored_values_of_any_schema():
    s = schema_of(NESTED)
    value = s.parse('{"name": "A", "age": 1, "address": {"city": "P"}, "friends": [], '
                    '"born": "2000-01-02", "seen": "2024-01-01T12:00:00+02:00", '
                    '"meta": {"k": 1}}')
    assert s.restore(dumps(value)) == value
    d = schema_of(pl.Struct({"p": pl.Decimal(20, 4), "b": pl.Int8}))
    price = Decimal("1234567890123456.1234")
    assert d.restore(dumps({"p": price, "b": 1})) == {"p": price, "b": 1}  # exact
    assert d.restore({"p": "1.5", "b": 1}) == {"p": Decimal("1.5000"), "b": 1}
    with pytest.raises(OutputError, match=r"^\$\.b: expected <= 127 \(Int8\), got 300"):
        d.restore('{"p": 1, "b": 300}')


# --- with a pydantic model, the model decides what is valid


def test_the_model_decides_lax_values_and_before_validators():
    s = schema_of(billing_model())
    value = s.parse('{"qty": "2", "cents": "3", "amount": 4.5, "price": "12.50", '
                    '"meta": "{\\"a\\": [1]}", "note": null}')
    assert value == {"qty": 2, "cents": 300, "amount": 450, "price": 12.5,
                     "meta": '{"a":[1]}', "due": None, "note": "none"}
    assert series(s, [value]).dtype == s.dtype
    many = error_of(s, '{"qty": "x", "cents": "y", "amount": "z", "price": "abc"}')
    assert many.count("; ") == 2 and many.startswith("$.qty: Input should be a valid integer")
    assert "$.cents: " in many and "$.amount: " in many and "price" not in many  # first 3
    assert error_of(s, '{"qty": 1, "cents": 100000000000000000}') \
        == "$.cents: expected <= 9223372036854775807 (Int64), got 10000000000000000000"


# --- JSON Schema keywords: checked, or refused


def test_multiple_of_unique_items_and_property_counts_are_checked():
    s = schema_of({"type": "object", "minProperties": 1, "properties": {
        "step": {"type": "number", "multipleOf": 0.1}, "five": {"type": "integer", "multipleOf": 5},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "rows": {"type": "array", "items": {"type": "object", "properties": {
            "a": {"type": "integer"}}}, "uniqueItems": True},
        "meta": {"type": "object", "minProperties": 1, "maxProperties": 2},
        "box": {"type": "object", "properties": {"a": {"type": "integer"}},
                "maxProperties": 1}}})
    assert s.parse('{"step": 0.3, "five": 10, "tags": ["a", "b"], "rows": [{"a": 1}, {"a": 2}], '
                   '"meta": "{\\"k\\": 1}", "box": {"a": 1}}')["step"] == 0.3
    assert error_of(s, '{"step": 0.35}') == "$.step: expected a multiple of 0.1, got 0.35"
    assert error_of(s, '{"five": 12}') == "$.five: expected a multiple of 5, got 12"
    assert error_of(s, '{"tags": ["a", "a"]}') == '$.tags: expected unique items, got ["a","a"]'
    assert error_of(s, '{"rows": [{"a": 1}, {"a": 1}]}').startswith("$.rows: expected unique")
    assert error_of(s, '{"meta": {}}') == "$.meta: expected at least 1 properties, got {}"
    assert error_of(s, '{"meta": "{\\"a\\":1,\\"b\\":2,\\"c\\":3}"}').startswith(
        "$.meta: expected at most 2 properties")
    assert error_of(s, '{"box": {"a": 1, "b": 2}}').startswith("$.box: expected at most 1 prop")
    assert error_of(s, "{}") == "$: expected at least 1 properties, got {}"
    assert "positive number" in config_error({"properties": {"x": {"type": "number",
                                                                    "multipleOf": 0}}})
    assert "true or false" in config_error({"properties": {"x": {
        "type": "array", "items": {"type": "string"}, "uniqueItems": "yes"}}})


def test_explicit_additional_properties_false_rejects_extra_keys():
    closed = schema_of({"type": "object", "additionalProperties": False, "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "integer"}},
              "additionalProperties": False},
        "free": {"type": "object", "additionalProperties": False}}})
    assert closed.parse('{"a": {"b": 1}, "free": {}}') == {"a": {"b": 1}, "free": "{}"}
    assert error_of(closed, '{"a": {"b": 1}, "x": 2}') \
        == "$.x: unexpected property (additionalProperties is false)"
    assert error_of(closed, '{"a": {"b": 1, "c d": 2}}') \
        == '$.a["c d"]: unexpected property (additionalProperties is false)'
    assert error_of(closed, '{"free": {"z": 1}}') \
        == "$.free.z: unexpected property (additionalProperties is false)"
    open_ = schema_of({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert open_.parse('{"a": 1, "x": 2}') == {"a": 1}  # not said: dropped
    assert schema_of(pl.Struct({"a": pl.Int64})).parse('{"a": 1, "x": 2}') == {"a": 1}


def test_free_form_values_follow_an_additional_properties_schema():
    s = schema_of({"type": "object", "properties": {
        "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}}})
    assert s.parse('{"counts": {"a": 1}}') == {"counts": '{"a":1}'}
    assert error_of(s, '{"counts": {"a": -1}}') == "$.counts.a: expected >= 0, got -1"


def test_openapi_nullable_and_annotation_formats():
    s = schema_of({"type": "object", "properties": {
        "n": {"type": "integer", "nullable": True}, "mail": {"type": "string", "format": "email"},
        "id": {"type": "string", "format": "uuid"}, "t": {"type": "string", "format": "time"}},
        "required": ["n", "mail"]})
    assert s.dtype == pl.Struct({"n": pl.Int64, "mail": pl.String, "id": pl.String,
                                 "t": pl.String})
    assert s.parse('{"n": null, "mail": "not an address", "id": "x", "t": "noon"}') \
        == {"n": None, "mail": "not an address", "id": "x", "t": "noon"}
    assert s.strict_schema["properties"]["n"] == {"type": ["integer", "null"]}
    assert error_of(s, '{"n": "1", "mail": "m"}') == '$.n: expected an integer, got "1"'


@pytest.mark.parametrize("keyword", [
    "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "patternProperties",
    "propertyNames", "contains", "unevaluatedProperties", "prefixItems"])
def test_keywords_llmframe_does_not_check_are_refused(keyword):
    message = config_error({"type": "object", "properties": {"a": {
        "type": "object", "properties": {"b": {"type": "string"}}, keyword: {}}}})
    assert message.startswith(f"schema at $.properties.a.{keyword}: the keyword {keyword!r} "
                              "is not supported")
    top = config_error({"type": "object", "properties": {"a": {"type": "string"}}, keyword: {}})
    assert top.startswith(f"schema at $.{keyword}: ")


def test_enum_of_objects_is_refused():
    assert "enum or const of an object" in config_error(
        {"properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}},
                              "enum": [{"b": "x"}]}}})


# --- strict variant: no default; pydantic's Decimal


def test_strict_drops_every_default_and_leaves_the_callers_schema_alone():
    pydantic = pytest.importorskip("pydantic")

    class Person(pydantic.BaseModel):
        name: str = "Ann"
        age: int = 30
        tags: list[str] = pydantic.Field(default_factory=lambda: ["x"])

    node = {"type": "object", "default": {}, "properties": {
        "a": {"type": "integer", "default": 1},
        "b": {"type": "array", "items": {"type": "string", "default": "x"}, "default": []}}}
    before = orjson.dumps(node)
    for source in (Person, node):
        strict = orjson.dumps(schema_of(source).strict_schema).decode()
        assert '"default"' not in strict
    assert orjson.dumps(node) == before
    assert schema_of(node).json_schema["properties"]["a"]["default"] == 1  # json_object form
    assert schema_of(Person).parse('{"name": null, "age": null, "tags": null}') \
        == {"name": "Ann", "age": 30, "tags": ["x"]}


def test_pydantic_decimal_is_a_float64_number():
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):
        price: Decimal
        vat: Optional[Decimal] = pydantic.Field(None, max_digits=6, decimal_places=2)  # noqa: UP045

    s = schema_of(Item)
    assert s.dtype == pl.Struct({"price": pl.Float64, "vat": pl.Float64})
    assert s.strict_schema["properties"]["price"] == {"title": "Price", "type": "number"}
    assert s.strict_schema["properties"]["vat"] == {"title": "Vat", "type": ["number", "null"]}
    assert s.parse('{"price": "12.50", "vat": 1.5}') == {"price": 12.5, "vat": 1.5}
    assert error_of(s, '{"price": "abc"}').startswith("$.price: Input should be a valid decimal")
    plain = schema_of({"type": "object", "properties": {"p": Item.model_json_schema()[
        "properties"]["price"] | {"minimum": 0}}})
    assert plain.parse('{"p": "12.5"}') == plain.parse('{"p": 12.5}') == {"p": 12.5}
    assert error_of(plain, '{"p": "abc"}') == '$.p: expected a number, got "abc"'
    assert error_of(plain, '{"p": "-1"}') == '$.p: expected >= 0, got -1.0'


# --- free-form objects in the strict form, and the test server's answers


def test_the_test_server_answers_the_strict_variant():
    from llmframe.testing._schemagen import build

    s = schema_of({**NESTED, "properties": {**NESTED["properties"], "meta": {"type": "object"}}})
    assert build({"type": "string", "contentMediaType": "application/json"}, "hi") \
        == '{"echo": "hi"}'
    assert build({"type": "string", "pattern": "^[0-9]{5}$"}, "hi") == "00000"
    assert build({"type": "string", "pattern": "^echo"}, "hi") == "echo: hi"
    assert build({"type": "string", "pattern": "^(?!.)x$"}, "hi") == "echo: hi"  # none fits
    assert build({"type": "string", "pattern": "("}, "hi") == "echo: hi"  # not a regex
    for form in (s.strict_schema, s.json_schema):  # meta: JSON text, or an object
        value = s.parse(orjson.dumps(build(form, "Paris")))
        assert value["meta"] == '{"echo":"Paris"}'
        assert value["address"]["zip"] == "00000"


def test_keywords_beside_a_union_apply_to_its_branch():
    s = schema_of({"type": "object", "properties": {
        "n": {"anyOf": [{"type": "integer"}, {"type": "null"}], "minimum": 0, "title": "N"}}})
    assert s.parse('{"n": null}') == {"n": None} and s.parse('{"n": 3}') == {"n": 3}
    assert error_of(s, '{"n": -1}') == "$.n: expected >= 0, got -1"
    assert s.strict_schema["properties"]["n"] == {"type": ["integer", "null"], "minimum": 0,
                                                  "title": "N"}


def test_a_schema_pickles_as_its_source():
    import pickle

    import llmframe._structured  # noqa: F401 - registers how a Schema pickles

    struct = pl.Struct({"p": pl.Decimal(10, 2), "t": pl.Datetime("ns")})
    s = pickle.loads(pickle.dumps(schema_of(struct)))
    assert s.source == struct and s.dtype == struct
    assert s.parse('{"p": 1.005, "t": "2024-01-01T00:00:00"}')["p"] == Decimal("1.00")
    assert error_of(s, '{"p": 1, "t": "3000-01-01T00:00:00"}').startswith("$.t: expected a ")
    closed = {"type": "object", "properties": {"a": {"type": "integer"}},
              "additionalProperties": False}
    again = pickle.loads(pickle.dumps(schema_of(closed)))
    assert again.source == closed and again.source is not closed
    assert error_of(again, '{"a": 1, "b": 2}').startswith("$.b: unexpected property")
