"""Work that outlives a run, through a real Conduit over HTTP: each principal's workspace from every runtime,
saved skills called from programs and as MCP tools, curated skills, and the attacks on both (another
principal's files and skills by every spelling, escaping paths, skills that widen an allowlist or lift a
limit). The state lives in a real SQLite file beside the config."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from support import (
    CONDUIT,
    EXECUTE_ISOLATE,
    EXECUTE_PYTHON,
    EXECUTE_TS,
    ConduitHttp,
    run_code,
    scrape,
    write_config,
)

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

MASTER = "master-token-for-state-0123456789"
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef00"
NARROW = "narrow-key-0123456789abcdef"
SAVE = "conduit__mcp_save_skill"

CURATED_SKILL = """---
name: shout
description: Upper-case a text (curated, for everyone).
inputSchema: {type: object, properties: {text: {type: string}}, required: [text]}
outputSchema: {type: object, properties: {loud: {type: string}}, required: [loud]}
---
console.log("shouting");
return { loud: args.text.toUpperCase() };
"""


@dataclass
class Setup:
    server: ConduitHttp
    config: Path

    def client(self, key: str) -> Any:
        return self.server.client(key)


@pytest.fixture(scope="module")
async def setup(
    anyio_backend: str, tmp_path_factory: pytest.TempPathFactory, toolbox_command: dict[str, Any]
) -> AsyncIterator[Setup]:
    directory = tmp_path_factory.mktemp("state")
    (directory / "curated").mkdir()
    (directory / "curated" / "shout.ts").write_text(CURATED_SKILL)
    config = write_config(
        directory,
        {
            "codeModeOnly": False,
            "upstreams": [{"id": "toolbox", **toolbox_command}],
            "resourceLimits": {"timeoutMs": 20_000},
            "workspace": {"quotaBytes": 4096, "maxFiles": 20, "maxFileBytes": 2048},
            "skills": {"dir": "curated"},
            "approvals": [{"tools": ["workspace.delete"], "principals": ["bob"]}],
            "auth": {
                "principals": [
                    {"id": "alice", "apiKey": ALICE},
                    {"id": "bob", "apiKey": BOB, "limits": {"timeoutMs": 3000}},
                    {"id": "narrow", "apiKey": NARROW, "allowedTools": ["toolbox.*", "skills.*"]},
                ]
            },
            "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 0, "max": 1}},
        },
    )
    async with ConduitHttp.start(config, token=MASTER) as server:
        yield Setup(server, config)


async def run(client: Client, language: str, code: str, **arguments: Any) -> dict[str, Any]:
    tool = {"ts": EXECUTE_TS, "js": EXECUTE_ISOLATE, "monty": EXECUTE_PYTHON, "pyodide": EXECUTE_PYTHON}[language]
    if language in ("monty", "pyodide"):
        arguments["engine"] = language
    _, result = await run_code(client, tool, code, **arguments)
    return result


async def save(client: Client, **definition: Any) -> dict[str, Any]:
    result = await client.call_tool(SAVE, definition)
    assert not result.is_error, result
    assert result.structured_content is not None
    return result.structured_content


WRITE = {
    "ts": 'return await tools.workspace.write({ path: "from/ts.txt", text: "written by ts" });',
    "js": 'return await tools.workspace.write({ path: "from/js.txt", text: "written by js" });',
    "monty": 'await tools.workspace.write(path="from/monty.txt", text="written by monty")',
    "pyodide": 'await tools.workspace.write(path="from/pyodide.txt", text="written by pyodide")',
}
READ_ALL = {
    "ts": "const files = await tools.workspace.list({ prefix: 'from/' });\n"
    "return await Promise.all(files.map(async (f) => (await tools.workspace.read({ path: f.path })).text));",
    "js": "const files = await tools.workspace.list({ prefix: 'from/' });\n"
    "const out = []; for (const f of files) out.push((await tools.workspace.read({ path: f.path })).text); return out;",
    "monty": "files = await tools.workspace.list(prefix='from/')\n"
    "texts = []\nfor f in files:\n    texts.append((await tools.workspace.read(path=f['path']))['text'])\ntexts",
    "pyodide": "files = await tools.workspace.list(prefix='from/')\n"
    "[(await tools.workspace.read(path=f['path']))['text'] for f in files]",
}


async def test_every_runtime_writes_files_the_next_run_of_any_runtime_reads(setup: Setup) -> None:
    async with setup.client(ALICE) as alice:
        for language, code in WRITE.items():
            written = await run(alice, language, code)
            assert "error" not in written, written
            if language in ("ts", "js"):
                assert written["result"]["size"] == len(f"written by {language}")
        expected = [f"written by {language}" for language in sorted(WRITE)]
        for language, code in READ_ALL.items():
            read = await run(alice, language, code)
            assert read.get("result") == expected, (language, read)
            if language in ("monty", "pyodide"):
                assert read["engine"] == language


async def test_binary_files_round_trip_and_deleting_reports_what_was_there(setup: Setup) -> None:
    payload = base64.b64encode(bytes(range(256))).decode()
    async with setup.client(ALICE) as alice:
        code = (
            f'await tools.workspace.write({{ path: "bin/all.bytes", base64: "{payload}" }});\n'
            'const back = await tools.workspace.read({ path: "bin//./all.bytes" });\n'
            'const first = await tools.workspace.delete({ path: "bin/all.bytes" });\n'
            'const again = await tools.workspace.delete({ path: "bin/all.bytes" });\n'
            "return { encoding: back.encoding, same: back.base64, first, again };"
        )
        result = (await run(alice, "ts", code))["result"]
    assert result["encoding"] == "base64" and result["same"] == payload
    assert result["first"] == {"path": "bin/all.bytes", "deleted": True}
    assert result["again"] == {"path": "bin/all.bytes", "deleted": False}


async def test_a_full_workspace_throws_32016_in_the_program_which_goes_on_with_nothing_written(setup: Setup) -> None:
    async with setup.client(BOB) as bob:
        code = (
            "const big = 'x'.repeat(2000);\n"
            "const codes = [];\n"
            "for (let i = 0; i < 3; i++) {\n"
            "  try { await tools.workspace.write({ path: `q/${i}`, text: big }); codes.push('ok'); }\n"
            "  catch (e) { codes.push(e.code + ' ' + e.message); }\n"
            "}\n"
            "const listed = await tools.workspace.list({ prefix: 'q' });\n"
            "return { codes, listed: listed.map((f) => f.path) };"
        )
        result = (await run(bob, "ts", code))["result"]
    assert result["codes"][:2] == ["ok", "ok"]
    assert result["codes"][2].startswith("-32016 ") and "quotaBytes is 4096" in result["codes"][2]
    assert result["listed"] == ["q/0", "q/1"]


@pytest.mark.parametrize(
    "spelling",
    ["secret.txt", "./secret.txt", "../alice/secret.txt", "/secret.txt", "alice/secret.txt", "..\\alice\\secret.txt"],
)
async def test_no_spelling_reaches_another_principals_file(setup: Setup, spelling: str) -> None:
    async with setup.client(ALICE) as alice, setup.client(BOB) as bob, setup.client(MASTER) as master:
        await run(alice, "ts", 'await tools.workspace.write({ path: "secret.txt", text: "alice only" });')
        await run(master, "ts", 'await tools.workspace.write({ path: "master.txt", text: "master only" });')
        code = f"try {{ return await tools.workspace.read({{ path: {json.dumps(spelling)} }}); }}\n"
        code += "catch (e) { return { code: e.code, message: e.message }; }"
        for intruder in (bob, alice):
            answer = await run(intruder, "ts", code.replace("secret.txt", "master.txt") if intruder is alice else code)
            assert answer["result"]["code"] == -32602, answer
        listed = (await run(bob, "ts", "return await tools.workspace.list({});"))["result"]
        assert all("secret" not in f["path"] and "master" not in f["path"] for f in listed)


async def test_the_workspace_is_under_allowlists_like_any_package(setup: Setup) -> None:
    async with setup.client(NARROW) as narrow, setup.client(ALICE) as alice:
        listed = {tool.name for tool in (await narrow.list_tools()).tools}
        assert not any(name.startswith("workspace__") for name in listed)
        answer = await run(
            narrow,
            "ts",
            "return [typeof tools.workspace, await tools.$raw('workspace.list', {}).catch((e) => e.code)];",
        )
        assert answer["result"] == ["undefined", -32003]
        asked = await run(alice, "ts", "return typeof tools.workspace;", allowedTools=["toolbox.*"])
        assert asked["result"] == "undefined"
        found = await alice.call_tool("conduit__mcp_search_tools", {"query": "workspace file read"})
        assert "workspace.read" in json.dumps(found.structured_content)


async def test_approval_rules_cover_the_workspace_like_any_tool(setup: Setup) -> None:
    code = (
        'await tools.workspace.write({ path: "keep.md", text: "kept" });\n'
        'const refused = await tools.workspace.delete({ path: "keep.md" }).catch((e) => e.code);\n'
        'return [refused, (await tools.workspace.read({ path: "keep.md" })).text];'
    )
    async with setup.client(BOB) as bob:  # bob's deletes wait for a person; his client cannot be asked
        assert (await run(bob, "ts", code))["result"] == [-32015, "kept"]
        direct = await bob.call_tool("workspace__delete", {"path": "keep.md"})
        assert direct.is_error and (direct.meta or {}).get("conduit/errorCode") == -32015


async def test_the_workspace_tools_are_direct_mcp_tools_too(setup: Setup) -> None:
    async with setup.client(ALICE) as alice:
        written = await alice.call_tool("workspace__write", {"path": "direct.md", "text": "via MCP"})
        assert not written.is_error and written.structured_content["path"] == "direct.md"
        listing = await alice.call_tool("workspace__list", {"prefix": "direct"})
        assert not listing.is_error and json.loads(listing.content[0].text)[0]["path"] == "direct.md"
        with pytest.raises(MCPError, match="'..'"):
            await alice.call_tool("workspace__read", {"path": "../x"})


async def test_skills_are_saved_and_called_from_every_language_and_as_mcp_tools(setup: Setup) -> None:
    async with setup.client(ALICE) as alice:
        saved = await save(
            alice,
            name="add_twice",
            description="Add a and b with the toolbox, twice over.",
            language="typescript",
            code="const once = await tools.toolbox.add({ a: args.a, b: args.b });\n"
            "console.log('adding', args.a, args.b);\nreturn { sum: Number(once.content[0].text) * 2 };",
            inputSchema={
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
            outputSchema={"type": "object", "properties": {"sum": {"type": "number"}}, "required": ["sum"]},
        )
        assert saved == {"name": "add_twice", "version": 1, "call": "await tools.skills.add_twice(args)",
                         "tool": "skills__add_twice"}  # fmt: skip
        from_ts = await run(alice, "ts", "return await tools.skills.add_twice({ a: 2, b: 3 });")
        assert from_ts["result"] == {"sum": 10}
        assert "[add_twice] adding 2 3" in from_ts["stderr"]
        assert (await run(alice, "js", "return (await tools.skills.add_twice({ a: 1, b: 1 })).sum;"))["result"] == 4
        for engine in ("monty", "pyodide"):
            answer = await run(alice, engine, "(await tools.skills.add_twice(a=5, b=5))['sum']")
            assert answer["result"] == 20, answer
        direct = await alice.call_tool("skills__add_twice", {"a": 1, "b": 2})
        assert not direct.is_error and direct.structured_content == {"sum": 6}
        wrong = await run(alice, "ts", "try { await tools.skills.add_twice({ a: 'x' }); } catch (e) { return e.code; }")
        assert wrong["result"] == -32602
        thrice = "r = await tools.toolbox.add(a=args['a'], b=args['b'])\n{'sum': int(r['content'][0]['text']) * 3}"
        again = await save(
            alice,
            name="add_twice",
            description="Now thrice.",
            language="python",
            code=thrice,
            inputSchema={"type": "object"},
        )
        assert (again["version"], again["engine"]) == (2, "monty")  # checked on Monty: it runs there
        generator = "def numbers():\n    yield from range(args['n'])\nsum(numbers())"
        pyodide = await save(alice, name="summed", description="Sum below n.", language="python", code=generator)
        assert pyodide["engine"] == "pyodide"  # Monty has no generators: CPython runs it
        assert (await run(alice, "js", "return await tools.skills.summed({ n: 5 });"))["result"] == 10
        assert (await run(alice, "ts", "return await tools.skills.add_twice({ a: 1, b: 1 });"))["result"] == {"sum": 6}


async def test_a_principals_skills_are_invisible_to_every_other(setup: Setup) -> None:
    async with setup.client(ALICE) as alice, setup.client(BOB) as bob:
        await save(alice, name="private_one", description="Alice's own.", language="python", code="'alice'")
        tools = {tool.name for tool in (await bob.list_tools()).tools}
        assert "skills__private_one" not in tools and "skills__shout" in tools
        with pytest.raises(MCPError, match="unknown tool"):
            await bob.call_tool("skills__private_one", {})
        found = await bob.call_tool("conduit__mcp_search_tools", {"query": "private_one alice"})
        assert "private_one" not in json.dumps(found.structured_content)
        probe = "return [typeof tools.skills.private_one, await tools.$raw('skills__private_one', {}).catch((e) => e.code)];"  # noqa: E501
        assert (await run(bob, "ts", probe))["result"] == ["undefined", -32004]
        # bob may save his own skill of that name: it is his, and alice's stays hers
        await save(bob, name="private_one", description="Bob's own.", language="python", code="'bob'")
        assert (await run(bob, "ts", "return await tools.skills.private_one({});"))["result"] == "bob"
        assert (await run(alice, "ts", "return await tools.skills.private_one({});"))["result"] == "alice"


async def test_a_skill_never_widens_its_callers_allowlist_nor_lifts_its_limits(setup: Setup) -> None:
    async with setup.client(NARROW) as narrow, setup.client(BOB) as bob:
        reach = "return await tools.$raw({tool}, {args}).then(() => 'reached', (e) => e.code);"
        grab = reach.format(tool="'workspace.list'", args="{}")
        await save(
            narrow, name="grab", description="Try the workspace.", language="typescript", allowedTools=["*"], code=grab
        )
        assert (await run(narrow, "ts", "return await tools.skills.grab({});"))["result"] == -32003
        add = reach.format(tool="'toolbox.add'", args="{ a: 1, b: 2 }")
        await save(
            bob,
            name="echo_only",
            description="Only echo.",
            language="typescript",
            allowedTools=["toolbox.echo"],
            code=add,
        )
        assert (await run(bob, "ts", "return await tools.skills.echo_only({});"))["result"] == -32003
        await save(bob, name="forever", description="Never ends.", language="typescript", code="while (true) {}")
        code = "try { await tools.skills.forever({}); } catch (e) { return [e.code, e.data.error.code]; }"
        answer = await run(bob, "ts", code)  # bob's runs get 3 s: so does the skill he calls
        assert answer["result"] == [-32005, -32008], answer


async def test_a_skill_spends_its_callers_budget_of_tool_calls(setup: Setup) -> None:
    loop = (
        "let made = 0;\nfor (let i = 0; i < 10; i++) {\n"
        "  try { await tools.toolbox.echo({ text: 'x' }); made++; }\n"
        "  catch (e) { if (e.code !== -32017) throw e; }\n}\nreturn made;"
    )
    caller = (
        "const made = await tools.skills.ten_echoes({});\n"
        "const after = await tools.toolbox.echo({ text: 'y' }).then(() => 'made', (e) => e.code);\n"
        "return [made, after];"
    )
    async with setup.client(ALICE) as alice:
        await save(alice, name="ten_echoes", description="Ten echoes.", language="typescript", code=loop)
        answer = await run(alice, "ts", caller, limits={"maxToolCalls": 5})
    assert answer["result"] == [4, -32017], answer  # 1 for the skill's call, 4 of its own: the run's 5


async def test_skills_output_stays_within_the_calling_runs_output_limit(setup: Setup) -> None:
    async with setup.client(ALICE) as alice:
        chatty = "for (let i = 0; i < 3; i++) console.log('y'.repeat(40)); return 1;"
        await save(alice, name="chatty", description="Prints 3 lines.", language="typescript", code=chatty)
        code = "let n = 0; for (let i = 0; i < 20; i++) n += await tools.skills.chatty({}); return n;"
        answer = await run(alice, "ts", code, limits={"maxOutputBytes": 1000})
    assert answer["result"] == 20, answer  # each skill's 3 lines fit its own limit; together they would not
    assert answer["stderr"].count("[chatty] ") < 60 and answer["stderr"].endswith("maxLogEntries]\n")
    assert len(answer["stderr"].encode()) < 1000 + 100


async def test_skills_nest_three_deep_and_no_deeper_and_never_in_a_cycle(setup: Setup) -> None:
    async with setup.client(ALICE) as alice:
        for name, calls in (("level3", None), ("level2", "level3"), ("level1", "level2"), ("level0", "level1")):
            code = f"return 1 + await tools.skills.{calls}({{}});" if calls else "return 1;"
            await save(alice, name=name, description=f"Nesting {name}.", language="typescript", code=code)
        assert (await run(alice, "ts", "return await tools.skills.level1({});"))["result"] == 3
        deep = await run(alice, "ts", "try { return await tools.skills.level0({}); } catch (e) { return e.message; }")
        assert "level0 -> level1 -> level2 -> level3" in json.dumps(deep), deep
        await save(alice, name="loop", description="Calls itself.", language="typescript",
                   code="return await tools.skills.loop({});")  # fmt: skip
        loop = await run(alice, "ts", "try { return await tools.skills.loop({}); } catch (e) { return e.message; }")
        assert "skill cycle: loop -> loop" in json.dumps(loop), loop


async def test_a_failing_skill_gives_its_error_as_data_and_a_wrong_result_is_refused(setup: Setup) -> None:
    async with setup.client(ALICE) as alice:
        await save(alice, name="boom", description="Throws.", language="python", code="raise ValueError('kaboom')")
        code = "try { await tools.skills.boom({}); } catch (e) { return [e.code, e.message, e.data.error.code]; }"
        code_, message, inner = (await run(alice, "ts", code))["result"]
        assert code_ == -32005 and "kaboom" in message and inner == -32001
        await save(alice, name="liar", description="Says it returns a number.", language="typescript",
                   code="return 'not a number';", outputSchema={"type": "number"})  # fmt: skip
        lie = await run(alice, "ts", "try { await tools.skills.liar({}); } catch (e) { return e.message; }")
        assert "outputSchema refuses" in lie["result"]
        assert (await run(alice, "js", "return await tools.skills.shout({ text: 'hi' });"))["result"] == {"loud": "HI"}


@pytest.mark.parametrize(
    ("definition", "says"),
    [
        ({"name": "1bad", "language": "python", "code": "1"}, "identifier"),
        ({"name": "ts_broken", "language": "typescript", "code": "const x: = ;"}, "does not parse as TypeScript"),
        ({"name": "py_broken", "language": "python", "code": "def f(:\n  pass"}, "does not parse as Python"),
        ({"name": "js_broken", "language": "javascript", "code": "return {"}, "does not parse as JavaScript"),
        (
            {"name": "schema", "language": "python", "code": "1", "inputSchema": {"type": "nope"}},
            "not a valid JSON Schema",
        ),
        ({"name": "shout", "language": "python", "code": "1"}, "curated skill"),
        ({"name": "cobol", "language": "cobol", "code": "1"}, "language must be one of"),
    ],
)
async def test_a_skill_that_cannot_be_saved_says_why(setup: Setup, definition: dict[str, Any], says: str) -> None:
    async with setup.client(ALICE) as alice:
        with pytest.raises(MCPError, match=says):
            await alice.call_tool(SAVE, {"description": "A skill.", **definition})


async def test_operators_see_usage_and_manage_workspaces_and_skills_from_the_command_line(setup: Setup) -> None:
    import anyio

    async with setup.client(ALICE) as alice:
        await run(alice, "ts", 'await tools.workspace.write({ path: "ops/seen.txt", text: "12345" });')
        await save(alice, name="ops_seen", description="Seen by operators.", language="python", code="x = 2\nx * 3")
    samples = await scrape(setup.server)
    assert samples[("conduit_workspace_bytes", (("principal", "alice"),))] >= 5

    async def conduit(*args: str, stdin: bytes | None = None) -> str:
        done = await anyio.run_process([CONDUIT, *args, "--config", str(setup.config)], input=stdin, check=False)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    assert "ops/seen.txt" in await conduit("workspace", "ls", "--principal", "alice")
    assert await conduit("workspace", "get", "--principal", "alice", "ops/seen.txt") == "12345"
    await conduit("workspace", "put", "--principal", "bob", "from-ops.txt", "-", stdin=b"left by an operator")
    async with setup.client(BOB) as bob:
        read = await run(bob, "ts", 'return (await tools.workspace.read({ path: "from-ops.txt" })).text;')
        assert read["result"] == "left by an operator"
    await conduit("workspace", "rm", "--principal", "bob", "from-ops.txt")
    listing = await conduit("skills", "ls", "--principal", "alice")
    assert "ops_seen" in listing and "shout" in listing
    shown = await conduit("skills", "show", "--principal", "alice", "ops_seen")
    assert shown.startswith("---\nname: ops_seen\n") and shown.endswith("---\nx = 2\nx * 3\n")
    skill_file = setup.config.parent / "tripled.py"
    skill_file.write_text("---\nname: tripled\ndescription: Three times n.\n---\nargs['n'] * 3\n")
    await conduit("skills", "save", "--principal", "bob", str(skill_file))
    async with setup.client(BOB) as bob:
        assert (await run(bob, "ts", "return await tools.skills.tripled({ n: 5 });"))["result"] == 15
    await conduit("skills", "rm", "--principal", "bob", "tripled")
    async with setup.client(BOB) as bob:  # what the operator removed is gone for the principal at once
        gone = "return [typeof tools.skills.tripled, await tools.workspace.list({ prefix: 'from-ops' })];"
        assert (await run(bob, "ts", gone))["result"] == ["undefined", []]
