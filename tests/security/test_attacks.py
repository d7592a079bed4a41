"""Attacks on a real Conduit server over MCP, one test per attack and runtime, grouped by category.

The server runs with canary secrets in its environment and as its master token. Every attack
must fail; no response and no log line may ever contain a canary; and after each attack a
benign execution in the same runtime still succeeds.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from canary_server import ENV_CANARY, TOKEN_CANARY, TOOL, AttackServer, attack_server

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


@pytest.fixture(scope="module")
async def server(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackServer]:
    async with attack_server(tmp_path_factory.mktemp("attacks")) as running:
        yield running


async def attack(server: AttackServer, runtime: str, code: str, **arguments: Any) -> dict[str, Any]:
    return await server.attack(runtime, code, **arguments)


def exists(path: str) -> bool:
    return Path(path).exists()


def refused(out: dict[str, Any]) -> bool:
    return out.get("error") is not None or out.get("result") in (None, False, "refused")


# -- file system -----------------------------------------------------------------------------------------

READ_PASSWD = {
    "typescript": 'return Deno.readTextFileSync("/etc/passwd");',
    "python": "import js\njs.Deno.readTextFileSync('/etc/passwd')",
    "isolate": "return typeof Deno === 'undefined' && typeof require === 'undefined' ? 'refused' : 'reachable';",
}


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_file_read(server: AttackServer, runtime: str) -> None:
    out = await attack(server, runtime, READ_PASSWD[runtime])
    assert "root:x:0:0" not in repr(out)
    assert refused(out), out


WRITE_FILE = {
    "typescript": 'Deno.writeTextFileSync("/tmp/conduit-attack-{runtime}", "x"); return "wrote";',
    "python": "import js\njs.Deno.writeTextFileSync('/tmp/conduit-attack-{runtime}', 'x')\n'wrote'",
    "isolate": "return typeof Deno === 'undefined' ? 'refused' : 'reachable';",
}


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_file_write(server: AttackServer, runtime: str) -> None:
    out = await attack(server, runtime, WRITE_FILE[runtime].format(runtime=runtime))
    assert refused(out), out
    assert not exists(f"/tmp/conduit-attack-{runtime}")


# -- environment and secrets ----------------------------------------------------------------------------

READ_ENV = {
    "typescript": "let env = {}; try { env = Deno.env.toObject(); } catch (e) { env = String(e); }\n"
    "return JSON.stringify([env, Object.keys(globalThis)]);",
    "python": "import os, json, js\nvalues = dict(os.environ)\ntry:\n    values['deno'] = js.Deno.env.toObject()\n"
    "except Exception as e:\n    values['deno'] = str(e)\njson.dumps(values, default=str)",
    "isolate": "return JSON.stringify([typeof process, Object.getOwnPropertyNames(globalThis)]);",
}


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_environment_and_secrets(server: AttackServer, runtime: str) -> None:
    out = await attack(server, runtime, READ_ENV[runtime])
    text = repr(out)
    assert ENV_CANARY not in text and TOKEN_CANARY not in text
    assert "CONDUIT_TEST_SECRET" not in text


# -- network egress -------------------------------------------------------------------------------------

EGRESS = {
    "typescript": "try {{ const c = await Deno.connect({{hostname: '127.0.0.1', port: {port}}}); c.close(); "
    "return 'connected'; }} catch (e) {{}}\n"
    "try {{ await fetch('http://127.0.0.1:{port}/'); return 'fetched'; }} catch (e) {{ return 'refused'; }}",
    "python": "from pyodide.http import pyfetch\ntry:\n    await pyfetch('http://127.0.0.1:{port}/')\n"
    "    r = 'fetched'\nexcept Exception:\n    r = 'refused'\nr",
    "isolate": "return typeof fetch === 'undefined' && typeof WebSocket === 'undefined' ? 'refused' : 'reachable';",
}


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_network_egress(
    server: AttackServer, loopback_listener: tuple[int, list[socket.socket]], runtime: str
) -> None:
    port, accepted = loopback_listener
    out = await attack(server, runtime, EGRESS[runtime].format(port=port))
    assert refused(out), out
    assert accepted == []


# -- processes --------------------------------------------------------------------------------------------

SPAWN = {
    "typescript": "const r = await new Deno.Command('id').output(); return new TextDecoder().decode(r.stdout);",
    "python": "import subprocess\nsubprocess.run(['id'], capture_output=True).stdout",
    "isolate": "return typeof Deno === 'undefined' && typeof require === 'undefined' ? 'refused' : 'reachable';",
}


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_subprocess_spawn(server: AttackServer, runtime: str) -> None:
    out = await attack(server, runtime, SPAWN[runtime])
    assert "uid=" not in repr(out)
    assert refused(out), out


CPU_BURN = {"typescript": "while (true) {}", "isolate": "while (true) {}", "python": "while True:\n    pass"}


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_cpu_burn_ends_at_the_deadline(server: AttackServer, runtime: str) -> None:
    out = await attack(server, runtime, CPU_BURN[runtime], limits={"timeoutMs": 1000})
    assert out["error"]["code"] == -32008


FLOOD = {
    "typescript": "while (true) console.log('x'.repeat(1000));",
    "isolate": "while (true) console.log('x'.repeat(1000));",
    "python": "while True:\n    print('x' * 1000)",
}


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_output_flood_is_cut(server: AttackServer, runtime: str) -> None:
    out = await attack(server, runtime, FLOOD[runtime], limits={"maxOutputBytes": 50_000})
    assert out["error"]["code"] == -32013
    assert len(out["stdout"].encode()) <= 50_000


# -- the allowlist on every path -----------------------------------------------------------------------

BYPASS = {
    "typescript": "const codes = [typeof tools.toolbox.add === 'undefined' ? 'hidden' : 'visible'];\n"
    "for (const call of [() => tools.$raw('toolbox__add', {a: 1, b: 1}),"
    " () => tools.$raw('toolbox.add', {a: 1, b: 1}), () => tools.$raw('add', {a: 1, b: 1})]) {\n"
    "  try { await call(); codes.push('called'); } catch (e) { codes.push(e.code); }\n}\n"
    "return [codes, (await discoverMCPTools()).map((t) => t.name)];",
    "python": "codes = []\nfor name in ('toolbox__add', 'toolbox.add', 'add'):\n    try:\n"
    "        await tools.raw(name, {'a': 1, 'b': 1})\n        codes.append('called')\n"
    "    except ToolError as e:\n        codes.append(e.code)\n"
    "codes.insert(0, 'visible' if hasattr(tools.toolbox, 'add') else 'hidden')\n"
    "[codes, [t['name'] for t in await discover_mcp_tools()]]",
}
BYPASS["isolate"] = BYPASS["typescript"]


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_allowlist_bypass(server: AttackServer, runtime: str) -> None:
    out = await attack(server, runtime, BYPASS[runtime], allowedTools=["toolbox.echo"])
    codes, visible = out["result"]
    assert codes[:3] == ["hidden", -32003, -32003]  # the SDK shows no forbidden tool; calls by name are refused
    assert codes[3] in (-32003, -32004) if len(codes) > 3 else True
    assert visible == ["toolbox__echo"]


# -- state between runs ---------------------------------------------------------------------------------

PLANT = {
    "typescript": ("globalThis.planted = 'x'; return 1;", "return typeof globalThis.planted;"),
    "isolate": ("globalThis.planted = 'x'; return 1;", "return typeof globalThis.planted;"),
    "python": ("import builtins\nbuiltins.planted = 'x'\n1", "import builtins\nstr(hasattr(builtins, 'planted'))"),
}


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_state_does_not_leak_between_runs(server: AttackServer, runtime: str) -> None:
    plant, probe = PLANT[runtime]
    await attack(server, runtime, plant)
    out = await attack(server, runtime, probe)
    assert out["result"] in ("undefined", "False"), out


# -- runtime-specific escapes ---------------------------------------------------------------------------


async def test_pyodide_js_bridge_reaches_nothing(server: AttackServer) -> None:
    code = (
        "import js, pyodide.code\nresults = []\n"
        "for probe in ('Deno.readTextFileSync(\"/etc/hostname\")', 'Deno.env.get(\"CONDUIT_TEST_SECRET\")',"
        ' \'Deno.readDirSync("/tmp")\', \'(new Function("return this"))().Deno.readDirSync("/")\'):\n'
        "    try:\n        pyodide.code.run_js(probe)\n        results.append('reached')\n"
        "    except Exception as e:\n        results.append(type(e).__name__)\nresults"
    )
    out = await attack(server, "python", code)
    assert "reached" not in out["result"], out


async def test_v8_constructor_chains_find_no_host(server: AttackServer) -> None:
    code = (
        "const g = (function () {}).constructor('return this')();\n"
        "const viaError = new Error().constructor.constructor('return this')();\n"
        "return [g === globalThis, viaError === globalThis, typeof g.require, typeof g.process, typeof g.Deno];"
    )
    out = await attack(server, "isolate", code)
    assert out["result"] == [True, True, "undefined", "undefined", "undefined"]


async def test_deno_static_import_of_a_host_file(server: AttackServer) -> None:
    out = await attack(server, "typescript", 'import t from "/etc/passwd" with {type: "text"};\nreturn t;')
    assert refused(out), out
    assert "root:x:0:0" not in repr(out)
