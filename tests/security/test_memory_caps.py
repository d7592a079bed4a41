"""The memory limit ends a program promptly however it takes the memory, even on a busy machine.

Heap, ArrayBuffers, one WebAssembly memory grown past the limit, many small ones, Workers each with a heap
of their own: every bomb must come back as the memory error (-32009) within three seconds while another
sandbox spins on a core beside it. One WebAssembly memory is capped inside the runtime (V8's page limit);
what only the sum of many allocations exceeds is stopped by the sandbox's cgroup, which Conduit kills the
moment it meets its cap instead of letting the kernel reclaim the runtime's own pages while it crawls.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
from canary_server import TOOL, AttackServer, attack_server, benign

from conduit.sandbox.walls import Walls
from support import run_code

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

LIMIT_MB = 64
BOUND_S = 3.0
SPIN = {"typescript": "while (true) {}", "python": "while True:\n    pass", "isolate": "while (true) {}"}
WASM_GROW = (
    "let mb = 0; const m = new WebAssembly.Memory({initial: 1, maximum: 65536});\n"
    "while (mb < 1024) { const old = m.buffer.byteLength; m.grow(256); new Uint8Array(m.buffer, old).fill(7); "
    "mb += 16; }\nreturn mb;"
)
IN_RUNTIME = [  # stopped by the runtime's own ceilings (V8 heap, WASM pages, Pyodide's memory)
    ("typescript", WASM_GROW),
    ("typescript", "const held = []; while (true) held.push(new Array(1 << 20).fill(Math.random()));"),
    ("python", "held = []\nwhile True:\n    held.append(bytearray(16 << 20))"),
    (
        "python",
        "import js\nfrom pyodide.ffi import to_js\n"
        "m = js.WebAssembly.Memory.new(to_js({'initial': 1, 'maximum': 65536}, dict_converter=js.Object.fromEntries))\n"
        "while True:\n    m.grow(256)",
    ),
    ("isolate", "const h = []; while (true) h.push('x'.repeat(1 << 20) + Math.random());"),
    ("isolate", "const h = []; while (true) h.push(new Array(1 << 20).fill(Math.random()));"),
]
AT_THE_CAP = [  # only their sum passes the limit: the sandbox's cgroup stops them
    (
        "typescript",
        "const ms = []; while (true) { const m = new WebAssembly.Memory({initial: 256, maximum: 256}); "
        "new Uint8Array(m.buffer).fill(7); ms.push(m); }",
    ),
    ("typescript", "const held = []; while (true) { const a = new Uint8Array(16 << 20); a.fill(1); held.push(a); }"),
    (
        "typescript",
        "const work = 'const h = []; while (true) h.push(new Array(1 << 20).fill(1));';\n"
        "const source = URL.createObjectURL(new Blob([work], {type: 'application/javascript'}));\n"
        "for (let i = 0; i < 16; i++) new Worker(source, {type: 'module'});\n"
        "await new Promise((resolve) => setTimeout(resolve, 20000));",
    ),
    (
        "python",
        "import js\nfrom pyodide.ffi import to_js\nheld = []\n"
        "while True:\n"
        "    m = js.WebAssembly.Memory.new(to_js({'initial': 256}, dict_converter=js.Object.fromEntries))\n"
        "    js.Uint8Array.new(m.buffer).fill(7)\n    held.append(m)",
    ),
]


@pytest.fixture(scope="module")
async def server(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackServer]:
    limits = {"timeoutMs": 20_000, "memoryLimitMb": LIMIT_MB}
    async with attack_server(tmp_path_factory.mktemp("memory-caps"), {"resourceLimits": limits}) as running:
        yield running


def cgroup_memory() -> None:
    walls = Walls.detect(30_000)
    walls.close()
    wall = next(wall for wall in walls.report if wall.name == "cgroup-memory")
    if not wall.active:
        pytest.skip(f"cgroup-memory is unavailable on this machine: {wall.detail}")


async def bomb_beside_a_spinner(server: AttackServer, runtime: str, code: str) -> tuple[dict[str, object], float]:
    """Run ``code`` while another sandbox of the same runtime burns a core; returns its result and duration."""
    async with server.http.client() as client, anyio.create_task_group() as tg:
        spinning = anyio.Event()

        async def spin() -> None:
            spinning.set()
            await run_code(client, TOOL[runtime], SPIN[runtime], limits={"timeoutMs": 8_000})

        tg.start_soon(spin)
        await spinning.wait()
        await anyio.sleep(0.3)  # the spinner is running
        started = time.perf_counter()
        out = await server.run(client, runtime, code)
        took = time.perf_counter() - started
        tg.cancel_scope.cancel()
    async with server.http.client() as client:
        await benign(client, runtime)
    return out, took


@pytest.mark.parametrize(("runtime", "code"), IN_RUNTIME)
async def test_a_bomb_the_runtime_caps_ends_promptly_under_load(server: AttackServer, runtime: str, code: str) -> None:
    out, took = await bomb_beside_a_spinner(server, runtime, code)
    assert out.get("error", {}).get("code") == -32009, out  # type: ignore[union-attr]
    assert took < BOUND_S, f"{runtime} bomb took {took:.1f} s"


@pytest.mark.parametrize(("runtime", "code"), AT_THE_CAP)
async def test_a_bomb_only_the_cgroup_sees_ends_promptly_under_load(
    server: AttackServer, runtime: str, code: str
) -> None:
    cgroup_memory()
    out, took = await bomb_beside_a_spinner(server, runtime, code)
    assert out.get("error", {}).get("code") == -32009, out  # type: ignore[union-attr]
    assert took < BOUND_S, f"{runtime} bomb took {took:.1f} s"
