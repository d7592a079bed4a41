"""Demo upstream: a small product catalog, the kind of API code mode shines on.

An agent that wants "the three cheapest in-stock items under a category" would need one
JSON tool call per page and per product; a program does it in one execution.
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server

PRODUCTS: list[dict[str, Any]] = [
    {"sku": "KB-01", "name": "Mechanical keyboard", "category": "peripherals", "price": 89.0, "stock": 12},
    {"sku": "KB-02", "name": "Low-profile keyboard", "category": "peripherals", "price": 59.0, "stock": 0},
    {"sku": "MS-01", "name": "Trackball mouse", "category": "peripherals", "price": 45.5, "stock": 7},
    {"sku": "MS-02", "name": "Vertical mouse", "category": "peripherals", "price": 39.9, "stock": 3},
    {"sku": "MN-01", "name": "27in monitor", "category": "displays", "price": 279.0, "stock": 4},
    {"sku": "MN-02", "name": "34in ultrawide", "category": "displays", "price": 449.0, "stock": 0},
    {"sku": "CB-01", "name": "USB-C cable", "category": "cables", "price": 9.5, "stock": 120},
    {"sku": "CB-02", "name": "HDMI 2.1 cable", "category": "cables", "price": 14.0, "stock": 64},
]

TOOLS = [
    types.Tool(
        name="search_products",
        description="Search products by category and optional name text. Returns SKUs, names and prices.",
        input_schema={
            "type": "object",
            "properties": {
                "category": {"type": "string", "enum": ["peripherals", "displays", "cables"]},
                "text": {"type": "string", "description": "Case-insensitive text in the product name."},
            },
        },
    ),
    types.Tool(
        name="get_stock",
        description="Units in stock for one SKU.",
        input_schema={"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]},
    ),
]


async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    if params.name == "search_products":
        text = str(args.get("text", "")).lower()
        found = [
            {k: p[k] for k in ("sku", "name", "price")}
            for p in PRODUCTS
            if (not args.get("category") or p["category"] == args["category"]) and text in p["name"].lower()
        ]
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=f"{len(found)} products")],
            structured_content={"products": found},
        )
    if params.name == "get_stock":
        product = next((p for p in PRODUCTS if p["sku"] == args.get("sku")), None)
        if product is None:
            return types.CallToolResult(content=[types.TextContent(type="text", text="no such SKU")], is_error=True)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=str(product["stock"]))],
            structured_content={"sku": product["sku"], "stock": product["stock"]},
        )
    return types.CallToolResult(content=[types.TextContent(type="text", text="unknown tool")], is_error=True)


server = Server("catalog", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
