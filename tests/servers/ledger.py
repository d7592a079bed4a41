"""An upstream with sensitive tools that keeps a ledger of every call it receives (stdio).

``refund`` and ``delete_account`` are destructive (annotated so), ``balance`` is read-only, and
``calls`` answers the ledger: every call this process received, in order, with its arguments.
A test asks it afterwards to prove that a declined call never reached the upstream.
"""

from __future__ import annotations

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

ACCOUNT = {"type": "object", "properties": {"account": {"type": "string"}}, "required": ["account"]}
TOOLS = [
    types.Tool(
        name="refund",
        description="Refund an amount to an account.",
        input_schema={
            "type": "object",
            "properties": {"account": {"type": "string"}, "amount": {"type": "number"}, "note": {"type": "string"}},
            "required": ["account", "amount"],
        },
        annotations=types.ToolAnnotations(destructive_hint=True, read_only_hint=False),
    ),
    types.Tool(
        name="delete_account",
        description="Delete an account.",
        input_schema=ACCOUNT,
        annotations=types.ToolAnnotations(destructive_hint=True),
    ),
    types.Tool(
        name="balance",
        description="An account's balance.",
        input_schema=ACCOUNT,
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(name="calls", description="Every call received so far.", input_schema={"type": "object"}),
]
LEDGER: list[dict[str, object]] = []


async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == "calls":
        return types.CallToolResult(content=[], structured_content={"calls": list(LEDGER)})
    if params.name not in {tool.name for tool in TOOLS}:
        raise MCPError(code=-32602, message=f"unknown tool {params.name}")
    LEDGER.append({"tool": params.name, "arguments": dict(params.arguments or {})})
    done = {"tool": params.name, "ok": True}
    return types.CallToolResult(content=[types.TextContent(type="text", text="done")], structured_content=done)


server = Server("ledger", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
