"""Attacks on a real Conduit server over MCP, one test per attack and runtime, grouped by category.

The server runs with canary secrets in its environment and as its master token. Every attack
must fail; no response and no log line may ever contain a canary; and after each attack a
benign execution in the same runtime still succeeds.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from canary_server import BASE_CONFIG, ENV_CANARY, TOKEN_CANARY, TOOL, AttackServer, attack_server
from cryptography.hazmat.primitives.asymmetric import ec

from conduit.sandbox.pyodide.runtime import default_pyodide_dir
from support import INITIALIZE

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


# -- the environment through /proc ---------------------------------------------------------------------
# A sandbox with no env permission might still read its own environment, or Conduit's (its parent's),
# from /proc. Monty is asked for by name: ``auto`` sends a program that uses ``open`` elsewhere.

PROC_ENVIRON = {
    "typescript": """
    const got = [];
    for (const path of ['/proc/self/environ', `/proc/${Deno.ppid}/environ`, '/proc/1/environ']) {
      try { got.push(Deno.readTextFileSync(path)); } catch (e) { got.push(e.name); }
    }
    try { got.push((await import('node:fs')).readFileSync(`/proc/${Deno.ppid}/environ`, 'utf8')); }
    catch (e) { got.push(e.name); }
    return got;
    """,
    "python": """
import os, js
got = []
for path in ('/proc/self/environ', f'/proc/{os.getppid()}/environ', '/proc/1/environ'):
    try:
        got.append(open(path).read())
    except Exception as e:
        got.append(type(e).__name__)
    try:
        got.append(js.Deno.readTextFileSync(path))
    except Exception as e:
        got.append(type(e).__name__)
try:
    got.append(js.Deno.readTextFileSync('/proc/' + str(js.Deno.ppid) + '/environ'))
except Exception as e:
    got.append(type(e).__name__)
got
""",
    "monty": """
from pathlib import Path
import os
got = []
for path in ('/proc/self/environ', '/proc/1/environ'):
    try:
        got.append(Path(path).read_text())
    except Exception as e:
        got.append(type(e).__name__)
try:
    got.append(str(os.environ.get('PATH')))
except Exception as e:
    got.append(type(e).__name__)
got
""",
    "isolate": "return [typeof Deno, typeof require, typeof process, typeof readFile, typeof read];",
}


@pytest.mark.parametrize("runtime", ["typescript", "python", "monty", "isolate"])
async def test_proc_environ_of_the_sandbox_and_of_conduit(server: AttackServer, runtime: str) -> None:
    engine = {"engine": "monty"} if runtime == "monty" else {}
    out = await attack(server, "python" if runtime == "monty" else runtime, PROC_ENVIRON[runtime], **engine)
    text = repr(out)
    assert ENV_CANARY not in text and TOKEN_CANARY not in text
    for name in ("PATH=", "HOME=", "IPC_BEARER_TOKEN", "CONDUIT_TEST_SECRET"):
        assert name not in text, (name, out)
    if runtime == "isolate":
        assert out["result"] == ["undefined"] * 5
    else:
        got = out.get("result") or []
        assert got and all(isinstance(item, str) and len(item) < 40 for item in got), out  # error names only
        assert runtime != "monty" or out.get("engine") == "monty"


# -- the cloud metadata address -------------------------------------------------------------------------

METADATA = {
    "typescript": """
    const got = [];
    try { await fetch('http://169.254.169.254/latest/meta-data/'); got.push('fetched'); }
    catch (e) { got.push(e.name); }
    try { (await Deno.connect({hostname: '169.254.169.254', port: 80})).close(); got.push('connected'); }
    catch (e) { got.push(e.name); }
    try {
      const http = await import('node:http');
      got.push(await new Promise((resolve) => {
        http.get('http://169.254.169.254/', () => resolve('requested')).on('error', (e) => resolve(e.name));
      }));
    } catch (e) { got.push(e.name); }
    return got;
    """,
    "python": """
from pyodide.http import pyfetch
import js
got = []
try:
    await pyfetch('http://169.254.169.254/latest/meta-data/')
    got.append('fetched')
except Exception as e:
    got.append(type(e).__name__)
try:
    await js.Deno.connect(js.JSON.parse('{"hostname": "169.254.169.254", "port": 80}'))
    got.append('connected')
except Exception as e:
    got.append(type(e).__name__)
