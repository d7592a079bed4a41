"""Nothing a program stores survives its execution: not through Web Storage, the Cache API or Deno's caches.

Deno keeps origin storage and its module caches under ``DENO_DIR`` with no file permission needed; a
directory shared by sandboxes was a channel from one execution (and one tenant) to the next. Each attack
writes through every store it can reach, then later executions, from pooled sandboxes and from cold ones
(a lower memory limit than the pools keep), look for what it wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from canary_server import AttackServer, attack_server

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

LATER_RUNS = 4
"""Executions after the write that must see nothing: two from the pool, two started cold."""
COLD = {"memoryLimitMb": 100}
"""Below the pools' 128 MiB: such a request gets a sandbox started for it alone."""

WRITE = {
    "typescript": """
        localStorage.setItem("planted", "LEAK-LOCAL");
        sessionStorage.setItem("planted", "LEAK-SESSION");
        const cache = await caches.open("planted");
        await cache.put("http://conduit.invalid/planted", new Response("LEAK-CACHE"));
        // compiled and cached by Deno: a data: module whose source names the canary
        await import("data:application/typescript;base64," + btoa("export const planted: string = 'LEAK-EMIT';"));
        return [localStorage.getItem("planted"), sessionStorage.getItem("planted"), await caches.has("planted")];
    """,
    "python": """
import js
js.localStorage.setItem("planted", "LEAK-LOCAL")
js.sessionStorage.setItem("planted", "LEAK-SESSION")
cache = await js.caches.open("planted")
await cache.put("http://conduit.invalid/planted", js.Response.new("LEAK-CACHE"))
[js.localStorage.getItem("planted"), js.sessionStorage.getItem("planted"), await js.caches.has("planted")]
""",
}
WRITTEN = ["LEAK-LOCAL", "LEAK-SESSION", True]
READ = {
    "typescript": """
        const cache = await caches.open("planted");
        const hit = await cache.match("http://conduit.invalid/planted");
        return [localStorage.length, sessionStorage.length, localStorage.getItem("planted"),
                hit ? await hit.text() : null, typeof Deno.openKv, typeof indexedDB];
    """,
    "python": """
import js
cache = await js.caches.open("planted")
hit = await cache.match("http://conduit.invalid/planted")
[js.localStorage.length, js.sessionStorage.length, js.localStorage.getItem("planted"),
 None if hit is None else await hit.text(), getattr(js.Deno, "openKv", "undefined"),
 getattr(js, "indexedDB", "undefined")]
""",
}
NOTHING = {
    "typescript": [0, 0, None, None, "undefined", "undefined"],
    "python": [0, 0, None, None, "undefined", "undefined"],
}


@pytest.fixture(scope="module")
async def server(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackServer]:
    async with attack_server(tmp_path_factory.mktemp("fresh-state")) as running:
        yield running


@pytest.mark.parametrize("runtime", ["typescript", "python"])
@pytest.mark.parametrize("writer", ["pooled", "cold"])
async def test_browser_storage_and_caches_do_not_outlive_their_execution(
    server: AttackServer, runtime: str, writer: str
) -> None:
    async with server.http.client() as client:
        written = await server.run(client, runtime, WRITE[runtime], limits=COLD if writer == "cold" else {})
        assert written.get("result") == WRITTEN, written  # the stores work within one execution
        for later in range(LATER_RUNS):
            limits = COLD if later % 2 else {}
            seen = await server.run(client, runtime, READ[runtime], limits=limits)
            assert seen.get("error") is None, seen
            assert seen["result"] == NOTHING[runtime], (later, seen)
            assert "LEAK" not in repr(seen)


async def test_the_isolate_runtime_has_no_store_to_write_through(server: AttackServer) -> None:
    code = (
        "return [typeof localStorage, typeof sessionStorage, typeof caches, typeof indexedDB, "
        "typeof Deno, typeof WebAssembly, typeof SharedArrayBuffer];"
    )
    out = await server.attack("isolate", code)
    assert out["result"] == ["undefined"] * 7
