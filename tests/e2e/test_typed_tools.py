"""Proxied tools keep what their upstream said of them, and their results keep their structure.

The upstream (tests/servers/typed.py) publishes output schemas (nested objects, arrays, an enum, a
nullable member, a union through $defs), annotations, titles and icons, and answers with
structuredContent and a resource link.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from support import EXECUTE_ISOLATE, EXECUTE_PYTHON, EXECUTE_TS, connected, run_code, run_ts, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

TYPED = str(Path(__file__).parents[1] / "servers" / "typed.py")
sys.path.insert(0, str(Path(TYPED).parent))
import typed  # noqa: E402  (the upstream's own definitions, to compare with)


@pytest.fixture(scope="module", params=["stdio", "http"])
async def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    config = write_config(
        tmp_path_factory.mktemp("typed"),
        {
            "upstreams": [{"id": "typed", "command": sys.executable, "args": [TYPED]}],
            "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 0, "max": 1}},
        },
    )
    async with connected(request.param, config) as mcp:
        yield mcp


async def test_a_proxied_tool_is_listed_as_its_upstream_lists_it_under_its_qualified_name(client: Client) -> None:
    listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    for original in typed.TOOLS:
        proxied = listed[f"typed__{original.name}"]
        assert proxied.output_schema == original.output_schema
        assert proxied.input_schema == original.input_schema
        assert proxied.annotations == original.annotations
        assert proxied.title == original.title
        assert proxied.icons == original.icons
        assert proxied.description == original.description


async def test_a_proxied_call_keeps_structured_content_and_resource_links(client: Client) -> None:
    result = await client.call_tool("typed__forecast", {"city": "Oslo"})  # the client checks it against the schema
    assert not result.is_error
    assert result.structured_content == typed.forecast("Oslo")
    link = result.content[1]
    assert link.type == "resource_link" and str(link.uri) == "wx://radar/Oslo" and link.mime_type == "image/png"
    union = await client.call_tool("typed__lookup", {"id": 4})
    assert union.structured_content == {"entry": {"kind": "team", "members": ["user-5", "user-7"]}}


async def test_a_programs_raw_call_keeps_structured_content_and_resource_links(client: Client) -> None:
    failed, outcome = await run_ts(
        client,
        "const r = await tools.$raw('typed__forecast', { city: 'Oslo' });"
        "return { value: r.structuredContent, link: r.content[1] };",
    )
    assert not failed, outcome
    assert outcome["result"]["value"] == typed.forecast("Oslo")
    assert outcome["result"]["link"] == {
        "type": "resource_link",
        "uri": "wx://radar/Oslo",
        "name": "radar",
        "mimeType": "image/png",
    }


# One program per runtime: the typed call gives the structured value itself; a tool error throws -32005
# naming the tool, with the raw result as the error's data; the raw form still gives the whole result.
JS_PROGRAM = """
const wx = await tools.typed.forecast({ city: "Oslo" });
const found = (await tools.typed.lookup({ id: 4 })).entry;
let failure = null;
try { await tools.typed.forecast({ city: "Atlantis" }); } catch (e) { failure = [e.code, e.message, e.data]; }
const raw = await tools.$raw("typed__forecast", { city: "Oslo" });
return { wx, members: found.kind === "team" ? found.members : [], failure, rawKeys: Object.keys(raw).sort() };
"""
TYPED_PROGRAMS = {
    EXECUTE_TS: JS_PROGRAM,  # the same SDK in Deno and in a V8 isolate
    EXECUTE_ISOLATE: JS_PROGRAM,
    "pyodide": """
from conduit_tools import TypedForecast, TypedForecastDaysItem
wx: TypedForecast = await tools.typed.forecast(city="Oslo")
found = (await tools.typed.lookup(id=4))["entry"]
try:
    await tools.typed.forecast(city="Atlantis")
except ToolError as e:
    failure = [e.code, str(e), e.data]
raw = await tools.raw("typed__forecast", {"city": "Oslo"})
fields = [sorted(TypedForecast.__annotations__), sorted(TypedForecastDaysItem.__required_keys__)]
{"wx": wx, "members": found["members"] if found["kind"] == "team" else [], "failure": failure,
 "rawKeys": sorted(raw), "fields": fields}
""",
    "monty": """
wx = await tools.typed.forecast(city="Oslo")
found = (await tools.typed.lookup(id=4))["entry"]
try:
    await tools.typed.forecast(city="Atlantis")
except Exception as e:
    failure = [-32005, str(e), None]
