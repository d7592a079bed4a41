"""Identifier-safe names and the generated TypeScript SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conduit.catalog import ToolEntry
from conduit.sandbox.deno.runtime import find_deno
from conduit.sdk.naming import identifier, unique_identifiers
from conduit.sdk.typescript import generate_typescript_sdk, schema_type, typescript_declaration

sys.path.insert(0, str(Path(__file__).parents[1] / "servers"))
import typed


@pytest.mark.parametrize(
    ("name", "expected"),
    [("get-current-time", "get_current_time"), ("class", "class_"), ("9lives", "_9lives"), ("a.b/c", "a_b_c")],
)
def test_identifier(name: str, expected: str) -> None:
    assert identifier(name) == expected


def test_colliding_names_get_suffixes() -> None:
    assert unique_identifiers(["a-b", "a_b", "a.b"]) == {"a-b": "a_b", "a_b": "a_b_2", "a.b": "a_b_3"}


def test_schema_types() -> None:
    assert schema_type({"type": "array", "items": {"type": "integer"}}) == "Array<number>"
    assert schema_type({"type": ["string", "null"]}) == "string | null"
    assert schema_type({"anyOf": [{"type": "string"}, {"const": 3}]}) == "string | 3"
    assert schema_type({"type": "object"}) == "Record<string, unknown>"
    assert schema_type({"type": "object", "properties": {"a-b": {"type": "boolean"}}}) == '{ "a-b"?: boolean }'
    assert schema_type({}) == "unknown"


ENTRIES = [
    ToolEntry(
        "git-hub",
        "create-issue",
        "Create an issue.\nEnds a comment early: */ alert(1) /*",
        {
            "type": "object",
            "properties": {"title": {"type": "string"}, "labels": {"type": "array", "items": {"type": "string"}}},
            "required": ["title"],
        },
    ),
    ToolEntry("git-hub", "list", "", {"type": "object", "properties": {}}),
    ToolEntry("time", "now", "Current time.", {}),
    ToolEntry(
        "docs",
        "search",
        "Search the docs.",
        {"type": "object", "properties": {"text": {"type": "string", "description": "Words."}}, "required": ["text"]},
    ),
]


def test_generated_sdk_has_doc_comments_and_safe_names() -> None:
    sdk = generate_typescript_sdk(ENTRIES)
    assert "git_hub: Object.freeze({" in sdk
    signature = "create_issue: (args: { title: string; labels?: Array<string> }): Promise<CallToolResult>"
    assert f'{signature} => invoke("git-hub__create-issue", args)' in sdk
    assert "* Create an issue." in sdk
    assert "*/ alert(1)" not in sdk
    assert 'list: (args?: Record<string, unknown>): Promise<CallToolResult> => invoke("git-hub__list", args)' in sdk


@pytest.mark.deno
def test_generated_sdk_type_checks_with_deno(tmp_path: Path) -> None:
    module = tmp_path / "sdk.ts"
    module.write_text(generate_typescript_sdk(ENTRIES))
    usage = tmp_path / "use.ts"
    usage.write_text(
        'import { createTools } from "./sdk.ts";\n'
        "const { tools, discoverMCPTools } = createTools(async () => ({}));\n"
        'await tools.git_hub.create_issue({ title: "t", labels: ["x"] });\n'
        "await tools.git_hub.list();\n"
        'await tools.docs.search({ text: "deno" });\n'
        'await tools.$raw("time__now", {});\n'
        "await discoverMCPTools();\n"
    )
    checked = deno_check(usage, tmp_path)
    assert checked.returncode == 0, checked.stderr
    usage.write_text(usage.read_text().replace('{ title: "t", labels: ["x"] }', "{ labels: [1] }"))
    wrong = deno_check(usage, tmp_path)
    assert wrong.returncode != 0
    assert "use.ts:3" in wrong.stdout + wrong.stderr


def deno_check(module: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"DENO_DIR": str(home / "deno"), "HOME": str(home), "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}
    argv = [find_deno(None), "check", "--no-config", "--no-lock", str(module)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def test_property_descriptions_become_doc_comments_in_the_typescript_declaration() -> None:
    schema = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "Words to find. */ not a comment end"},
            "limit": {"type": "integer"},
            "filter": {"type": "object", "properties": {"tag": {"type": "string", "description": "nested"}}},
        },
        "required": ["text"],
    }
    declaration = typescript_declaration(ToolEntry("docs", "search-pages", "Search the docs.", schema))
    assert declaration.splitlines() == [
        "/** Search the docs. */",
        "tools.docs.search_pages: (args: {",
        "  /** Words to find. *\u2215 not a comment end */",
        "  text: string;",
        "  limit?: number;",
        "  filter?: { tag?: string };",
        "}) => Promise<CallToolResult>",
    ]


TYPED = [ToolEntry.of("wx", tool) for tool in typed.TOOLS]


@pytest.mark.deno
def test_results_of_tools_with_output_schemas_type_check_field_by_field(tmp_path: Path) -> None:
    # tests/servers/typed.py: nested objects, an array, an enum, a nullable member, a $defs union.
    (tmp_path / "sdk.ts").write_text(generate_typescript_sdk(TYPED))
    usage = tmp_path / "use.ts"
    usage.write_text(
        'import { createTools } from "./sdk.ts";\n'
        "const { tools } = createTools(async () => ({}));\n"
        'const wx = await tools.wx.forecast({ city: "Oslo" });\n'
        'const sunny: boolean = wx.days[0].sky === "sun";\n'
        "const high: number = wx.days[1].high;\n"
        "const alert: string | undefined = wx.alert?.text;\n"
        "const found = (await tools.wx.lookup({ id: 4 })).entry;\n"
        'const who: string[] = found.kind === "team" ? found.members : [found.name];\n'
        "console.log(sunny, high, alert, who);\n"
    )
    checked = deno_check(usage, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for line, wrong in (
        (4, 'const sunny: boolean = wx.days[0].sky === "snow";\n'),  # not in the enum
        (5, "const high: string = wx.days[1].high;\n"),
        (8, "const who: string[] = found.members;\n"),  # a user has none: narrow first
    ):
        lines = usage.read_text().splitlines(keepends=True)
        lines[line - 1] = wrong
        (tmp_path / "bad.ts").write_text("".join(lines))
        failed = deno_check(tmp_path / "bad.ts", tmp_path)
        assert failed.returncode != 0, wrong
        assert f"bad.ts:{line}" in failed.stdout + failed.stderr, failed.stdout + failed.stderr


def test_the_declaration_names_the_result_type_when_the_tool_publishes_an_output_schema() -> None:
    forecast, lookup = (typescript_declaration(entry) for entry in TYPED)
    assert forecast.endswith(
        "=> Promise<{ city: string; days: Array<{ date: string; high: number; low: number; "
        'sky: "sun" | "cloud" | "rain" }>; alert: { level?: number; text?: string } | null }>'
    )
    union = '{ kind: "user"; name: string } | { kind: "team"; members: Array<string> }'  # through $defs/$ref
    assert lookup.endswith(f"=> Promise<{{ entry: {union} }}>")
