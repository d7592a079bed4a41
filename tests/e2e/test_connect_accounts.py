"""Users connect their own upstream accounts on demand: a principal's call that needs a credential it lacks
answers -32042 with a URL; the user's browser opens it, consents at a real authorization server, and comes back
to Conduit's ``/oauth/callback``, which stores the token as that principal's; the call then works. Through a
real Conduit over HTTP, a real authorization server (tests/servers/oauth_server.py) and a real upstream that
accepts its tokens. The browser here is an HTTP client following the redirects a browser would follow."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from servers.oauth_server import AuthServer, AuthServerState, running
from support import EXECUTE_TS, ConduitHttp, conduit_credentials, http_upstream, run_code, wait_until, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

MASTER = "master-token-for-connecting-01"
KEYS = {
    "alice": "alice-key-for-connecting-0123",
    "bob": "bob-key-for-connecting-01234",
    "carol": "carol-key-for-connecting-0123",
    "dave": "dave-key-for-connecting-01234",
}
STORE_KEY = base64.urlsafe_b64encode(b"a" * 32).decode()
WHOAMI = "return (await tools.remote.whoami({})).structuredContent.credential;"


@dataclass
class Setup:
    server: ConduitHttp
    authority: AuthServer
    remote: str
    config: Path

    async def connect_url(self, client: Client) -> str:
        """Call the upstream directly; the -32042 answer's URL."""
        answer = await client.call_tool("remote__whoami", {})
        assert answer.is_error and answer.structured_content is not None, answer
        assert answer.meta is not None and answer.meta["conduit/errorCode"] == -32042
        url = answer.structured_content["url"]
        assert url in answer.content[0].text  # type: ignore[union-attr]
        return str(url)

    async def browse(self, url: str) -> httpx2.Response:
        """What a browser does with the URL: the authorization server consents and redirects to the callback."""
        async with httpx2.AsyncClient(timeout=20) as browser:
            consent = await browser.get(url)
            assert consent.status_code == 302, consent.text
            return await browser.get(consent.headers["location"])


@pytest.fixture(scope="module")
async def setup(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    directory = tmp_path_factory.mktemp("connect")
    async with running(AuthServerState(token_prefix="user-", iss_parameter=True)) as authority:
        issuer = f"{authority.url}/tenant"
        async with http_upstream("--auth", "users", "--authorization-server", issuer) as remote:
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
                        {
                            "id": "remote",
                            "type": "streamableHttp",
                            "url": f"{remote}/mcp",
                            "credentials": "perPrincipal",
                            "authorization": {"scopes": ["mcp:tools"]},
                        }
                    ],
                    "workspace": {"enabled": False},
                    "skills": {"enabled": False},
                    "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 0, "max": 0}},
                },
            )
            async with ConduitHttp.start(config, token=MASTER, extra_env={"STORE_KEY": STORE_KEY}) as server:
                yield Setup(server, authority, remote, config)


