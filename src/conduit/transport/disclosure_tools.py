"""Conduit's progressive-disclosure MCP tools: their definitions, and what each call returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import mcp_types as types

from conduit.catalog import CONDUIT_PREFIX as _PREFIX
from conduit.core import disclosure
from conduit.core.gateway import Gateway
from conduit.errors import InvalidParamsError
from conduit.security.allowlist import Allowlist


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


TOOLS: Final = {
    f"{_PREFIX}mcp_list_tool_packages": types.Tool(
        name=f"{_PREFIX}mcp_list_tool_packages",
        description="List the tool packages (upstream MCP servers) programs can call: id, transport, tool count, "
        "status. Start here, then list a package's stubs.",
        input_schema=_schema({}, []),
    ),
    f"{_PREFIX}mcp_list_tool_stubs": types.Tool(
        name=f"{_PREFIX}mcp_list_tool_stubs",
        description="List one package's tools: ids (`package__tool`) and one-line descriptions, without schemas.",
        input_schema=_schema({"packageId": {"type": "string", "description": "A package id."}}, ["packageId"]),
    ),
    f"{_PREFIX}mcp_read_tool_schema": types.Tool(
        name=f"{_PREFIX}mcp_read_tool_schema",
        description="Read one tool in full: description, JSON input schema, output schema (the shape of its "
        "structuredContent) when it has one, and the exact TypeScript and Python call forms of "
        "`tools.<package>.<tool>` inside a program.",
        input_schema=_schema(
            {"toolId": {"type": "string", "description": "`package__tool` or `package.tool`."}}, ["toolId"]
        ),
    ),
    f"{_PREFIX}mcp_search_tools": types.Tool(
        name=f"{_PREFIX}mcp_search_tools",
        description="Search every package's tools by words in their names and descriptions; best matches first.",
        input_schema=_schema(
            {
                "query": {"type": "string", "description": "Words to look for, e.g. 'create issue'."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50, "description": "At most this many (10)."},
            },
            ["query"],
        ),
    ),
    f"{_PREFIX}mcp_validate_tool": types.Tool(
        name=f"{_PREFIX}mcp_validate_tool",
        description="Check arguments against a tool's input schema without calling it, and/or a result value "
        "against its output schema; every problem names the field and the rule it breaks.",
        input_schema=_schema(
            {
                "toolName": {"type": "string"},
                "args": {"type": "object"},
                "result": {"type": "object", "description": "A structuredContent value to check."},
            },
            ["toolName"],
        ),
    ),
}


async def call(gateway: Gateway, name: str, arguments: Mapping[str, Any], allowlist: Allowlist) -> Any:
    """The structured answer of disclosure tool ``name``, about the tools ``allowlist`` covers only
    (a caller never learns of a tool its policy keeps from it, not even by its schema or a search).

    Raises:
        ConduitError: invalid arguments, unknown package or tool (INVALID_PARAMS).
    """
    allowed = set(TOOLS[name].input_schema.get("properties", {}))
    unknown = sorted(set(arguments) - allowed)
    if unknown:
        raise InvalidParamsError(f"unknown argument(s): {', '.join(unknown)}")
    catalog = await gateway.visible_catalog(allowlist)
    short = name.removeprefix(_PREFIX)
    if short == "mcp_list_tool_packages":
        reached = {uid: up for uid, up in gateway.registry.connections.items() if allowlist.reaches(uid)}
        return {"packages": disclosure.list_packages(catalog, reached)}
    if short == "mcp_list_tool_stubs":
        return {"tools": disclosure.list_stubs(catalog, arguments.get("packageId"))}
    if short == "mcp_read_tool_schema":
        return disclosure.read_schema(catalog, arguments.get("toolId"))
    if short == "mcp_search_tools":
        return {"matches": disclosure.search(catalog, arguments.get("query"), arguments.get("limit"))}
    strict = gateway.config.validation_mode == "strict"
    return disclosure.validate(
        catalog, arguments.get("toolName"), arguments.get("args"), strict, result=arguments.get("result")
    )
