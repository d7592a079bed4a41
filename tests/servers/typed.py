"""An upstream MCP server whose tools publish output schemas, annotations, titles and icons (stdio).

``forecast`` answers a nested object (an array of days, an enum, a nullable alert) and a resource link;
``lookup`` answers one of two shapes (a union through ``$defs``/``$ref``). Every answer carries
``structuredContent`` valid against the tool's ``outputSchema`` and its text twin, except the
forecast for ``Atlantis``: a tool error (``isError``) without structured content.
"""

from __future__ import annotations

import json

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

UNKNOWN_CITY = "Atlantis"
FORECAST_OUTPUT = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "date": {"type": "string"},
                    "high": {"type": "number"},
                    "low": {"type": "number"},
                    "sky": {"type": "string", "enum": ["sun", "cloud", "rain"]},
                },
                "required": ["date", "high", "low", "sky"],
            },
        },
        "alert": {
            "anyOf": [
                {"type": "object", "properties": {"level": {"type": "integer"}, "text": {"type": "string"}}},
                {"type": "null"},
            ]
        },
    },
    "required": ["city", "days", "alert"],
}
LOOKUP_OUTPUT = {
    "$defs": {
        "user": {
            "type": "object",
            "properties": {"kind": {"const": "user"}, "name": {"type": "string"}},
            "required": ["kind", "name"],
        },
        "team": {
            "type": "object",
            "properties": {"kind": {"const": "team"}, "members": {"type": "array", "items": {"type": "string"}}},
            "required": ["kind", "members"],
        },
    },
    "type": "object",
    "properties": {"entry": {"oneOf": [{"$ref": "#/$defs/user"}, {"$ref": "#/$defs/team"}]}},
    "required": ["entry"],
}
TOOLS = [
    types.Tool(
        name="forecast",
        title="Weather forecast",
        description="Three days of weather for a city.",
        input_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        output_schema=FORECAST_OUTPUT,
        annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False, idempotent_hint=True),
        icons=[types.Icon(src="https://example.com/wx.png", mime_type="image/png", sizes=["48x48"])],
    ),
    types.Tool(
        name="lookup",
        title="Directory lookup",
        description="A user or a team by id.",
        input_schema={"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
        output_schema=LOOKUP_OUTPUT,
        annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=False),
    ),
]


def forecast(city: str) -> dict[str, object]:
    skies = ["sun", "cloud", "rain"]
    days = [
        {"date": f"2026-12-0{day}", "high": 10.5 + day, "low": 2.0 + day, "sky": skies[day % 3]} for day in (1, 2, 3)
    ]
    alert = {"level": 2, "text": "wind"} if city == "Oslo" else None
    return {"city": city, "days": days, "alert": alert}


def lookup(entry_id: int) -> dict[str, object]:
    if entry_id % 2:
        return {"entry": {"kind": "user", "name": f"user-{entry_id}"}}
    return {"entry": {"kind": "team", "members": [f"user-{entry_id + 1}", f"user-{entry_id + 3}"]}}


async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    if params.name == "forecast" and args.get("city") == UNKNOWN_CITY:
        text = types.TextContent(type="text", text=f"no forecast for {UNKNOWN_CITY}")
        return types.CallToolResult(content=[text], is_error=True)
    if params.name == "forecast":
        value = forecast(str(args["city"]))
        link = types.ResourceLink(
            type="resource_link", uri=f"wx://radar/{value['city']}", name="radar", mime_type="image/png"
        )
        content: list[types.ContentBlock] = [types.TextContent(type="text", text=json.dumps(value)), link]
        return types.CallToolResult(content=content, structured_content=value)
    if params.name == "lookup":
        value = lookup(int(args["id"]))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(value))], structured_content=value
        )
    raise MCPError(code=-32602, message=f"unknown tool {params.name}")


server = Server("typed", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
