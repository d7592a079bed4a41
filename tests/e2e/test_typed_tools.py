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

from support import connected, run_ts, write_config

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


async def test_a_programs_call_keeps_structured_content_and_resource_links(client: Client) -> None:
    failed, outcome = await run_ts(
        client,
        "const r = await tools.typed.forecast({ city: 'Oslo' });"
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


async def disclose(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(f"conduit__mcp_{tool}", arguments)
    assert not result.is_error, result
    return result.structured_content


async def test_read_tool_schema_shows_the_output_schema(client: Client) -> None:
    read = await disclose(client, "read_tool_schema", toolId="typed.lookup")
    assert read["outputSchema"] == typed.LOOKUP_OUTPUT
    assert read["typescript"].endswith('| { kind: "team"; members: Array<string> } }>>')  # the typed result


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
