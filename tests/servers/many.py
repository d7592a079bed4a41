"""An upstream MCP server with as many generated tools as asked for (stdio): ``many.py [COUNT]`` (500).

Tool ``n`` is ``<verb>_<noun>_<n>`` with a two-sentence description, an input schema of three
properties and an output schema, so listing sizes grow with ``COUNT`` as a real server's would.
Calling one answers its arguments back as structured content.
"""

from __future__ import annotations

import json
import sys

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server

VERBS = ("get", "list", "create", "update", "delete", "archive", "search", "export")
NOUNS = ("invoice", "customer", "ticket", "report", "shipment", "contract", "asset", "campaign", "order", "device")


def tool(index: int) -> types.Tool:
    verb, noun = VERBS[index % len(VERBS)], NOUNS[(index // len(VERBS)) % len(NOUNS)]
    return types.Tool(
        name=f"{verb}_{noun}_{index}",
        description=f"{verb.capitalize()} a {noun} in workspace {index}. "
        f"Use it when a task names a {noun} of workspace {index}; it never touches other workspaces.",
        input_schema={
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": f"The {noun}'s id."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                "fields": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["id"],
        },
        output_schema={
            "type": "object",
            "properties": {"id": {"type": "string"}, "status": {"type": "string", "enum": ["ok", "missing"]}},
            "required": ["id", "status"],
        },
    )


TOOLS: list[types.Tool] = []


async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
    value = {"id": str((params.arguments or {}).get("id", "")), "status": "ok"}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(value))], structured_content=value
    )


server = Server("many", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    TOOLS.extend(tool(index) for index in range(int(sys.argv[1]) if len(sys.argv) > 1 else 500))
    anyio.run(main)