raw = await tools.raw("typed__forecast", {"city": "Oslo"})
{"wx": wx, "members": found["members"] if found["kind"] == "team" else [], "failure": failure, "rawKeys": sorted(raw)}
""",
}


@pytest.mark.parametrize("runtime", list(TYPED_PROGRAMS))
async def test_a_typed_call_gives_the_structured_value_and_a_tool_error_throws(client: Client, runtime: str) -> None:
    if runtime in ("pyodide", "monty"):
        failed, outcome = await run_code(client, EXECUTE_PYTHON, TYPED_PROGRAMS[runtime], engine=runtime)
        assert outcome.get("engine") == runtime, outcome
    else:
        failed, outcome = await run_code(client, runtime, TYPED_PROGRAMS[runtime])
    assert not failed, outcome
    result = outcome["result"]
    assert result["wx"] == typed.forecast("Oslo")
    assert result["members"] == ["user-5", "user-7"]
    code, message, data = result["failure"]
    assert code == -32005
    assert message.startswith("tool 'typed__forecast' reported an error: no forecast for Atlantis"), message
    if runtime != "monty":  # Monty's exceptions carry a message only
        assert data["isError"] is True and data["content"] == [{"type": "text", "text": "no forecast for Atlantis"}]
    assert {"content", "structuredContent"} <= set(result["rawKeys"])
    if runtime == "pyodide":  # the TypedDicts import and name every field
        assert result["fields"] == [["alert", "city", "days"], ["date", "high", "low", "sky"]]


async def disclose(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(f"conduit__mcp_{tool}", arguments)
    assert not result.is_error, result
    return result.structured_content


async def test_read_tool_schema_shows_the_output_schema(client: Client) -> None:
    read = await disclose(client, "read_tool_schema", toolId="typed.lookup", format="json")
    assert read["outputSchema"] == typed.LOOKUP_OUTPUT
    typescript = (await disclose(client, "read_tool_schema", toolId="typed.lookup"))["declaration"]
    assert typescript.endswith('| { kind: "team"; members: Array<string> } }>')  # the typed result
    python = (await disclose(client, "read_tool_schema", toolId="typed.lookup", format="python"))["declaration"]
    assert "class TypedLookupUser(TypedDict):" in python and "-> TypedLookup:" in python
    assert "# await tools.typed.lookup(...)  (read-only)\n" in python  # what its annotations say
    forecast = (await disclose(client, "read_tool_schema", toolId="typed.forecast"))["declaration"]
    assert forecast.startswith(
        "/**\n * Three days of weather for a city.\n * Hints: read-only, idempotent, closed-world.\n */"
    )


async def test_stubs_and_search_show_typed_signatures_in_brief(client: Client) -> None:
    page = await disclose(client, "list_tool_stubs", packageId="typed")
    assert page["tools"] == [
        "forecast({city: string}): {city: string, days: {…}[], alert: {…}|null} — Three days of weather for a city.",
        "lookup({id: number}): {entry: {…}} — A user or a team by id.",  # a union of objects, in brief
    ]
    found = await disclose(client, "search_tools", query="weather")
    assert found["matches"] == ["typed.forecast: Three days of weather for a city."]


async def test_validate_tool_checks_a_result_against_the_output_schema(client: Client) -> None:
    good = await disclose(client, "validate_tool", toolName="typed__forecast", result=typed.forecast("Oslo"))
    assert good == {"result": {"valid": True, "errors": []}}
    wrong = {**typed.forecast("Bergen"), "days": [{"date": "2026-12-01", "high": 1, "low": 0, "sky": "snow"}]}
    del wrong["alert"]
    checked = await disclose(client, "validate_tool", toolName="typed__forecast", args={"city": 3}, result=wrong)
    assert checked["valid"] is False and [e["path"] for e in checked["errors"]] == ["args.city"]
    assert checked["result"]["valid"] is False
    assert {(e["path"], e["rule"]) for e in checked["result"]["errors"]} == {
        ("result", "required"),
        ("result.days[0].sky", "enum"),
    }
    neither = await disclose(client, "validate_tool", toolName="typed__lookup", result={"entry": {"kind": "team"}})
    assert neither["result"]["valid"] is False and neither["result"]["errors"][0]["path"] == "result.entry"


async def test_validate_tool_refuses_a_result_that_is_not_an_object_and_a_call_with_nothing_to_check(
    client: Client,
) -> None:
    for arguments, message in (
        ({"toolName": "typed__lookup", "result": [1]}, "result must be an object"),
        ({"toolName": "typed__lookup"}, "give args, result, or both"),
    ):
        with pytest.raises(MCPError, match=message):  # invalid params: a protocol error
            await client.call_tool("conduit__mcp_validate_tool", arguments)


async def test_discovery_inside_a_program_shows_output_schemas(client: Client) -> None:
    failed, outcome = await run_ts(
        client,
        "return (await discoverMCPTools()).map((t) => [t.tool, t.outputSchema?.required ?? null]);",
        allowedTools=["typed.*"],
    )
    assert not failed, outcome
    assert outcome["result"] == [["forecast", ["city", "days", "alert"]], ["lookup", ["entry"]]]
