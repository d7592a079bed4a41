"""Principals' own upstream credentials, listed, revoked and disconnected: ``conduit credentials ls|rm`` by an
operator and ``conduit__mcp_disconnect_upstream`` by the principal itself, against a real Conduit over HTTP and
a real remote upstream that answers with the very token each request carried."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from support import CONDUIT, EXECUTE_TS, ConduitHttp, conduit_credentials, http_upstream, run_code, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

MASTER = "master-token-for-credentials-01"
KEYS = {"alice": "alice-key-for-credentials-0123", "bob": "bob-key-for-credentials-01234"}
UPSTREAM_TOKENS = {"alice": "user-alice-c0ffee", "bob": "user-bob-beef42"}
STORE_KEY = base64.urlsafe_b64encode(b"c" * 32).decode()
DISCONNECT = "conduit__mcp_disconnect_upstream"
WHOAMI = "return (await tools.remote.whoami({})).structuredContent;"


@dataclass
class Setup:
    server: ConduitHttp
    config: Path

    async def cli(self, *arguments: str) -> tuple[int, str, str]:
        return await conduit_credentials(self.config, STORE_KEY, *arguments)


@pytest.fixture(scope="module")
async def setup(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    directory = tmp_path_factory.mktemp("credentials")
    async with http_upstream("--transport", "streamable", "--auth", "users") as remote:
        config = write_config(
            directory,
            {
                "codeModeOnly": False,
                "network": {"allowPrivateNetworks": True},
                "auth": {
                    "principals": [{"id": name, "apiKey": key} for name, key in KEYS.items()],
                    "credentialStore": {"path": "credentials.enc", "key": "${STORE_KEY}"},
                },
                "upstreams": [
                    {"id": "remote", "type": "streamableHttp", "url": f"{remote}/mcp", "credentials": "perPrincipal"}
                ],
                "workspace": {"enabled": False},
                "skills": {"enabled": False},
                "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 0, "max": 0}},
            },
        )
        for principal, token in UPSTREAM_TOKENS.items():
            stored = await anyio.run_process(
                [CONDUIT, "auth", "--principal", principal, "--upstream", "remote", "--bearer-token", token]
                + ["--config", str(config)],
                env={"PATH": "/usr/bin:/bin", "STORE_KEY": STORE_KEY},
                check=False,
            )
            assert stored.returncode == 0, stored.stderr
        async with ConduitHttp.start(config, token=MASTER, extra_env={"STORE_KEY": STORE_KEY}) as server:
            yield Setup(server, config)


async def whoami(client: Client) -> dict[str, Any]:
    _, result = await run_code(client, EXECUTE_TS, WHOAMI)
    return result


async def test_operators_list_credentials_without_their_values(setup: Setup) -> None:
    code, out, err = await setup.cli("ls", "--principal", "alice")
    assert (code, out) == (0, "remote  bearer\n"), err
    assert UPSTREAM_TOKENS["alice"] not in out + err
    code, out, err = await setup.cli("ls", "--principal", "nobody")
    assert code != 0 and "--principal 'nobody' is no caller here" in err


async def test_a_principal_disconnects_its_own_account_and_no_one_elses(setup: Setup) -> None:
    async with setup.server.client(KEYS["alice"]) as alice, setup.server.client(KEYS["bob"]) as bob:
        listed = {tool.name for tool in (await alice.list_tools()).tools}
        assert DISCONNECT in listed
        assert (await whoami(alice))["result"]["credential"] == UPSTREAM_TOKENS["alice"]

        answer = await alice.call_tool(DISCONNECT, {"upstream": "remote"})
        assert answer.structured_content == {"upstream": "remote", "disconnected": True}
        refused = await whoami(alice)
        assert refused["error"]["code"] == -32001 and "-32005" not in refused["error"]["message"]
        assert "needs principal 'alice''s own credential" in refused["stderr"]
        again = await alice.call_tool(DISCONNECT, {"upstream": "remote"})
        assert again.structured_content == {"upstream": "remote", "disconnected": False}

        assert (await whoami(bob))["result"]["credential"] == UPSTREAM_TOKENS["bob"]  # bob's untouched
        code, out, _ = await setup.cli("ls", "--principal", "alice")
        assert (code, out) == (0, "")

        with pytest.raises(
            MCPError, match=r"'nowhere' does not take per-principal credentials \(those that do: remote\)"
        ):
            await alice.call_tool(DISCONNECT, {"upstream": "nowhere"})
    async with setup.server.client() as master:
        with pytest.raises(MCPError, match="no principal"):
            await master.call_tool(DISCONNECT, {"upstream": "remote"})


async def test_an_operator_revokes_and_the_running_server_stops_using_it_at_once(setup: Setup) -> None:
    async with setup.server.client(KEYS["bob"]) as bob:
        assert (await whoami(bob))["result"]["credential"] == UPSTREAM_TOKENS["bob"]
        code, out, err = await setup.cli("rm", "--principal", "bob", "remote")
        assert code == 0 and "forgot bob's credential for remote" in out, err
        refused = await whoami(bob)  # (alice disconnected before, when run in order: nobody has one now)
        assert refused["error"] is not None and "own credential" in refused["stderr"]
        assert "`conduit auth --principal" in refused["stderr"]
    code, _, err = await setup.cli("rm", "--principal", "bob", "remote")
    assert code == 1 and "keeps no credential for 'remote'" in err
