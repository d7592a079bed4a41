"""What a program may not call, it cannot see: the SDK, its declarations, discovery and errors.

With an allowlist of one tool, a program that walks everything its SDK gives it (object keys, function
sources, Python's module and class dictionaries, discovery with and without a query) must find that tool
and nothing of the other tools or of the other upstream; and calling a forbidden tool must look exactly like
calling one that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from canary_server import BASE_CONFIG, RUNTIMES, AttackServer, attack_server

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

ALLOWED = ["toolbox.echo"]
FORBIDDEN_WORDS = ("sleep", "crash", "protocol", "get_current_time", "convert_time", "timezone", "Add two numbers")
"""Names, descriptions and schema words of tools outside the allowlist, and the other upstream's id."""


@pytest.fixture(scope="module")
async def server(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackServer]:
    upstreams = [
        *BASE_CONFIG["upstreams"],
        {"id": "clock", "command": "mcp-server-time", "args": ["--local-timezone", "Etc/UTC"]},
    ]
    async with attack_server(tmp_path_factory.mktemp("allowlist-scope"), {"upstreams": upstreams}) as running:
        yield running


WALK = {
    "typescript": """
        const seen = [];
        const walk = (value, path, depth) => {
          if (depth > 6 || value === null || (typeof value !== "object" && typeof value !== "function")) return;
          if (typeof value === "function") seen.push(path + " = " + Function.prototype.toString.call(value));
          for (const key of Reflect.ownKeys(value)) {
            seen.push(path + "." + String(key));
            try { walk(value[key], path + "." + String(key), depth + 1); } catch (_) {}
          }
        };
        walk(tools, "tools", 0);
        const discovered = [await discoverMCPTools(), await discoverMCPTools({query: "time"}),
                            await discoverMCPTools({query: "add"})];
        return {keys: Object.keys(tools), upstream: Object.keys(tools.toolbox), seen, discovered,
                clock: typeof tools.clock};
    """,
    "python": """
import sys, inspect
seen = []
sdk = sys.modules["conduit_tools"]
for name, value in vars(sdk).items():
    seen.append(name)
    if inspect.isclass(value):
        for member, attribute in vars(value).items():
            seen.append(f"{name}.{member}")
            seen.append(str(getattr(attribute, "__doc__", "")))
            seen.append(str(getattr(attribute, "__annotations__", "")))
discovered = [await discover_mcp_tools(), await discover_mcp_tools("time"), await discover_mcp_tools("add")]
{"keys": [n for n in dir(tools) if not n.startswith("_")],
 "upstream": [n for n in dir(tools.toolbox) if not n.startswith("_")],
 "seen": seen, "discovered": discovered, "clock": str(hasattr(tools, "clock"))}
""",
}
WALK["isolate"] = WALK["typescript"]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_the_sdk_and_discovery_show_only_the_allowed_tools(server: AttackServer, runtime: str) -> None:
    out = await server.attack(runtime, WALK[runtime], allowedTools=ALLOWED)
    found = out["result"]
    assert found["upstream"] == ["echo"], found["upstream"]
    assert "clock" not in found["keys"] and found["clock"] in ("undefined", "False")
    everything = repr(found["seen"])
    assert "echo" in everything
    for word in FORBIDDEN_WORDS:
        assert word not in everything, f"{word!r} reached the {runtime} SDK"
    listed, about_time, about_add = found["discovered"]
    assert [tool["name"] for tool in listed] == ["toolbox__echo"]
    assert about_time == [] and about_add == []


CALL_BOTH = {
    "typescript": """
        const errors = [];
        for (const name of %s) {
          try { await tools.$raw(name, {a: 1, b: 2}); errors.push("called " + name); }
          catch (e) { errors.push([e.code, e.message.replaceAll(name.replace(".", "__"), "<name>")]); }
        }
        return errors;
    """,
    "python": """
errors = []
for name in %s:
    try:
        await tools.raw(name, {"a": 1, "b": 2})
        errors.append("called " + name)
    except ToolError as e:
        errors.append([e.code, str(e).replace(name.replace(".", "__"), "<name>")])
errors
""",
}
CALL_BOTH["isolate"] = CALL_BOTH["typescript"]
PAIRS = [
    ("toolbox__add", "toolbox__no_such_tool"),  # forbidden vs unknown, same upstream
    ("clock__get_current_time", "nowhere__get_current_time"),  # another upstream's tool vs no upstream at all
    ("clock.convert_time", "nowhere.convert_time"),
]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("forbidden", "unknown"), PAIRS)
async def test_a_forbidden_tool_fails_exactly_like_one_that_does_not_exist(
    server: AttackServer, runtime: str, forbidden: str, unknown: str
) -> None:
    names = f'["{forbidden}", "{unknown}"]'
    out = await server.attack(runtime, CALL_BOTH[runtime] % names, allowedTools=ALLOWED)
    refused_forbidden, refused_unknown = out["result"]
    assert refused_forbidden == refused_unknown, out
    assert refused_forbidden[0] == -32003
