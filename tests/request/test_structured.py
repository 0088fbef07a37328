"""Structured output (polars_llm._request): response_format, validate_text, struct_dtype, to_series."""

import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from typing import Annotated, Any, Literal, Optional

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel, computed_field
from typing_extensions import TypedDict

from polars_llm._request import (
    response_format,
    schema_fingerprint,
    struct_dtype,
    to_series,
    validate_text,
)
from polars_llm.exceptions import ConfigError, OutputValidationError, RowError

UTC = dt.UTC


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Leaf(BaseModel):
    code: str
    weight: float


class Mid(BaseModel):
    name: str
    leaf: Leaf
    leaves: list[Leaf]
    when: dt.date | None = None


class Rich(BaseModel):
    text: str
    count: int
    ratio: float
    flag: bool
    maybe: Optional[int] = None  # noqa: UP045 - the spelling under test
    kind: Literal["a", "b"]
    color: Color
    day: dt.date
    moment: dt.datetime
    at: dt.time
    stamp: AwareDatetime
    tags: list[str]
    mid: Mid
    mids: list[Mid]
    extra: dict[str, int]


LEAF = pl.Struct({"code": pl.String, "weight": pl.Float64})
MID = pl.Struct({"name": pl.String, "leaf": LEAF, "leaves": pl.List(LEAF), "when": pl.Date})
RICH = pl.Struct(
    {
        "text": pl.String,
        "count": pl.Int64,
        "ratio": pl.Float64,
        "flag": pl.Boolean,
        "maybe": pl.Int64,
        "kind": pl.Enum(["a", "b"]),
        "color": pl.Enum(["red", "green"]),
        "day": pl.Date,
        "moment": pl.Datetime("us"),
        "at": pl.Time,
        "stamp": pl.Datetime("us", "UTC"),
        "tags": pl.List(pl.String),
        "mid": MID,
        "mids": pl.List(MID),
        "extra": pl.String,
    }
)


def _rich(**over: Any) -> Rich:
    leaf = Leaf(code="x", weight=0.5)
    values: dict[str, Any] = {
        "text": 'héllo "quoted" \n',
        "count": -3,
        "ratio": 1.25,
        "flag": True,
        "kind": "b",
        "color": Color.GREEN,
        "day": dt.date(2024, 2, 29),
        "moment": dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        "at": dt.time(23, 59, 58, 1),
        "stamp": dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "tags": ["p", "q"],
        "mid": Mid(name="m", leaf=leaf, leaves=[leaf, leaf], when=dt.date(2000, 1, 1)),
        "mids": [Mid(name="n", leaf=leaf, leaves=[])],
        "extra": {"z": 1, "a": 2},
    }
    return Rich(**{**values, **over})


def _expected(model: BaseModel | None) -> Any:
    """model_dump with Enum members as values and JSON leaves (dict fields) as compact JSON text."""
    if model is None:
        return None

    def norm(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list | tuple | set):
            return [norm(x) for x in v]
        return v

    out = norm(model.model_dump(by_alias=True))
    for name, field in type(model).model_fields.items():
        if isinstance(getattr(model, name), dict) and field.annotation is not dict:
            out[name] = orjson.dumps(getattr(model, name)).decode()
    return out


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# --- struct_dtype ------------------------------------------------------------------------------------


def test_struct_dtype_rich_model() -> None:
    assert struct_dtype(Rich) == RICH


