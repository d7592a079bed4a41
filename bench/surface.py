"""The code-mode surface in bytes: what a model reads to write one program, through a real Conduit over stdio.

For one task the model reads Conduit's ``tools/list`` (``codeModeOnly: true``), one search, one package's
stubs and one tool's schema. Each is counted as the model sees it: ``tools/list`` as its JSON result, a
disclosure answer as its text (the JSON the client hands the model; the wire also carries it once more as
``structuredContent``, which clients give programs, not models). Beside it: the same upstreams' tools
exposed directly (every tool definition, as their own ``tools/list`` results would show them).

Three sets: the four reference servers (PyPI ``mcp-server-time``, npm ``@modelcontextprotocol/
server-everything``, ``-memory``, ``-filesystem``, installed into ``.venv/reference-upstreams`` by
``make test``), the same four plus a test server with 500 generated tools (tests/servers/many.py), and the
four with 200 saved skills (saved through ``conduit__mcp_save_skill``; the ``skills`` package is measured too).
The stubs counted are the package's first page (10 tools); the schema is the largest TypeScript
declaration of any of its tools.

Run: ``.venv/bin/python bench/surface.py``
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import yaml
from mcp import Client, StdioServerParameters

ROOT: Final = Path(__file__).resolve().parents[1]
VENV: Final = ROOT / ".venv"
REFERENCE: Final = VENV / "reference-upstreams" / "node_modules" / "@modelcontextprotocol"
MANY: Final = ROOT / "tests" / "servers" / "many.py"
BUDGET: Final = 6 * 1024
"""The aim: tools/list + one search + one package's stubs + one schema, in bytes."""
TASKS: Final = {
    "time": "current time in a timezone",
    "everything": "add two numbers",
    "memory": "create entities knowledge graph",
    "filesystem": "read a text file",
    "many": "update the invoice of workspace 417",
    "skills": "weekly sales report for a region",
}
"""The search an agent makes for a task that needs each package."""


def reference_upstreams(scratch: Path) -> list[dict[str, Any]]:
    """Conduit's upstream entries for the four reference servers (their files under ``scratch``)."""
    missing = [
        name for name in ("server-everything", "server-memory", "server-filesystem") if not (REFERENCE / name).is_dir()
    ]
    if missing or not (VENV / "bin" / "mcp-server-time").is_file():
        raise FileNotFoundError(
            f"reference upstreams not installed ({', '.join(missing) or 'mcp-server-time'}): make test"
        )
    (scratch / "files").mkdir(exist_ok=True)
    node = "node"
    return [
        {"id": "time", "command": str(VENV / "bin" / "mcp-server-time")},
        {"id": "everything", "command": node, "args": [str(REFERENCE / "server-everything" / "dist" / "index.js")]},
        {
            "id": "memory",
            "command": node,
            "args": [str(REFERENCE / "server-memory" / "dist" / "index.js")],
            "env": {"MEMORY_FILE_PATH": str(scratch / "memory.jsonl")},
        },
        {
            "id": "filesystem",
            "command": node,
            "args": [str(REFERENCE / "server-filesystem" / "dist" / "index.js"), str(scratch / "files")],
        },
    ]


def many_upstream(count: int = 500) -> dict[str, Any]:
    return {"id": "many", "command": sys.executable, "args": [str(MANY), str(count)]}


@dataclass(frozen=True)
class Surface:
    tools_list: int
    search: int
    stubs: int
    schema: int
    direct: int
    """Every upstream tool exposed directly (its definition as the upstream lists it)."""
    upstream_tools: int

    @property
    def total(self) -> int:
        return self.tools_list + self.search + self.stubs + self.schema


def _bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


async def _read(client: Client, tool: str, arguments: Mapping[str, Any]) -> tuple[int, Any]:
    """A disclosure answer: its text's size (what the model reads) and its value."""
    result = await client.call_tool(f"conduit__mcp_{tool}", dict(arguments))
    assert not result.is_error, result
    text = result.content[0]
    assert text.type == "text"
    return len(text.text.encode()), result.structured_content


def tool_id(package: str, stub: str) -> str:
    """The id of the tool a stub line (``name(args): result — summary``) describes."""
    return f"{package}.{stub.partition('(')[0]}"