async def test_a_principal_connects_its_own_account_at_the_url_and_the_call_then_works(setup: Setup) -> None:
    async with setup.server.client(KEYS["alice"]) as alice:
        url = await setup.connect_url(alice)
        query = parse_qs(urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"] and query["scope"] == ["mcp:tools"]
        assert query["redirect_uri"] == [f"{setup.server.url.removesuffix('/mcp')}/oauth/callback"]
        page = await setup.browse(url)
        assert page.status_code == 200 and "Your account on remote is connected" in page.text
        assert "user-" not in page.text  # the page never shows a token
        assert "default-src 'none'" in page.headers["content-security-policy"]
        answer = await alice.call_tool("remote__whoami", {})
        assert not answer.is_error, answer
        credential = answer.structured_content["credential"]  # type: ignore[index]
        assert credential.startswith("user-")
        _, ran = await run_code(alice, EXECUTE_TS, WHOAMI)
        assert ran["result"] == credential  # programs use it too
    code, out, err = await credentials_of(setup, "alice")
    assert code == 0 and out in ("remote  bearer\n", "remote  oauth2\n"), err


async def test_a_program_gets_32042_with_the_url_and_another_principal_gets_none_of_alices(setup: Setup) -> None:
    code = "try { await tools.remote.whoami({}); return 'called'; }\n"
    code += "catch (e) { return { code: e.code, url: e.data && e.data.url }; }"
    async with setup.server.client(KEYS["bob"]) as bob:
        _, result = await run_code(bob, EXECUTE_TS, code)
        assert result["result"]["code"] == -32042, result
        assert result["result"]["url"].startswith(f"{setup.authority.url}/tenant/authorize?")


async def test_a_used_or_unknown_state_a_wrong_iss_and_a_refusal_store_nothing(setup: Setup) -> None:
    async with setup.server.client(KEYS["bob"]) as bob, httpx2.AsyncClient(timeout=20) as browser:
        url = await setup.connect_url(bob)
        consent = await browser.get(url)
        callback = consent.headers["location"]
        forged = callback.replace("iss=", "iss=https%3A%2F%2Fevil.example%2F&x=")
        wrong_iss = await browser.get(forged)
        assert wrong_iss.status_code == 400 and "another authorization server" in wrong_iss.text
        replayed = await browser.get(callback)  # the state was taken by the refused attempt: single use
        assert replayed.status_code == 400 and "unknown, used already or expired" in replayed.text
        unknown = await browser.get(f"{setup.server.url.removesuffix('/mcp')}/oauth/callback?state=nope&code=x")
        assert unknown.status_code == 400
        setup.authority.state.consent = "access_denied"
        try:
            denied = await setup.browse(await setup.connect_url(bob))
        finally:
            setup.authority.state.consent = "accept"
        assert denied.status_code == 400 and "access_denied" in denied.text
        still = await bob.call_tool("remote__whoami", {})
        assert still.is_error and still.meta is not None and still.meta["conduit/errorCode"] == -32042


async def test_a_handshake_era_client_gets_the_url_elicitation_required_error(setup: Setup) -> None:
    async with setup.server.client(KEYS["bob"], mode="legacy") as bob:
        with pytest.raises(MCPError) as refused:
            await bob.call_tool("remote__whoami", {})
    error = refused.value.error
    assert error.code == -32042
    elicitation = error.data["elicitations"][0]
    assert elicitation["mode"] == "url" and elicitation["elicitationId"]
    assert elicitation["url"].startswith(f"{setup.authority.url}/tenant/authorize?")
    page = await setup.browse(elicitation["url"])  # the URL works as the modern answer's does
    assert page.status_code == 200 and "connected" in page.text


@dataclass
class User:
    """A client's elicitation callback: the person behind it opens the URL (or declines)."""

    setup: Setup
    action: str = "accept"
    asked: list[types.ElicitRequestURLParams] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        self.asked.append(params)
        if self.action == "accept":
            page = await self.setup.browse(params.url)
            assert page.status_code == 200, page.text
        return types.ElicitResult(action=self.action)  # type: ignore[arg-type]

    async def messages(self, message: Any) -> None:
        if isinstance(message, types.ElicitCompleteNotification):
            self.completed.append(message.params.elicitation_id)


async def test_a_client_that_can_open_urls_is_asked_and_the_call_waits_then_completes(setup: Setup) -> None:
    user = User(setup)
    options = {"mode": "legacy", "elicitation_callback": user, "message_handler": user.messages}
    async with setup.server.client(KEYS["carol"], **options) as carol:
        answer = await carol.call_tool("remote__whoami", {})
        assert not answer.is_error, answer
        assert answer.structured_content["credential"].startswith("user-")  # type: ignore[index]
        await wait_until(lambda: bool(user.completed))
    assert len(user.asked) == 1 and user.asked[0].mode == "url"
    assert user.completed == [user.asked[0].elicitation_id]


async def test_a_user_who_declines_leaves_the_call_failed_and_nothing_stored(setup: Setup) -> None:
    user = User(setup, action="decline")
    async with setup.server.client(KEYS["dave"], mode="legacy", elicitation_callback=user) as dave:
        answer = await dave.call_tool("remote__whoami", {})
    assert answer.is_error and "was not connected (decline)" in answer.content[0].text  # type: ignore[union-attr]
    code, out, _ = await credentials_of(setup, "dave")
    assert (code, out) == (0, "")


async def credentials_of(setup: Setup, principal: str) -> tuple[int, str, str]:
    return await conduit_credentials(setup.config, STORE_KEY, "ls", "--principal", principal)


async def test_the_callback_is_rate_limited_and_creates_nothing_last_in_this_module(setup: Setup) -> None:
    base = setup.server.url.removesuffix("/mcp")
    async with httpx2.AsyncClient(timeout=20) as browser:
        statuses = [
            (await browser.get(f"{base}/oauth/callback", params={"state": f"s{n}", "code": "c"})).status_code
            for n in range(40)
        ]
    assert set(statuses) == {400, 429} and statuses.count(400) <= 30
    assert statuses[-1] == 429
