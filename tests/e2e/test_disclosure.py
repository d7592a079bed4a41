"""Progressive disclosure tools and argument validation, over MCP (stdio and HTTP) and in every runtime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conduit.assembly import open_gateway
from conduit.config.schema import Config
from support import (
    EXECUTE_ISOLATE,
    EXECUTE_PYTHON,
    EXECUTE_TS,
    MASTER,
    http_upstream,
    run_code,
    stdio_client_for,
    write_config,
)

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


async def disclose(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(f"conduit__mcp_{tool}", arguments)
    assert not result.is_error, result
    return result.structured_content


async def test_packages_then_stubs_then_one_schema(conduit: Client) -> None:
    listed = await conduit.list_tools()
    names = {tool.name for tool in listed.tools}
    assert {f"conduit__mcp_{n}" for n in ("list_tool_packages", "list_tool_stubs", "read_tool_schema")} <= names
    packages = {p["packageId"]: p for p in (await disclose(conduit, "list_tool_packages"))["packages"]}
    assert packages["toolbox"]["status"] == "ok"
    assert packages["toolbox"]["transport"] == "stdio"
    assert packages["toolbox"]["toolCount"] >= 7
    assert packages["time"]["toolCount"] == 2
    page = await disclose(conduit, "list_tool_stubs", packageId="toolbox")
    assert page["package"] == "toolbox"
    stubs = {line.partition("(")[0]: line for line in page["tools"]}
    assert stubs["add"] == "add({a: number, b: number}): CallToolResult — Add two numbers."
    assert stubs["protocol_error"].startswith("protocol_error({}): CallToolResult")  # the SDK's name for it
    schema = await disclose(conduit, "read_tool_schema", toolId="toolbox.add")
    assert schema["toolId"] == "toolbox__add"
    assert "tools.toolbox.add: (args: { a: number; b: number }) => Promise<CallToolResult>" in schema["declaration"]
    assert "Returns the sum as structured content." in schema["declaration"]
    python = await disclose(conduit, "read_tool_schema", toolId="toolbox.add", format="python")
    assert "async def add(self, args: dict[str, Any] | None = None, /, *, a: float" in python["declaration"]
    described = await disclose(conduit, "read_tool_schema", toolId="toolbox.protocol_error", format="json")
    assert described["toolId"] == "toolbox__protocol-error"  # found by the SDK's name too
    assert described["inputSchema"] == {"type": "object", "properties": {}} and "outputSchema" not in described
    typed = await disclose(conduit, "read_tool_schema", toolId="time__get_current_time", format="json")
    assert typed["outputSchema"]["required"] == ["timezone", "datetime", "day_of_week", "is_dst"]


async def test_stubs_come_a_page_at_a_time(conduit: Client) -> None:
    first = await disclose(conduit, "list_tool_stubs", packageId="toolbox", limit=3)
    assert len(first["tools"]) == 3 and first["nextOffset"] == 3 and first["total"] >= 7
    rest = await disclose(conduit, "list_tool_stubs", packageId="toolbox", offset=3, limit=100)
    assert "nextOffset" not in rest and len(first["tools"]) + len(rest["tools"]) == first["total"]
    names = [line.partition("(")[0] for line in first["tools"] + rest["tools"]]
    assert names == sorted(names) and len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("tool", "arguments", "fragment"),
    [
        ("list_tool_stubs", {"packageId": "nope"}, "unknown package 'nope' (known: skills, time, toolbox, workspace)"),
        ("list_tool_stubs", {}, "packageId must be a non-empty string"),
        ("read_tool_schema", {"toolId": "toolbox__nope"}, "unknown tool 'toolbox__nope'"),
        ("read_tool_schema", {"toolId": "toolbox__add", "format": "rust"}, "format must be one of"),
        ("list_tool_stubs", {"packageId": "toolbox", "offset": -1}, "offset must be an integer from 0"),
        ("list_tool_stubs", {"packageId": "toolbox", "limit": 101}, "limit must be an integer from 1 to 100"),
        ("search_tools", {"query": "  !! "}, "at least one word"),
        ("search_tools", {"query": "add", "limit": 0}, "limit must be an integer from 1 to 50"),
        ("validate_tool", {"toolName": "toolbox.add", "args": [1]}, "args must be an object"),
        ("list_tool_packages", {"extra": 1}, "unknown argument(s): extra"),
    ],
)
async def test_bad_disclosure_requests_are_invalid_params(
    conduit: Client, tool: str, arguments: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(MCPError) as caught:
        await conduit.call_tool(f"conduit__mcp_{tool}", arguments)
    assert caught.value.error.code == -32602
    assert fragment in caught.value.error.message


async def test_search_ranks_names_above_descriptions(conduit: Client) -> None:
    matches = (await disclose(conduit, "search_tools", query="add two numbers"))["matches"]
    assert matches[0] == "toolbox.add: Add two numbers."
    converted = (await disclose(conduit, "search_tools", query="convert timezone", limit=1))["matches"]
    assert converted == ["time.convert_time: Convert time between timezones"]
    assert (await disclose(conduit, "search_tools", query="zebra"))["matches"] == []


async def test_validate_names_each_field_and_rule(conduit: Client) -> None:
    checked = await disclose(conduit, "validate_tool", toolName="toolbox__add", args={"a": "one"})
    assert checked["valid"] is False
    assert {(e["path"], e["rule"]) for e in checked["errors"]} == {("args", "required"), ("args.a", "type")}
    assert await disclose(conduit, "validate_tool", toolName="toolbox.add", args={"a": 1, "b": 2}) == {
        "valid": True,
        "errors": [],
    }


@pytest.mark.parametrize(
    ("tool", "code"),
    [
        (EXECUTE_TS, "try { await tools.toolbox.add({a: 'one', b: 2}); } catch (e) { return [e.code, e.message]; }"),
        (
            EXECUTE_ISOLATE,
            "try { await tools.toolbox.add({a: 'one', b: 2}); } catch (e) { return [e.code, e.message]; }",
        ),
        (
            EXECUTE_PYTHON,
            "try:\n    await tools.toolbox.add(a='one', b=2)\nexcept ToolError as e:\n    r = [e.code, str(e)]\nr",
        ),
    ],
)
async def test_invalid_arguments_are_refused_before_the_upstream_in_every_runtime(
    conduit: Client, tool: str, code: str
) -> None:
    is_error, out = await run_code(conduit, tool, code)
    assert not is_error, out
    error_code, message = out["result"]
    assert error_code == -32602
    assert "args.a: 'one' is not of type 'number' (type)" in message


async def test_a_proxied_call_with_invalid_arguments_is_invalid_params(conduit: Client) -> None:
    with pytest.raises(MCPError) as caught:
        await conduit.call_tool("toolbox__add", {"a": 1})
    assert caught.value.error.code == -32602
    assert "args: 'b' is a required property (required)" in caught.value.error.message


async def test_strict_mode_refuses_tools_without_a_schema(tmp_path: Path) -> None:
    async with http_upstream("--transport", "plain", "--auth", "none") as base:
        for mode, expected in (("strict", -32602), ("permissive", None)):
            config = Config.model_validate(
                {
                    "validationMode": mode,
                    "network": {"allowPrivateNetworks": True},
                    "pools": {"typescript": {"min": 0, "max": 0}, "python": {"min": 0, "max": 0}},
                    "upstreams": [{"id": "remote", "type": "http", "url": f"{base}/mcp"}],
                }
            )
            code = """
            const echoed = (await tools.remote.echo({text: "hi"})).structuredContent.text;
            try { await tools.remote.whoami({}); return [echoed, null]; } catch (e) { return [echoed, e.code]; }
            """
            async with open_gateway(config, master_token=MASTER, base_dir=tmp_path, host_env=dict(os.environ)) as gw:
                outcome = await gw.execute("typescript", code)
            assert outcome.result == ["hi", expected], (mode, outcome)


async def test_code_mode_only_lists_only_conduit_tools_and_refuses_direct_calls(
    tmp_path: Path, toolbox_command: dict[str, Any]
) -> None:
    config = write_config(
        tmp_path,
        {
            "codeModeOnly": True,
            "upstreams": [{"id": "toolbox", **toolbox_command}],
            "pools": {"typescript": {"min": 0, "max": 0}, "python": {"min": 0, "max": 0}},
        },
    )
    async with Client(stdio_client_for(config)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names and all(name.startswith("conduit__") for name in names)
        assert "conduit__mcp_search_tools" in names
        with pytest.raises(MCPError) as caught:
            await client.call_tool("toolbox__add", {"a": 1, "b": 2})
        assert caught.value.error.code == -32602
        assert "code-mode-only" in caught.value.error.message
        is_error, out = await run_code(
            client, EXECUTE_TS, "return (await tools.toolbox.add({a: 1, b: 2})).structuredContent.sum;"
        )
        assert (is_error, out["result"]) == (False, 3)
        stubs = await disclose(client, "list_tool_stubs", packageId="toolbox")
        assert any(stub.startswith("add(") for stub in stubs["tools"])
