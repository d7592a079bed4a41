"""Proxied tools keep what their upstream said of them, and their results keep their structure.

The upstream (tests/servers/typed.py) publishes output schemas (nested objects, arrays, an enum, a
nullable member, a union through $defs), annotations, titles and icons, and answers with
structuredContent and a resource link.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client

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