got
""",
    "isolate": "return [typeof fetch, typeof XMLHttpRequest, typeof WebSocket, typeof Deno];",
}


@pytest.mark.parametrize("runtime", sorted(TOOL))
async def test_the_cloud_metadata_address_from_a_sandbox(server: AttackServer, runtime: str) -> None:
    with anyio.fail_after(20):  # refused by permission at once, not a connection left to time out
        out = await attack(server, runtime, METADATA[runtime])
    got = out["result"]
    assert not {"fetched", "connected", "requested"} & set(got), out
    if runtime == "typescript":
        assert set(got) <= {"NotCapable", "PermissionDenied"}, got  # Deno's permission check, not the network
    if runtime == "isolate":
        assert got == ["undefined"] * 4


async def test_the_cloud_metadata_address_as_an_upstream_or_jwks_url(tmp_path: Path) -> None:
    oauth = {"issuer": "https://idp.example", "audience": "https://conduit.example/mcp"}
    overrides = {
        "upstreams": [
            *BASE_CONFIG["upstreams"],
            {"id": "metadata", "type": "streamableHttp", "url": "http://169.254.169.254/mcp"},
            {"id": "metadata6", "type": "streamableHttp", "url": "http://[::ffff:169.254.169.254]/mcp"},
        ],
        "auth": {"oauth": {**oauth, "jwksUrl": "http://169.254.169.254/latest/jwks"}},
    }
    async with attack_server(tmp_path, overrides) as server:
        async with server.http.client() as client:
            await client.list_tools()  # upstreams connect on first use
        async with httpx2.AsyncClient(timeout=30) as http:
            health = (await http.get(f"{server.http.ops_url}/health")).json()
            for upstream in ("metadata", "metadata6"):
                entry = health["upstreams"][upstream]
                assert entry["status"] == "failing" and "link-local" in json.dumps(entry), entry
            key = ec.generate_private_key(ec.SECP256R1())
            claims = {**oauth, "aud": oauth["audience"], "iss": oauth["issuer"], "sub": "mallory", "exp": 2**31}
            token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
            answer = await http.post(server.http.url, json=INITIALIZE, headers=headers)
            assert answer.status_code == 401
        code = "try { await tools.$raw('metadata__anything', {}); return 'called'; } catch (e) { return e.code; }"
        out = await attack(server, "typescript", code)
        assert out["result"] in (-32004, -32005), out  # unknown, or an upstream that cannot be reached
    assert "link-local" in server.http.log.read_text()  # the JWKS fetch was refused by the guard, and said so


# -- Deno's permission-bypass classes (on the pinned Deno) -----------------------------------------------

DENO_BYPASSES = {
    "path aliases": """
    const paths = ['/etc//passwd', '/etc/./passwd', '/etc/../etc/passwd', '/ETC/passwd', '/etc/passwd\\u0000.txt',
      '\\uFF0Fetc\\uFF0Fpasswd', '/etc/pa\\u0073swd', '/e\\u0301tc/passwd', '/proc/self/root/etc/passwd',
      '/dev/fd/../../etc/passwd', new URL('file:///etc/%70asswd'), new URL('file:///etc/passwd')];
    const got = [];
    for (const path of paths) {
      try { got.push(Deno.readTextFileSync(path)); } catch (e) { got.push(e.name); }
      try { got.push((await import('node:fs')).readFileSync(path, 'utf8')); } catch (e) { got.push(e.name); }
    }
    return got;
    """,
    "node built-ins": """
    const got = [];
    const attempts = [
      async () => (await import('node:child_process')).execSync('id').toString(),
      async () => (await import('node:child_process')).spawnSync('id').stdout?.toString(),
      async () => (await import('node:process')).env.PATH,
      async () => (await import('node:os')).userInfo().username,
      async () => (await import('node:fs')).readdirSync('/').join(),
      async () => (await import('node:net')).connect(80, '169.254.169.254') && 'socket',
      async () => (await import('node:worker_threads')).Worker && new (await import('node:worker_threads')).Worker(
        'require("child_process").execSync("id")', {eval: true}) && 'worker',
    ];
    for (const attempt of attempts) {
      try { got.push(String(await attempt())); } catch (e) { got.push(e.name); }
    }
    return got;
    """,
    "npm and jsr specifiers": """
    const got = [];
    const specifiers = ['npm:left-pad@1.3.0', 'jsr:@std/fs@1', 'npm:/left-pad', 'https://deno.land/std/fs/mod.ts',
      'left-pad', './node_modules/left-pad/index.js', 'file:///etc/passwd',
      'data:text/javascript,export default Deno.readTextFileSync("/etc/passwd")'];
    for (const specifier of specifiers) {
      try { const m = await import(specifier); got.push('imported ' + String(m.default).slice(0, 40)); }
      catch (e) { got.push(e.name); }
    }
    return got;
    """,
    "package.json main with ..": """
    const got = [];
    try {
      Deno.mkdirSync('/tmp/conduit-attack-pkg/node_modules/evil', {recursive: true});
      Deno.writeTextFileSync('/tmp/conduit-attack-pkg/node_modules/evil/package.json',
        JSON.stringify({name: 'evil', main: '../../../../../../etc/passwd'}));
      got.push('wrote');
    } catch (e) { got.push(e.name); }
    for (const specifier of ['evil', 'npm:evil', '/tmp/conduit-attack-pkg/node_modules/evil/package.json']) {
      try { await import(specifier); got.push('imported'); } catch (e) { got.push(e.name); }
    }
    try { (await import('node:module')).createRequire('/tmp/conduit-attack-pkg/x.js')('evil'); got.push('required'); }
    catch (e) { got.push(e.name); }
    return got;
    """,
}


@pytest.mark.parametrize("bypass", list(DENO_BYPASSES))
async def test_deno_permission_bypass_classes(server: AttackServer, bypass: str) -> None:
    out = await attack(server, "typescript", DENO_BYPASSES[bypass])
    text = repr(out)
    assert "root:x:0:0" not in text and "uid=" not in text and "/usr/bin" not in text, out
    got = out.get("result")
    assert isinstance(got, list) and got, out
    reached = [item for item in got if not isinstance(item, str) or not item.isidentifier()]
    assert reached == [], out  # every attempt ended in an error (its name), none in data
    assert not exists("/tmp/conduit-attack-pkg")


# -- Pyodide after its permissions are revoked ------------------------------------------------------------


async def test_pyodide_reaches_no_host_through_js_or_pyodide_js(server: AttackServer) -> None:
    pyodide_dir = default_pyodide_dir()
    code = f"""
