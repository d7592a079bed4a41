"""Conduit's progressive-disclosure MCP tools: their definitions, and what each call returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import mcp_types as types

from conduit.catalog import CONDUIT_PREFIX as _PREFIX
from conduit.core import disclosure
from conduit.core.gateway import Gateway
from conduit.errors import InvalidParamsError
from conduit.security.callers import Caller


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """An input schema as listed (:func:`call` refuses unknown arguments by name)."""
    return {"type": "object", "properties": properties, **({"required": required} if required else {})}


TOOLS: Final = {
    f"{_PREFIX}mcp_list_tool_packages": types.Tool(
        name=f"{_PREFIX}mcp_list_tool_packages",
        description="The tool packages (upstream servers) programs can call.",
        input_schema=_schema({}, []),
    ),
    f"{_PREFIX}mcp_list_tool_stubs": types.Tool(
        name=f"{_PREFIX}mcp_list_tool_stubs",
        description="A package's tools, a typed line each. Paged.",
        input_schema=_schema(
            {"packageId": {"type": "string"}, "offset": {"type": "integer"}, "limit": {"type": "integer"}},
            ["packageId"],
        ),
    ),
    f"{_PREFIX}mcp_read_tool_schema": types.Tool(
        name=f"{_PREFIX}mcp_read_tool_schema",
        description="A tool's full declaration: typescript (default), python, or json schemas.",
        input_schema=_schema(
            {"toolId": {"type": "string"}, "format": {"enum": list(disclosure.FORMATS)}},
            ["toolId"],
        ),
    ),
    f"{_PREFIX}mcp_search_tools": types.Tool(
        name=f"{_PREFIX}mcp_search_tools",
        description="Find tools by words, best first.",
        input_schema=_schema({"query": {"type": "string"}, "limit": {"type": "integer"}}, ["query"]),
    ),
    f"{_PREFIX}mcp_validate_tool": types.Tool(
        name=f"{_PREFIX}mcp_validate_tool",
        description="Check args or a result value against a tool's schemas.",
        input_schema=_schema(
            {"toolName": {"type": "string"}, "args": {"type": "object"}, "result": {"type": "object"}},
            ["toolName"],
        ),
    ),
}


async def call(gateway: Gateway, name: str, arguments: Mapping[str, Any], caller: Caller) -> Any:
    """The structured answer of disclosure tool ``name``, about the tools ``caller``'s allowlist covers only
    (a caller never learns of a tool its policy keeps from it, not even by its schema or a search).

    Raises:
        ConduitError: invalid arguments, unknown package or tool (INVALID_PARAMS).
    """
    allowed = set(TOOLS[name].input_schema.get("properties", {}))
    unknown = sorted(set(arguments) - allowed)
    if unknown:
        raise InvalidParamsError(f"unknown argument(s): {', '.join(unknown)}")
    allowlist = caller.reach
    catalog = await gateway.visible_catalog(allowlist, caller)
    short = name.removeprefix(_PREFIX)
    transports: dict[str, str] = {uid: up.config.type for uid, up in gateway.registry.connections.items()}
    transports.update(dict.fromkeys(gateway.packages, "conduit"))
    reached = {uid: transport for uid, transport in transports.items() if allowlist.reaches(uid)}
    if short == "mcp_list_tool_packages":
        return {"packages": disclosure.list_packages(catalog, reached)}
    if short == "mcp_list_tool_stubs":
        return disclosure.list_stubs(
            catalog, arguments.get("packageId"), arguments.get("offset"), arguments.get("limit"), reached
        )
    if short == "mcp_read_tool_schema":
        return disclosure.read_schema(catalog, arguments.get("toolId"), arguments.get("format"))
    if short == "mcp_search_tools":
        return {"matches": disclosure.search(catalog, arguments.get("query"), arguments.get("limit"))}
    strict = gateway.config.validation_mode == "strict"
    return disclosure.validate(
        catalog, arguments.get("toolName"), arguments.get("args"), strict, result=arguments.get("result")
    )
