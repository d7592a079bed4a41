"""A small upstream MCP server for Conduit's tests, spoken to over stdio.

Tools cover the paths Conduit must handle: plain results, structured results, slow calls,
tool-level errors, a crash mid-call, and an environment probe that proves which variables
the gateway passed.
"""

from __future__ import annotations

import os
import sys

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

TOOLS = [
    types.Tool(
        name="echo",
        description="Return the given text unchanged.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    ),
    types.Tool(
        name="add",
        description="Add two numbers.\nReturns the sum as structured content.",
        input_schema={
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    ),
    types.Tool(
        name="sleep",
        description="Wait for `seconds`, then answer.",
        input_schema={"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]},
    ),
    types.Tool(
        name="fail",
        description="Always answer with a tool error (isError).",
        input_schema={"type": "object", "properties": {"reason": {"type": "string"}}},
    ),
    types.Tool(
        name="protocol-error",
        description="Always answer with a JSON-RPC error.",
        input_schema={"type": "object", "properties": {}},
    ),
    types.Tool(
        name="crash",
        description="Exit the server process in the middle of the call.",
        input_schema={"type": "object", "properties": {}},
    ),
    types.Tool(
        name="env",
        description="Report the environment variable names this process received, and its pid.",
        input_schema={"type": "object", "properties": {}},
    ),
]


def text(value: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=value)]


async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    match params.name:
        case "echo":
            return types.CallToolResult(content=text(str(args.get("text", ""))))
        case "add":
            total = args["a"] + args["b"]
            return types.CallToolResult(content=text(str(total)), structured_content={"sum": total})
        case "sleep":
            await anyio.sleep(float(args.get("seconds", 0)))
            return types.CallToolResult(content=text("slept"))
        case "fail":
            return types.CallToolResult(content=text(f"failed: {args.get('reason', 'no reason')}"), is_error=True)
        case "protocol-error":
            raise MCPError(code=-32099, message="the toolbox refuses")
        case "crash":
            sys.stdout.flush()
            print("toolbox: crashing on purpose", file=sys.stderr, flush=True)
            os._exit(3)
        case "env":
            return types.CallToolResult(
                content=text(",".join(sorted(os.environ))),
                structured_content={"names": sorted(os.environ), "pid": os.getpid()},
            )
    raise MCPError(code=-32602, message=f"unknown tool {params.name}")


server = Server("toolbox", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
