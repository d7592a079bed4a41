"""`conduit auth` against a real OAuth authorization server on loopback that verifies PKCE."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import anyio.abc
import httpx2
import pytest
import yaml

from conduit.config.schema import Credentials
from conduit.upstream.credential_store import CredentialStore, new_key
from servers.oauth_server import AuthServer
from support import CONDUIT, authorization_url, conduit, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def start_auth(*args: str) -> anyio.abc.Process:
    return await anyio.open_process([CONDUIT, "auth", *args, "--no-browser", "--timeout", "60"])


async def finish(process: anyio.abc.Process) -> tuple[int, str, str]:
    assert process.stdout is not None and process.stderr is not None
    with anyio.fail_after(30):
        await process.wait()
    stdout = b"".join([chunk async for chunk in process.stdout]).decode()
    stderr = b"".join([chunk async for chunk in process.stderr]).decode()
    assert process.returncode is not None
    return process.returncode, stdout, stderr


async def test_auth_discovers_registers_and_exchanges_with_pkce_verified_by_the_server(
    auth_server: AuthServer,
) -> None:
    async with await start_auth(f"{auth_server.url}/mcp") as process:
        url = await authorization_url(process)
        query = parse_qs(urlsplit(url).query)
        assert url.startswith(f"{auth_server.url}/tenant/authorize?")  # found via RFC 9728 then RFC 8414
        assert query["code_challenge_method"] == ["S256"]
        assert query["resource"] == [f"{auth_server.url}/mcp"]
        assert query["scope"] == ["mcp:tools"]
        assert urlsplit(query["redirect_uri"][0]).hostname == "127.0.0.1"
        async with httpx2.AsyncClient(follow_redirects=True, timeout=30) as browser:
            page = await browser.get(url)  # consent, then the redirect to Conduit's loopback listener
        assert page.status_code == 200
        assert "Conduit is authorized" in page.text
        code, stdout, stderr = await finish(process)
    assert code == 0, stderr
    assert auth_server.state.pkce_checks == [True]
    [exchange] = auth_server.state.token_requests
    assert len(exchange["code_verifier"]) >= 43
    assert exchange["resource"] == f"{auth_server.url}/mcp"
    block = yaml.safe_load(stdout)["credentials"]
    assert block["type"] == "oauth2"
    assert block["tokenUrl"] == f"{auth_server.url}/tenant/token"
    assert block["clientId"] in auth_server.state.clients
    assert block["refreshToken"] == auth_server.state.refresh_token
    assert block["scopes"] == ["mcp:tools"]
    assert block["tokenParams"] == {"resource": f"{auth_server.url}/mcp"}
    Credentials.model_validate(block)  # ready to paste into a config
    assert auth_server.state.refresh_token not in stderr
    assert exchange["code"] not in stderr


async def test_a_forged_redirect_with_the_wrong_state_is_refused(auth_server: AuthServer) -> None:
    async with await start_auth(f"{auth_server.url}/mcp") as process:
        url = await authorization_url(process)
        redirect_uri = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        async with httpx2.AsyncClient(timeout=30) as attacker:
            await attacker.get(f"{redirect_uri}?{urlencode({'code': 'stolen', 'state': 'forged'})}")
        code, stdout, stderr = await finish(process)
    assert code == 1
    assert "state does not match" in stderr
    assert stdout == ""
    assert auth_server.state.token_requests == []  # the forged code was never sent anywhere


async def test_a_denied_consent_is_reported(auth_server: AuthServer) -> None:
    async with await start_auth(f"{auth_server.url}/mcp") as process:
        url = await authorization_url(process)
        query = parse_qs(urlsplit(url).query)
        denied = {"error": "access_denied", "error_description": "the user said no", "state": query["state"][0]}
        async with httpx2.AsyncClient(timeout=30) as browser:
            page = await browser.get(f"{query['redirect_uri'][0]}?{urlencode(denied)}")
        assert "Authorization failed" in page.text
        code, stdout, stderr = await finish(process)
    assert code == 1
    assert "authorization refused: access_denied: the user said no" in stderr
    assert stdout == ""


async def test_an_authorization_server_without_s256_pkce_is_refused(auth_server: AuthServer) -> None:
    auth_server.state.advertise_s256 = False
    async with await start_auth(f"{auth_server.url}/mcp") as process:
        code, stdout, stderr = await finish(process)
    assert code == 1
    assert "does not advertise PKCE with S256" in stderr
    assert auth_server.state.clients == {}


async def test_a_resource_without_metadata_is_a_clear_error(auth_server: AuthServer) -> None:
    async with await start_auth(f"{auth_server.url}/elsewhere") as process:
        code, stdout, stderr = await finish(process)
    assert code == 1
    assert "publishes no protected-resource metadata" in stderr
    assert "--issuer" in stderr


async def test_auth_for_a_principal_keeps_the_credential_in_the_store_and_prints_no_secret(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    key = new_key()
    config = write_config(
        tmp_path,
        {
            "auth": {
                "principals": [{"id": "alice", "apiKey": "alice-key-0123456789abcdef"}],
                "credentialStore": {"path": "store.enc", "key": key},
            },
            "upstreams": [
                {
                    "id": "remote",
                    "type": "streamableHttp",
                    "url": f"{auth_server.url}/mcp",
                    "credentials": "perPrincipal",
                }
            ],
        },
    )
    async with await start_auth("--principal", "alice", "--upstream", "remote", "--config", str(config)) as process:
        url = await authorization_url(process)
        assert url.startswith(f"{auth_server.url}/tenant/authorize?")
        async with httpx2.AsyncClient(follow_redirects=True, timeout=30) as browser:
            assert (await browser.get(url)).status_code == 200
        code, stdout, stderr = await finish(process)
    assert code == 0, stderr
    assert auth_server.state.refresh_token not in stdout + stderr
    found = CredentialStore(tmp_path / "store.enc", key).get("alice", "remote")
    assert found is not None
    credentials, _ = found
    assert credentials.type == "oauth2"
    assert credentials.refresh_token is not None
    assert credentials.refresh_token.get_secret_value() == auth_server.state.refresh_token
    assert credentials.token_params == {"resource": f"{auth_server.url}/mcp"}


async def test_auth_for_a_principal_refuses_an_upstream_that_is_not_per_principal(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "auth": {
                "principals": [{"id": "alice", "apiKey": "alice-key-0123456789abcdef"}],
                "credentialStore": {"path": "store.enc", "key": new_key()},
            },
            "upstreams": [{"id": "shared", "type": "streamableHttp", "url": "https://mcp.example.com/mcp"}],
        },
    )
    result = conduit(
        "auth", "--principal", "alice", "--upstream", "shared", "--bearer-token", "t", "--config", str(config)
    )
    assert result.returncode == 2
    assert "does not take per-principal credentials" in result.stderr
    assert not (tmp_path / "store.enc").exists()