import js, pyodide_js
from pyodide.code import run_js
attempts = {{
    'its own directory (readable until the revoke)': lambda: js.Deno.readTextFileSync('{pyodide_dir}/package.json'),
    'list /': lambda: js.Deno.readDirSync('/'),
    'env': lambda: js.Deno.env.get('PATH'),
    'spawn': lambda: js.Deno.Command.new('id').outputSync(),
    'eval Deno': lambda: run_js('Deno.readTextFileSync("/etc/passwd")'),
    'Function constructor': lambda: js.Function.new('return Deno.readTextFileSync("/etc/hostname")')(),
    'pyodide_js FS of the host': lambda: pyodide_js.FS.readFile('/etc/passwd', js.JSON.parse('{{"encoding": "utf8"}}')),
    'node:fs': lambda: run_js('import("node:fs").then((fs) => fs.readFileSync("/etc/passwd", "utf8"))'),
    'dynamic import': lambda: run_js('import("file:///etc/passwd", {{with: {{type: "text"}}}})'),
}}
got = {{}}
for name, attempt in attempts.items():
    try:
        value = attempt()
        if hasattr(value, 'then'):
            value = await value
        got[name] = 'reached: ' + str(value)[:60]
    except BaseException as e:
        got[name] = type(e).__name__
try:
    await pyodide_js.loadPackage('numpy')
    import numpy
    got['pyodide_js.loadPackage'] = 'reached: numpy ' + numpy.__version__
except BaseException as e:
    got['pyodide_js.loadPackage'] = type(e).__name__
read = js.JSON.parse('{{"name": "read"}}')
[got, js.Deno.permissions.querySync(read).state, js.Deno.permissions.requestSync(read).state]
"""
    out = await attack(server, "python", code)
    got, read_state, requested_state = out["result"]
    reached = {name: value for name, value in got.items() if value.startswith("reached")}
    assert reached == {}, reached
    assert read_state != "granted" and requested_state != "granted"  # --no-prompt: a request is denied
    assert "root:x:0:0" not in repr(out)
