"""The generated Python SDK's result types: TypedDicts from output schemas, real Python on the host."""

from __future__ import annotations

import asyncio
import sys
import typing
from pathlib import Path
from typing import Any

import mcp_types as types

from conduit.catalog import ToolEntry
from conduit.sdk.python import TYPES_START, generate_monty_sdk, generate_python_sdk, python_declaration
from conduit.sdk.typeddicts import TypedDicts

sys.path.insert(0, str(Path(__file__).parents[1] / "servers"))
import typed

TYPED = [ToolEntry.of("wx", tool) for tool in typed.TOOLS]
PLAIN = ToolEntry("wx", "ping", "Ping.", {"type": "object", "properties": {}})


def load(source: str) -> dict[str, Any]:
    """Run a generated SDK as CPython does (Pyodide runs it the same way), with the prelude's names."""
    namespace: dict[str, Any] = {"invoke": None, "_MISSING": object()}
    exec(compile(source, "<sdk>", "exec", dont_inherit=True), namespace)  # not this module's __future__ import
    return namespace


def test_typed_dicts_import_and_name_every_field_of_the_test_upstreams_output_schemas() -> None:
    sdk = load(generate_python_sdk([*TYPED, PLAIN]))
    forecast, day, alert = sdk["WxForecast"], sdk["WxForecastDaysItem"], sdk["WxForecastAlertOption1"]
    assert typing.is_typeddict(forecast) and typing.is_typeddict(day)
    assert forecast.__required_keys__ == {"city", "days", "alert"}
    hints = typing.get_type_hints(forecast)
    assert hints["city"] is str and hints["days"] == list[day] and hints["alert"] == alert | None
    assert typing.get_type_hints(day)["sky"] == typing.Literal["sun", "cloud", "rain"]
    assert alert.__optional_keys__ == {"level", "text"}  # not required: NotRequired
    user, team = sdk["WxLookupUser"], sdk["WxLookupTeam"]  # $defs, named after their keys
    assert typing.get_type_hints(sdk["WxLookup"])["entry"] == user | team
    assert typing.get_type_hints(user)["kind"] == typing.Literal["user"]
    assert typing.get_type_hints(team)["members"] == list[str]
    methods = sdk["_wx_tools"]
    assert typing.get_type_hints(methods.forecast)["return"] is forecast
    assert typing.get_type_hints(methods.ping)["return"] == dict[str, Any]  # no output schema: the whole result


def test_a_recursive_ref_and_a_key_that_is_no_identifier_still_make_valid_typed_dicts() -> None:
    schema = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "description": "What it is\ncalled."},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
                },
                "required": ["label"],
            }
        },
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/node"}, "first-seen": {"type": "string", "nullable": True}},
        "required": ["root", "first-seen"],
    }
    types = TypedDicts()
    assert types.result_hint("graph", "tree", schema) == "GraphTree"
    source = types.source()
    assert "    label: str  # What it is called.\n" in source
    namespace: dict[str, Any] = {}
    header = "from typing import Any, Literal, NotRequired, TypedDict\n"
    exec(compile(header + source, "<types>", "exec", dont_inherit=True), namespace)
    node, tree = namespace["GraphTreeNode"], namespace["GraphTree"]
    node_hints = typing.get_type_hints(node, localns=namespace)
    assert node_hints["children"] == list[node] and node_hints["parent"] == node | None
    assert typing.get_type_hints(tree, localns=namespace) == {"root": node, "first-seen": str | None}


def test_names_stay_unique_across_the_sdk() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    entries = [
        ToolEntry.of(upstream, types.Tool(name=name, input_schema={}, output_schema=schema))
        for upstream, name in (("x", "y_z"), ("x_y", "z"))
    ]
    sdk = load(generate_python_sdk(entries))
    assert typing.is_typeddict(sdk["XYZ"]) and typing.is_typeddict(sdk["XYZ2"])


def test_monty_gets_the_sdk_without_the_typed_dicts_it_cannot_define() -> None:
    source = generate_python_sdk(TYPED)
    assert TYPES_START in source and "class WxForecast(TypedDict)" in source
    stripped = generate_monty_sdk(TYPED)
    assert (
        "(TypedDict)" not in stripped
        and "import NotRequired, TypedDict" not in stripped
        and "async def forecast" in stripped
        and "-> WxForecast:" in stripped
    )
    assert generate_monty_sdk([PLAIN]) == generate_python_sdk([PLAIN])


def test_the_declaration_shows_the_typed_dicts_then_the_method() -> None:
    declaration = python_declaration(TYPED[0])
    assert declaration.index("class WxForecastDaysItem(TypedDict):") < declaration.index("class WxForecast(TypedDict):")
    assert (
        "async def forecast(self, args: dict[str, Any] | None = None, /, *, city: str = _MISSING) -> WxForecast:"
        in (declaration)
    )
    assert "-> dict[str, Any]:" in python_declaration(PLAIN)


def test_names_the_sdk_uses_and_values_python_cannot_put_in_a_literal_do_not_break_it() -> None:
    schema = {
        "type": "object",
        "properties": {
            "mode": {"enum": [{"a": 1}, [2]]},  # unhashable: Literal[...] would fail as the SDK loads
            "ratio": {"const": 0.5},
            "kind": {"enum": ["x", 1, None]},
        },
    }
    tool = types.Tool(name="dict", input_schema=schema, output_schema=schema)  # "typed" + "dict" = TypedDict
    sdk = load(generate_python_sdk([ToolEntry.of("typed", tool)]))
    result = sdk["TypedDict2"]
    assert typing.is_typeddict(result) and sdk["TypedDict"] is typing.TypedDict
    hints = typing.get_type_hints(result)
    assert hints["mode"] is Any
    assert hints["ratio"] is Any and hints["kind"] == typing.Literal["x", 1, None]


def test_two_upstreams_whose_names_meet_as_identifiers_keep_a_class_each_and_disclosure_names_them_alike() -> None:
    from conduit.catalog import Catalog
    from conduit.core.disclosure import find_tool, search

    entries = [ToolEntry("a-b", "ping", "Ping one.", {}), ToolEntry("a_b", "ping", "Ping two.", {})]
    sdk = load(generate_python_sdk(entries))
    called: list[str] = []

    async def invoke(name: str, args: Any, kwargs: Any, structured: bool = False) -> None:
        called.append(name)

    sdk["invoke"] = invoke
    tools = sdk["tools"]
    assert type(tools.a_b) is not type(tools.a_b_2)  # one class per upstream (both were _a_b_tools before)
    asyncio.run(tools.a_b.ping())
    asyncio.run(tools.a_b_2.ping())
    assert called == ["a-b__ping", "a_b__ping"]
    catalog = Catalog(tools=tuple(entries), failures={})
    assert search(catalog, "ping", 5) == ["a_b.ping: Ping one.", "a_b_2.ping: Ping two."]  # the SDK's names
    assert find_tool(catalog, "a_b_2.ping").qualified == "a_b__ping"
