"""An upstream holding personal data, that records exactly what it receives (stdio).

``customers`` answers customer records (names, e-mail addresses, phone numbers, a card number, an IBAN) as
text and as ``structuredContent``; ``send_email`` and ``charge_card`` record their arguments byte for byte;
``received`` answers everything recorded so far. A privacy test reads the records through Conduit, sends to
a token, and asks ``received`` (over a direct connection, not through Conduit) what really arrived.
"""

from __future__ import annotations

import json
import os

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server

CUSTOMERS = [
    {
        "id": "C-1001",
        "name": "Ann Lee",
        "email": "ann.lee@example.com",
        "phone": "+1 415 555 0100",
        "card": "4111 1111 1111 1111",
        "iban": "DE89 3704 0044 0532 0130 00",
    },
    {
        "id": "C-1002",
        "name": "Bo Chen",
        "email": "bo.chen@example.org",
        "phone": "+44 20 7946 0958",
        "card": "5555 5555 5555 4444",
        "iban": "GB82 WEST 1234 5698 7654 32",
    },
    {
        "id": "C-1003",
        "name": "Cy Diaz",
        "email": "cy@diaz.example.net",
        "phone": "(212) 555-0147",
        "card": "3782 822463 10005",
        "iban": "FR14 2004 1010 0505 0001 3M02 606",
    },
]
RECORDS = {
    "type": "object",
    "properties": {"customers": {"type": "array", "items": {"type": "object"}}},
    "required": ["customers"],
}
TOOLS = [
    types.Tool(name="customers", description="Every customer record.", input_schema={"type": "object"}),
    types.Tool(
        name="customer",
        description="One customer, by e-mail address.",
        input_schema={"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
        output_schema=RECORDS,
    ),
    types.Tool(
        name="send_email",
        description="Send an e-mail.",
        input_schema={
            "type": "object",
            "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to", "body"],
        },
    ),
    types.Tool(
        name="charge_card",
        description="Charge a card.",
        input_schema={
            "type": "object",
            "properties": {"card": {"type": "string"}, "amount": {"type": "number"}},
            "required": ["card", "amount"],
        },
    ),
    types.Tool(name="note", description="Keep a note as written.", input_schema={"type": "object"}),
    types.Tool(name="received", description="Everything received so far.", input_schema={"type": "object"}),
]
RECEIVED: list[dict[str, object]] = []
LOG = os.environ.get("CRM_LOG")
"""A file each received call is appended to (one JSON line), read by tests without going through Conduit."""


async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = dict(params.arguments or {})
    if params.name == "customers":
        text = "\n".join(f"{c['name']} <{c['email']}> {c['phone']}" for c in CUSTOMERS)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content={"customers": CUSTOMERS}
        )
    if params.name == "customer":
        found = [c for c in CUSTOMERS if c["email"] == arguments.get("email")]
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps({"customers": found}))],
            structured_content={"customers": found},
        )
    if params.name == "received":
        return types.CallToolResult(content=[], structured_content={"received": list(RECEIVED)})
    call = {"tool": params.name, "arguments": arguments}
    RECEIVED.append(call)
    if LOG:
        async with await anyio.open_file(LOG, "a") as sink:
            await sink.write(json.dumps(call) + "\n")
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{params.name} done")],
        structured_content={"ok": True, "echo": arguments},
    )


server = Server("crm", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