def test_struct_dtype_other_types() -> None:
    class Point(TypedDict):
        x: int
        y: int

    @dataclasses.dataclass
    class Span:
        start: dt.date
        end: dt.date | None

    class Node(BaseModel):
        label: str
        children: list["Node"] = []

    class Other(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        renamed: str = Field(alias="Renamed")
        dumped: str = Field(serialization_alias="out")
        hidden: int = Field(0, exclude=True)
        level: Level
        num: int | float
        mixed: int | str
        money: decimal.Decimal
        uid: uuid.UUID
        gap: dt.timedelta
        pair: tuple[int, str]
        same: tuple[int, int]
        many: tuple[float, ...]
        uniq: set[str]
        anything: Any
        bounded: Annotated[int, Field(ge=0)]
        nested_any: list[dict[str, Any]]
        point: Point
        span: Span
        node: Node

        @computed_field
        @property
        def double(self) -> int:
            return 2 * self.bounded

    assert struct_dtype(Other) == pl.Struct(
        {
            "Renamed": pl.String,
            "out": pl.String,
            "level": pl.Int64,
            "num": pl.Float64,
            "mixed": pl.String,
            "money": pl.Float64,
            "uid": pl.String,
            "gap": pl.String,
            "pair": pl.String,
            "same": pl.List(pl.Int64),
            "many": pl.List(pl.Float64),
            "uniq": pl.List(pl.String),
            "anything": pl.String,
            "bounded": pl.Int64,
            "nested_any": pl.List(pl.String),
            "point": pl.Struct({"x": pl.Int64, "y": pl.Int64}),
            "span": pl.Struct({"start": pl.Date, "end": pl.Date}),
            "node": pl.Struct({"label": pl.String, "children": pl.List(pl.String)}),
            "double": pl.Int64,
        }
    )


def test_struct_dtype_rejects_non_models() -> None:
    with pytest.raises(ConfigError):
        struct_dtype(dict)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        response_format(RootModel[list[int]])


# --- response_format ---------------------------------------------------------------------------------


def _assert_strict(schema: dict[str, Any]) -> None:
    for node in _walk(schema):
        if "properties" in node:
            assert node["additionalProperties"] is False, node
            assert node["required"] == list(node["properties"]), node
        if node.get("type") == "object":
            assert "properties" in node, node
        assert "default" not in node and "oneOf" not in node, node
        if "$ref" in node:
            assert len(node) == 1, node


class Strict(BaseModel):
    """A model strict mode can express fully."""

    text: str = "dflt"
    count: int = Field(3, ge=0, description="how many")
    maybe: Optional[int] = None  # noqa: UP045
    kind: Literal["a", "b"]
    color: Color
    day: dt.date
    moment: dt.datetime
    tags: list[str] = Field(default_factory=list, min_length=1)
    uniq: set[str]
    mid: Mid = Field(description="described ref gets inlined")
    mids: list[Mid]
    maybe_mid: Mid | None = None


def test_response_format_strict_rules() -> None:
    rf = response_format(Strict)
    assert rf["type"] == "json_schema"
    js = rf["json_schema"]
    assert js["name"] == "Strict" and js["strict"] is True
    schema = js["schema"]
    _assert_strict(schema)
    props = schema["properties"]
    assert list(props) == list(Strict.model_fields)  # field order kept: it is the order of generation
    assert props["maybe"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert {"$ref": "#/$defs/Mid"} in props["maybe_mid"]["anyOf"]
    assert props["kind"]["enum"] == ["a", "b"]
    assert schema["$defs"]["Color"]["enum"] == ["red", "green"]
    assert props["day"] == {"format": "date", "title": "Day", "type": "string"}
    assert props["moment"]["format"] == "date-time"
    assert props["count"]["minimum"] == 0 and props["count"]["description"] == "how many"
    assert "uniqueItems" not in props["uniq"] and "minItems" in props["tags"]
    assert props["mid"]["description"] == "described ref gets inlined"
    assert props["mid"]["properties"]["leaf"] == {"$ref": "#/$defs/Leaf"}
    assert set(schema["$defs"]) == {"Color", "Leaf", "Mid"}


def test_response_format_matches_openai_helper() -> None:
    helper = pytest.importorskip("openai.lib._pydantic")

    class Plain(BaseModel):
        text: str
        maybe: int | None = None
        kind: Literal["a", "b"]
        color: Color
        mid: Mid = Field(description="inlined by both")
        mids: list[Mid]

    assert response_format(Plain)["json_schema"]["schema"] == helper.to_strict_json_schema(Plain)


def test_response_format_non_strict_and_edge_shapes() -> None:
    rf = response_format(Rich)  # dict[str, int] cannot be expressed in strict mode
    assert rf["json_schema"]["strict"] is False
    assert rf["json_schema"]["schema"]["properties"]["extra"]["additionalProperties"] == {"type": "integer"}

    class Cat(BaseModel):
        kind: Literal["cat"]
        lives: int

    class Dog(BaseModel):
        kind: Literal["dog"]

    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")
        pet: Cat | Dog = Field(discriminator="kind")
        name: str = Field(min_length=2, max_length=5)

    js = response_format(Open)["json_schema"]
    assert js["strict"] is True
    _assert_strict(js["schema"])
    assert len(js["schema"]["properties"]["pet"]["anyOf"]) == 2
    assert js["schema"]["properties"]["name"] == {"title": "Name", "type": "string"}

    class Anything(BaseModel):
        value: Any
        pair: tuple[int, str]

    assert response_format(Anything)["json_schema"]["strict"] is False


def test_response_format_name_and_determinism() -> None:
    Weird = type("Wéird Name!" + "x" * 80, (BaseModel,), {"__annotations__": {"a": int}})
    name = response_format(Weird)["json_schema"]["name"]
    assert len(name) == 64 and name.startswith("W_ird_Name_x")

    first = response_format(Strict)
    first["json_schema"]["schema"]["properties"].clear()  # callers get a fresh copy each time
    again = response_format(Strict)
    assert again == response_format(Strict) == schema_fingerprint(Strict)
    assert again["json_schema"]["schema"]["properties"]
    assert json.dumps(again) == json.dumps(response_format(Strict))
    for node in _walk(again["json_schema"]["schema"]):
        if "type" in node or "$defs" in node:  # schema nodes: keywords sorted (properties keep field order)
            assert list(node) == sorted(node)


def test_response_format_recursive_model() -> None:
    class Tree(BaseModel):
        label: str
        children: list["Tree"] = []
        parent: "Tree | None" = Field(None, description="up")

    js = response_format(Tree)["json_schema"]
    assert js["strict"] is True and "$ref" not in js["schema"]  # root $ref inlined, $defs kept
    _assert_strict(js["schema"])
    assert js["schema"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    text = validate_text(Tree, '{"label": "a", "children": [{"label": "b"}], "parent": null}')
    assert to_series(Tree, "t", [text]).to_list() == [
        {"label": "a", "children": ['{"label":"b","children":[],"parent":null}'], "parent": None}
    ]


# --- validate_text -----------------------------------------------------------------------------------


def test_validate_text_happy_path_is_canonical() -> None:
    rich = _rich()
    raw = "\n  " + rich.model_dump_json(indent=2) + "\n"
    canonical = validate_text(Rich, raw)
    assert canonical == rich.model_dump_json()
    assert validate_text(Rich, canonical) == canonical
    doc = json.loads(canonical)
    assert doc["day"] == "2024-02-29" and doc["color"] == "green" and doc["stamp"].endswith("+02:00")


@pytest.mark.parametrize(
    "wrap",
    [
        "```json\n{}\n```",
        "```\n{}\n```",
        "  ```JSON {} ```  ",
        "Here you go:\n```json\n{}\n```\nAnything else?",
        "Sure! {} Hope that helps.",
    ],
)
def test_validate_text_unwraps_fences_and_prose(wrap: str) -> None:
    body = '{"code": "k", "weight": 2}'
    assert validate_text(Leaf, wrap.replace("{}", body)) == '{"code":"k","weight":2.0}'


def test_validate_text_uses_serialisation_aliases() -> None:
    class Aliased(BaseModel):
        first_name: str = Field(alias="firstName", serialization_alias="given")

    assert validate_text(Aliased, '{"firstName": "Ada"}') == '{"given":"Ada"}'
    assert struct_dtype(Aliased) == pl.Struct({"given": pl.String})


def test_validate_text_invalid_json() -> None:
    raw = '{"code": "k", "weight": '
    with pytest.raises(OutputValidationError) as info:
        validate_text(Leaf, raw)
    err = info.value
    assert isinstance(err, RowError) and err.kind == "output_validation"
    assert err.body == raw
    assert "does not match Leaf" in str(err) and "JSON" in str(err)


def test_validate_text_missing_and_wrong_fields() -> None:
    raw = '{"code": 5, "extra": 1}'
    with pytest.raises(OutputValidationError) as info:
        validate_text(Leaf, raw)
    message = str(info.value)
    assert "2 validation errors" in message
    assert "code: Input should be a valid string" in message and "weight: Field required" in message
    assert info.value.body == raw

    with pytest.raises(OutputValidationError, match=r"mid\.leaf\.weight: Field required"):
        validate_text(Rich, _rich().model_dump_json().replace('"weight":0.5', '"w":0.5', 1))


@pytest.mark.parametrize("raw", [None, "", "   \n"])
def test_validate_text_empty(raw: str | None) -> None:
    with pytest.raises(OutputValidationError, match="empty") as info:
        validate_text(Leaf, raw)
    assert info.value.body == raw


def test_validate_text_long_body_truncated() -> None:
    raw = "x" * 5000
    with pytest.raises(OutputValidationError) as info:
        validate_text(Leaf, raw)
    assert info.value.body == raw[:2000]


# --- to_series ---------------------------------------------------------------------------------------


def test_to_series_roundtrip_and_nulls() -> None:
    rows = [_rich(), None, _rich(maybe=7, tags=[], mids=[], extra={}), None]
    texts = [validate_text(Rich, r.model_dump_json()) if r else None for r in rows]
    s = to_series(Rich, "answer", texts)
    assert s.name == "answer" and s.dtype == RICH and s.len() == 4
    assert s.to_list() == [_expected(r) for r in rows]
    first = s[0]
    assert first["day"] == dt.date(2024, 2, 29) and first["mid"]["when"] == dt.date(2000, 1, 1)
    assert first["stamp"] == dt.datetime(2024, 1, 2, 1, 4, tzinfo=UTC)
    assert s.null_count() == 2


def test_to_series_accepts_series_and_empty_inputs() -> None:
    text = validate_text(Leaf, '{"code": "a", "weight": 1}')
    s = to_series(Leaf, "x", pl.Series("in", [text, None]))
    assert s.name == "x" and s.to_list() == [{"code": "a", "weight": 1.0}, None]
    assert to_series(Leaf, "x", []).dtype == LEAF
    assert to_series(Rich, "x", [None, None]).to_list() == [None, None]
    assert to_series(Leaf, "x", pl.Series([None, None])).dtype == LEAF


def test_to_series_special_values() -> None:
    class Special(BaseModel):
        money: decimal.Decimal
        naive: dt.datetime
        payload: dict[str, Any]
        mixed: int | str | None
        items: list[Any]

    rows = [
        Special(
            money=decimal.Decimal("12.50"),
            naive=dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            payload={"big": 2**70, "nested": [1, None, {"é": "ü"}]},
            mixed="x",
            items=[1, "two", None, [3]],
        ),
        Special(money=decimal.Decimal(0), naive=dt.datetime(1, 1, 1), payload={}, mixed=None, items=[]),
    ]
    s = to_series(Special, "s", [validate_text(Special, r.model_dump_json()) for r in rows])
    assert s[0] == {
        "money": 12.5,
        "naive": dt.datetime(2024, 1, 1, 17),  # aware values are stored in UTC
        "payload": '{"big":1180591620717411303424,"nested":[1,null,{"é":"ü"}]}',
        "mixed": '"x"',
        "items": ["1", '"two"', None, "[3]"],
    }
    assert s[1] == {"money": 0.0, "naive": dt.datetime(1, 1, 1), "payload": "{}", "mixed": None, "items": []}
    assert json.loads(s[0]["payload"]) == rows[0].payload


def test_to_series_bad_rows() -> None:
    good = '{"code":"a","weight":1.0}'
    texts = [good, good, '{"code":"b","weight":"heavy"}', good, "not json"]
    with pytest.raises(OutputValidationError, match="row 2") as info:
        to_series(Leaf, "x", texts)
    assert info.value.body == texts[2]
    s = to_series(Leaf, "x", texts, strict=False)
    assert s.to_list() == [{"code": "a", "weight": 1.0}] * 2 + [None, {"code": "a", "weight": 1.0}, None]

    class WithJson(BaseModel):
        data: dict[str, int]

    with pytest.raises(OutputValidationError, match="row 1") as info:
        to_series(WithJson, "x", ['{"data":{}}', "{oops"])
    assert info.value.body == "{oops"
    assert to_series(WithJson, "x", ['{"data":{"a":1}}', "{oops"], strict=False).to_list() == [
        {"data": '{"a":1}'},
        None,
    ]


def test_to_series_100k_rows() -> None:
    class Address(BaseModel):
        city: str
        zip: int | None

    class Person(BaseModel):
        name: str
        age: int
        score: float
        address: Address
        tags: list[str]

    texts = [
        Person(
            name=f"n{i}", age=i % 90, score=i / 7, address=Address(city="c", zip=i), tags=["t"] * (i % 3)
        ).model_dump_json()
        for i in range(100_000)
    ]
    s = to_series(Person, "p", texts)
    assert s.len() == 100_000 and s[99_999]["address"]["zip"] == 99_999
    assert s[4]["tags"] == ["t"] and s[3]["age"] == 3


# --- property test -----------------------------------------------------------------------------------

_ints = st.integers(-(2**63), 2**63 - 1)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_leaves = st.builds(Leaf, code=st.text(), weight=_floats)
_mids = st.builds(
    Mid, name=st.text(), leaf=_leaves, leaves=st.lists(_leaves, max_size=3), when=st.none() | st.dates()
)
_zones = st.integers(-14 * 4, 14 * 4).map(lambda q: dt.timezone(dt.timedelta(minutes=15 * q)))
_riches = st.builds(
    Rich,
    text=st.text(),
    count=_ints,
    ratio=_floats,
    flag=st.booleans(),
    maybe=st.none() | _ints,
    kind=st.sampled_from(["a", "b"]),
    color=st.sampled_from(Color),
    day=st.dates(),
    moment=st.datetimes(),
    at=st.times(),
    stamp=st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31), timezones=_zones),
    tags=st.lists(st.text(), max_size=4),
    mid=_mids,
    mids=st.lists(_mids, max_size=3),
    extra=st.dictionaries(st.text(max_size=5), _ints, max_size=3),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.none() | _riches, max_size=8))
def test_property_roundtrip(rows: list[Rich | None]) -> None:
    texts = [validate_text(Rich, r.model_dump_json()) if r is not None else None for r in rows]
    s = to_series(Rich, "rich", texts)
    assert s.dtype == RICH
    assert s.to_list() == [_expected(r) for r in rows]
    back = [Rich.model_validate_json(t) if t else None for t in texts]
    assert back == rows
