"""A real Conduit server to attack over MCP, with canary secrets that must never come back.

Each attack module starts its own server (module scope) through :func:`attack_server`. The server
runs with a canary in its environment and another as its master token; when the module is done,
neither may appear in the server's log or in anything an attack received.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp import Client

from support import EXECUTE_ISOLATE, EXECUTE_PYTHON, EXECUTE_TS, TOOLBOX, ConduitHttp, run_code, write_config

ENV_CANARY = "canary-env-7d41c09e5b2a"
TOKEN_CANARY = "canary-master-token-5f0e2b9a71c4"
TOOL = {"typescript": EXECUTE_TS, "python": EXECUTE_PYTHON, "isolate": EXECUTE_ISOLATE}
RUNTIMES = sorted(TOOL)
BENIGN = {
    "typescript": "return (await tools.toolbox.add({a: 2, b: 3})).structuredContent.sum;",
    "isolate": "return (await tools.toolbox.add({a: 2, b: 3})).structuredContent.sum;",
    "python": "(await tools.toolbox.add(a=2, b=3))['structuredContent']['sum']",
}
BASE_CONFIG: Mapping[str, Any] = {
    "upstreams": [{"id": "toolbox", "command": sys.executable, "args": [TOOLBOX]}],
    "resourceLimits": {"timeoutMs": 15_000, "memoryLimitMb": 128},
    "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 1, "max": 2}},
}


@dataclass
class AttackServer:
    """A running server and every answer an attack got from it."""

    http: ConduitHttp
    seen: list[str] = field(default_factory=list)

    async def attack(self, runtime: str, code: str, **arguments: Any) -> dict[str, Any]:
        """Run the attack, then prove the runtime still serves; returns the attack's result."""
        async with self.http.client() as client:
            out = await self.run(client, runtime, code, **arguments)
            await benign(client, runtime)
        return out

    async def run(self, client: Client, runtime: str, code: str, **arguments: Any) -> dict[str, Any]:
        """One execution on an open client, recorded for the canary check."""
        _, out = await run_code(client, TOOL[runtime], code, **arguments)
        self.seen.append(repr(out))
        return out


async def benign(client: Client, runtime: str) -> None:
    is_error, out = await run_code(client, TOOL[runtime], BENIGN[runtime])
    assert (is_error, out.get("result")) == (False, 5), out


@asynccontextmanager
async def attack_server(directory: Path, overrides: Mapping[str, Any] | None = None) -> AsyncIterator[AttackServer]:
    """A ``conduit serve`` over HTTP with :data:`BASE_CONFIG` (top-level keys replaced by ``overrides``)."""
    config = write_config(directory, {**BASE_CONFIG, **(overrides or {})})
    env = {"CONDUIT_TEST_SECRET": ENV_CANARY}
    async with ConduitHttp.start(config, token=TOKEN_CANARY, extra_env=env) as running:
        server = AttackServer(running)
        yield server
        log = running.log.read_text()
    for canary in (ENV_CANARY, TOKEN_CANARY):
        assert canary not in log, f"{canary} reached the server log"
        assert not any(canary in text for text in server.seen), f"{canary} reached a response"