async def measure(client: Client, package: str, query: str) -> Surface:
    """The surface for a task needing ``package``, read through ``client`` (Conduit with ``codeModeOnly``)."""
    listed = await client.list_tools()
    tools = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in listed.tools]
    tools_list = _bytes({"tools": tools})  # the definitions, without the result's _meta and cache hints
    search, _ = await _read(client, "search_tools", {"query": query})
    stubs, page = await _read(client, "list_tool_stubs", {"packageId": package})
    schemas = []
    while True:  # the largest declaration in the whole package, not only its first page
        for stub in page["tools"]:
            size, _ = await _read(client, "read_tool_schema", {"toolId": tool_id(page["package"], stub)})
            schemas.append(size)
        if "nextOffset" not in page:
            break
        _, page = await _read(client, "list_tool_stubs", {"packageId": package, "offset": page["nextOffset"]})
    direct, count = await _direct(client)
    return Surface(tools_list, search, stubs, max(schemas), direct, count)


async def _direct(client: Client) -> tuple[int, int]:
    """What exposing every upstream tool directly would list (name, description, input and output schema of
    each, as the upstream gave them), in bytes, and how many."""
    _, packages = await _read(client, "list_tool_packages", {})
    total = count = 0
    for package in packages["packages"]:
        cursor: int | None = 0
        while cursor is not None:
            paging = {"offset": cursor} if cursor else {}
            _, page = await _read(client, "list_tool_stubs", {"packageId": package["packageId"], **paging})
            for stub in page["tools"]:
                arguments = {"toolId": tool_id(page["package"], stub), "format": "json"}
                _, read = await _read(client, "read_tool_schema", arguments)
                name = read["toolId"].partition("__")[2]
                definition = {"name": name, "description": read["description"], "inputSchema": read["inputSchema"]}
                if "outputSchema" in read:
                    definition["outputSchema"] = read["outputSchema"]
                total += _bytes(definition)
                count += 1
            cursor = page.get("nextOffset")
    return total + len('{"tools":[]}') + max(0, count - 1), count


def config_file(directory: Path, upstreams: list[dict[str, Any]]) -> Path:
    path = directory / "conduit.yaml"
    document = {"upstreams": upstreams, "codeModeOnly": True, "opsPort": 0, "pools": {"typescript": {"min": 0}}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def conduit(config: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=str(VENV / "bin" / "conduit"), args=["serve", "--stdio", "--config", str(config)], env=dict(os.environ)
    )


SKILL_TOPICS: Final = ("sales", "invoices", "tickets", "deploys", "orders", "signups", "refunds", "latency")
SKILL_KINDS: Final = ("weekly_report", "daily_digest", "anomaly_scan", "forecast", "cleanup")


def skill(index: int) -> dict[str, Any]:
    """The ``index``-th of the generated skills: a name, a description and an input schema like an agent's."""
    topic, kind = SKILL_TOPICS[index % len(SKILL_TOPICS)], SKILL_KINDS[index // len(SKILL_TOPICS) % len(SKILL_KINDS)]
    name = f"{kind}_{topic}_{index}"
    return {
        "name": name,
        "description": f"{kind.replace('_', ' ').capitalize()} of {topic} for a region, as a table of totals.",
        "language": "python",
        "code": "rows = await tools.memory.read_graph()\n{'region': args['region'], 'rows': len(str(rows))}",
        "inputSchema": {
            "type": "object",
            "properties": {"region": {"type": "string"}, "weeks": {"type": "integer", "minimum": 1}},
            "required": ["region"],
        },
    }


async def surfaces(with_many: bool, skills: int = 0) -> dict[str, Surface]:
    """Each package's surface, with the reference upstreams (and the 500-tool one, and ``skills`` saved ones)."""
    with tempfile.TemporaryDirectory() as scratch:
        upstreams = reference_upstreams(Path(scratch)) + ([many_upstream()] if with_many else [])
        async with Client(conduit(config_file(Path(scratch), upstreams))) as client:
            for index in range(skills):
                saved = await client.call_tool("conduit__mcp_save_skill", skill(index))
                assert not saved.is_error, saved
            packages = [u["id"] for u in upstreams] + (["skills"] if skills else [])
            return {package: await measure(client, package, TASKS[package]) for package in packages}


def table(title: str, measured: Mapping[str, Surface]) -> str:
    rows = [
        f"### {title}",
        "",
        "| task needs | tools/list | search | stubs | schema | total | budget | direct exposure |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for package, s in measured.items():
        verdict = "ok" if s.total <= BUDGET else "OVER"
        rows.append(
            f"| {package} | {s.tools_list} | {s.search} | {s.stubs} | {s.schema} | {s.total} | {verdict} "
            f"| {s.direct} ({s.upstream_tools} tools) |"
        )
    return "\n".join(rows)


async def main() -> None:
    print(table("four reference upstreams", await surfaces(with_many=False)))
    print()
    print(table("the four and 500 generated tools", await surfaces(with_many=True)))
    print()
    print(table("the four and 200 saved skills", await surfaces(with_many=False, skills=200)))


if __name__ == "__main__":
    anyio.run(main)
