"""Programs written as modules run, and module syntax opens no door: no file, no module, nothing before the refusal.

A program is never a Deno sandbox's main module (whose literal imports Deno loads without a permission
check); module syntax is rewritten in place, and a value import is refused before the program's first line
runs. These attacks hide host-file imports behind ``export {}``, in re-exports and under type imports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from canary_server import AttackServer, attack_server

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


@pytest.fixture(scope="module")
async def server(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackServer]:
    async with attack_server(tmp_path_factory.mktemp("modules")) as running:
        yield running


LEAKS = [
    'export {};\nimport secret from "/etc/passwd" with { type: "text" };\nreturn secret;',
    'export const x = 1;\nimport secret from "file:///etc/passwd" with { type: "text" };\nreturn secret;',
    'export * from "/etc/passwd";\nreturn 1;',
    'export { default } from "file:///etc/passwd" with { type: "text" };\nreturn 1;',
    'import type { T } from "./t.ts";\nimport * as all from "../../../../etc/passwd" with { type: "text" };\n'
    "return all;",
    'export {};\nconst m = await import("file:///etc/passwd", { with: { type: "text" } });\nreturn m.default;',
    "export {};\nreturn (await import(\"data:application/typescript,import t from '/etc/passwd' with {type: 'text'};"
    ' export default t;")).default;',
]


@pytest.mark.parametrize("runtime", ["typescript", "isolate"])
@pytest.mark.parametrize("code", LEAKS)
async def test_module_syntax_reads_no_host_file(server: AttackServer, runtime: str, code: str) -> None:
    out = await server.attack(runtime, code)
    assert out.get("error") is not None, out
    assert "root:x:0:0" not in repr(out)


@pytest.mark.parametrize("runtime", ["typescript", "isolate"])
async def test_nothing_runs_before_a_refused_import(server: AttackServer, runtime: str) -> None:
    code = (
        'console.log("ran");\nawait tools.toolbox.echo({text: "called"});\n'
        'import { readFileSync } from "node:fs";\nreturn readFileSync("/etc/passwd", "utf8");'
    )
    out = await server.attack(runtime, code)
    assert out["stdout"] == "" and out["error"]["code"] == -32001, out
    assert "cannot import" in out["error"]["message"]
