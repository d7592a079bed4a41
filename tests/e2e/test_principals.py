"""Principals over real HTTP with the official client: policies, their own upstream credentials, OAuth JWTs.

One Conduit serves three API-key principals and OAuth callers, with two upstreams: the stdio
toolbox and a remote upstream marked ``credentials: perPrincipal`` that records the token of
every request it sees. Each principal attempts what its policy forbids (see, search, validate,
call another's tools, widen ``allowedTools``, use another's credential) and is refused; JWTs are
signed here with keys made here, served as a JWKS by a real loopback issuer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from mcp import Client
from mcp.shared.exceptions import MCPError

from conduit.errors import UPSTREAM_ERROR
from conduit.oauth.discovery import authorization_server_document, discover_resource
from support import (
    CANCEL,
    CONDUIT,
    INITIALIZE,
    ISSUER,
    STATUS,
    ConduitHttp,
    conduit,
    free_port,
    http_upstream,
    loopback_server,
    run_ts,
    scrape,
    sleeping_program,
    start_background,
    stdio_client_for,
    write_config,
)

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"
CAROL_KEY = "carol-key-0123456789abcdef"
MASTER_TOKEN = "test-master-token-0123456789"
ALICE_UPSTREAM_TOKEN = "user-alice-7f3a"
BOB_UPSTREAM_TOKEN = "user-bob-91c2"
STORE_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
SCOPE = "conduit:echo"
ALICE_AT_IDP = "idp|alice-7f3a"
"""The subject alice has at the identity provider: the config maps it to the API-key principal alice."""


@dataclass
class Setup:
    server: ConduitHttp
    remote: str
    issuer: str
    audience: str
    signing_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    config: Path

    def client(self, key: str) -> Any:
        return self.server.client(key)

    def token(self, key: Any = None, *, algorithm: str = "RS256", kid: str = "rsa-1", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": self.audience, "sub": "dora", "exp": now + 300, "scope": SCOPE}
        body.update(claims)
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            key or self.signing_key,
            algorithm=algorithm,
            headers={"kid": kid},
        )


def jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key, as_dict=True), "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
async def setup(
    anyio_backend: str, tmp_path_factory: pytest.TempPathFactory, toolbox_command: dict[str, Any]
) -> AsyncIterator[Setup]:
    directory = tmp_path_factory.mktemp("principals")
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = directory / "jwks.json"
    keys.write_text(json.dumps({"keys": [jwk(signing_key.public_key(), "rsa-1"), jwk(ec_key.public_key(), "ec-1")]}))
    port = free_port()
    audience = f"http://127.0.0.1:{port}/mcp"
    async with (
        http_upstream("--transport", "streamable", "--auth", "users") as remote,
        loopback_server(ISSUER, str(keys)) as issuer,
    ):
        document = {
            "codeModeOnly": False,
            "network": {"allowPrivateNetworks": True},
            "auth": {
                "principals": [
                    {"id": "alice", "apiKey": ALICE_KEY, "allowedTools": ["toolbox.echo", "remote.*"]},
                    {
                        "id": "bob",
                        "apiKeySha256": hashlib.sha256(BOB_KEY.encode()).hexdigest(),
                        "allowedTools": ["toolbox.add", "toolbox.sleep", "remote.whoami"],
                        "limits": {"timeoutMs": 1500},
                        "maxConcurrent": 1,
                    },
                    {"id": "carol", "apiKey": CAROL_KEY, "upstreams": ["remote"], "rateLimit": "3/minute"},
                ],
                "oauth": {
                    "issuer": issuer,
                    "audience": audience,
                    "policies": [
                        {"claim": {"sub": ALICE_AT_IDP}, "principal": "alice"},  # the one mapping: alice's person
                        {"scope": SCOPE, "allowedTools": ["toolbox.echo"]},
                        {"claim": {"groups": "ops"}, "allowedTools": ["toolbox.*"]},
                        {"claim": {"groups": "remote"}, "allowedTools": ["remote.*", "toolbox.*"], "maxConcurrent": 1},
                    ],
                    "algorithms": ["RS256", "ES256"],
                },
                "credentialStore": {"path": "credentials.enc", "key": "${STORE_KEY}"},
            },
            "upstreams": [
                {"id": "toolbox", **toolbox_command},
                {"id": "remote", "type": "streamableHttp", "url": f"{remote}/mcp", "credentials": "perPrincipal"},
            ],
            "pools": {"python": {"min": 0, "max": 0}, "monty": {"min": 0, "max": 0}},
        }
        config = write_config(directory, document)
        for principal, token in (("alice", ALICE_UPSTREAM_TOKEN), ("bob", BOB_UPSTREAM_TOKEN)):
            stored = await anyio.run_process(
                [CONDUIT, "auth", "--principal", principal, "--upstream", "remote", "--bearer-token", token]
                + ["--config", str(config)],
                env={"PATH": "/usr/bin:/bin", "STORE_KEY": STORE_KEY},
                check=False,
            )
            assert stored.returncode == 0, stored.stderr
            assert token.encode() not in stored.stdout + stored.stderr
        async with ConduitHttp.start(config, token=MASTER_TOKEN, extra_env={"STORE_KEY": STORE_KEY}, port=port) as up:
            yield Setup(up, remote, issuer, audience, signing_key, ec_key, config)


async def tool_names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools if not tool.name.startswith("conduit__")}


async def disclose(client: Client, name: str, **arguments: Any) -> tuple[bool, Any]:
    """(refused, answer): a refusal is the protocol error an unknown tool gets, or a failed result."""
    try:
        result = await client.call_tool(f"conduit__mcp_{name}", arguments)
    except MCPError as exc:
        return True, exc.error.message
    return bool(result.is_error), result.structured_content


async def test_each_principal_lists_only_the_tools_its_policy_allows(setup: Setup) -> None:
    async with setup.client(ALICE_KEY) as alice, setup.client(BOB_KEY) as bob, setup.client(MASTER_TOKEN) as master:
        assert await tool_names(alice) == {"toolbox__echo", "remote__echo", "remote__whoami", "remote__hang"} | {
            "remote__die",
            "remote__grow",
        }
        assert await tool_names(bob) == {"toolbox__add", "toolbox__sleep", "remote__whoami"}
        everything = await tool_names(master)
    assert {"toolbox__add", "toolbox__echo", "toolbox__env", "remote__whoami"} <= everything


async def test_disclosure_tools_never_reveal_another_principals_tools(setup: Setup) -> None:
    async with setup.client(ALICE_KEY) as alice:
        _, packages = await disclose(alice, "list_tool_packages")
        by_id = {package["packageId"]: package for package in packages["packages"]}
        assert by_id["toolbox"]["toolCount"] == 1
        _, stubs = await disclose(alice, "list_tool_stubs", packageId="toolbox")
        assert [stub.partition("(")[0] for stub in stubs["tools"]] == ["echo"]
        _, found = await disclose(alice, "search_tools", query="add numbers sum")
        assert found["matches"] and all(not match.startswith("toolbox.add:") for match in found["matches"])
        failed, answer = await disclose(alice, "read_tool_schema", toolId="toolbox__add")
        assert failed and "unknown tool" in answer  # the same answer as for a tool that does not exist
        failed, answer = await disclose(alice, "validate_tool", toolName="toolbox__add", args={"a": 1, "b": 2})
        assert failed and "unknown tool" in answer
    async with setup.client(CAROL_KEY) as carol:  # `upstreams: [remote]`: the toolbox is not even a package
        _, packages = await disclose(carol, "list_tool_packages")
        assert [package["packageId"] for package in packages["packages"]] == ["remote"]


async def test_a_request_cannot_widen_its_principals_allowlist(setup: Setup) -> None:
    program = """
    const seen = (await discoverMCPTools()).map((tool) => tool.name).sort();
    let add;
    try { add = await tools.$raw("toolbox__add", { a: 1, b: 2 }); } catch (error) { add = String(error.message); }
    return { seen, hasAdd: "add" in (tools.toolbox ?? {}), add };
    """
    async with setup.client(ALICE_KEY) as alice:
        failed, outcome = await run_ts(alice, program, allowedTools=["*"])
        assert not failed, outcome
        assert outcome["result"]["seen"] == ["remote__die", "remote__echo", "remote__grow", "remote__hang"] + [
            "remote__whoami",
            "toolbox__echo",
        ]
        assert outcome["result"]["hasAdd"] is False
        assert "toolbox__add" in outcome["result"]["add"] and "not" in outcome["result"]["add"]
        with pytest.raises(MCPError) as refused:  # proxied: refused the same way
            await alice.call_tool("toolbox__add", {"a": 1, "b": 2})
        assert "allowlist" in refused.value.error.message


async def test_each_principals_calls_reach_the_upstream_with_its_own_token(setup: Setup) -> None:
    program = "return (await tools.remote.whoami({})).structuredContent.credential;"
    async with setup.client(ALICE_KEY) as alice, setup.client(BOB_KEY) as bob:
        async with anyio.create_task_group() as tg:  # at the same time: nothing is shared between them
            seen: dict[str, Any] = {}

            async def run(name: str, client: Client) -> None:
                seen[name] = await run_ts(client, program)

            tg.start_soon(run, "alice", alice)
            tg.start_soon(run, "bob", bob)
        assert seen["alice"] == (False, {**seen["alice"][1], "result": ALICE_UPSTREAM_TOKEN})
        assert seen["bob"] == (False, {**seen["bob"][1], "result": BOB_UPSTREAM_TOKEN})
        proxied = await alice.call_tool("remote__whoami", {})
        assert proxied.structured_content == {"credential": ALICE_UPSTREAM_TOKEN}
    async with httpx2.AsyncClient(timeout=10) as http:
        stats = (await http.get(f"{setup.remote}/_stats")).json()
    assert stats["tokens"] == sorted([ALICE_UPSTREAM_TOKEN, BOB_UPSTREAM_TOKEN])


async def test_a_principal_without_a_credential_gets_a_clear_error_and_no_other_token(setup: Setup) -> None:
    program = "try { return await tools.remote.whoami({}); } catch (e) { return { code: e.code, message: e.message }; }"
    async with setup.client(CAROL_KEY) as carol:
        failed, outcome = await run_ts(carol, program)
        assert not failed, outcome
        assert outcome["result"]["code"] == UPSTREAM_ERROR
        assert "conduit auth --principal carol --upstream remote" in outcome["result"]["message"]
    async with setup.client(MASTER_TOKEN) as master:
        proxied = await master.call_tool("remote__whoami", {})
        assert proxied.is_error
        assert "no principal" in proxied.content[0].text  # type: ignore[union-attr]
    async with httpx2.AsyncClient(timeout=10) as http:
        stats = (await http.get(f"{setup.remote}/_stats")).json()
    assert set(stats["tokens"]) <= {ALICE_UPSTREAM_TOKEN, BOB_UPSTREAM_TOKEN}


async def test_a_principals_limits_are_ceilings(setup: Setup) -> None:
    async with setup.client(BOB_KEY) as bob:
        failed, outcome = await run_ts(bob, "while (true) {}", limits={"timeoutMs": 60_000})
    assert failed
    assert outcome["error"]["code"] == -32008
    assert "1500 ms" in outcome["error"]["message"]


async def test_a_principals_concurrency_share_serialises_its_runs(setup: Setup) -> None:
    program = "const start = Date.now(); await new Promise((r) => setTimeout(r, 600)); return [start, Date.now()];"
    spans: list[list[int]] = []
    async with setup.client(BOB_KEY) as bob:

        async def run() -> None:
            failed, outcome = await run_ts(bob, program)
            assert not failed, outcome
            spans.append(outcome["result"])

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(run)
    first, second = sorted(spans)
    assert second[0] >= first[1], spans  # bob's maxConcurrent is 1: the second began after the first ended


async def test_a_principals_rate_limit_is_its_own(setup: Setup) -> None:
    refusals: list[MCPError] = []
    async with setup.client(CAROL_KEY) as carol:
        for _ in range(4):  # 3/minute, some of it spent by the tests before
            try:
                await run_ts(carol, "return 1;")
            except MCPError as exc:
                refusals.append(exc)
    assert refusals, "carol's fourth execution within a minute was not refused"
    assert refusals[0].error.code == -32000
    assert "principal carol" in refusals[0].error.message
    async with setup.client(ALICE_KEY) as alice:  # another principal is not held back by carol's limit
        failed, _ = await run_ts(alice, "return 1;")
        assert not failed


async def test_unknown_keys_are_refused_with_a_challenge_naming_the_resource_metadata(setup: Setup) -> None:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx2.AsyncClient(timeout=10) as http:
        for presented in ("not-a-key-of-anyone", ALICE_KEY + "x", "Basic " + ALICE_KEY):
            auth = presented if presented.startswith("Basic") else f"Bearer {presented}"
            response = await http.post(setup.server.url, headers={**headers, "Authorization": auth}, json=INITIALIZE)
            assert response.status_code == 401
            challenge = response.headers["www-authenticate"]
            base = setup.audience.removesuffix("/mcp")
            assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            metadata = await http.get(setup.server.url.removesuffix("/mcp") + path)
            assert metadata.status_code == 200
            assert metadata.json()["resource"] == setup.audience
            assert metadata.json()["authorization_servers"] == [setup.issuer.rstrip("/") + "/"] or metadata.json()[
                "authorization_servers"
            ] == [setup.issuer]
    assert ALICE_KEY not in setup.server.log.read_text()


async def test_an_mcp_client_finds_the_authorization_server_from_the_401_alone(setup: Setup) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:  # the discovery `conduit auth` runs, on the SDK's models
        metadata = await discover_resource(http, setup.server.url)
        assert str(metadata.resource).rstrip("/") == setup.audience
        [server] = metadata.authorization_servers
        issuer = await authorization_server_document(http, str(server))
    assert issuer["jwks_uri"] == f"{setup.issuer}/jwks.json"


async def test_a_session_opened_by_one_principal_cannot_be_used_by_another(setup: Setup) -> None:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx2.AsyncClient(timeout=10) as http:
        opened = await http.post(
            setup.server.url, headers={**headers, "Authorization": f"Bearer {ALICE_KEY}"}, json=INITIALIZE
        )
        session = {**headers, "mcp-session-id": opened.headers["mcp-session-id"]}
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        hijack = await http.post(
            setup.server.url, headers={**session, "Authorization": f"Bearer {BOB_KEY}"}, json=listing
        )
    assert hijack.status_code in (403, 404)


async def test_a_valid_jwt_acts_as_its_principal_under_the_policy_its_scope_selects(setup: Setup) -> None:
    async with setup.client(setup.token()) as dora:
        assert await tool_names(dora) == {"toolbox__echo"}
        failed, outcome = await run_ts(dora, "return (await tools.toolbox.echo({ text: 'hi' })).structuredContent;")
        assert not failed, outcome
    async with setup.client(setup.token(scope="other", groups=["ops"], sub="erin")) as erin:  # a claim's policy
        assert {"toolbox__add", "toolbox__echo"} <= await tool_names(erin)
        assert "remote__whoami" not in await tool_names(erin)
    es256 = setup.token(setup.ec_key, algorithm="ES256", kid="ec-1")
    async with setup.client(es256) as dora_again:
        assert await tool_names(dora_again) == {"toolbox__echo"}
    samples = await scrape(setup.server)
    assert samples[("conduit_principal_executions_total", (("outcome", "ok"), ("principal", "oauth:dora")))] >= 1
    assert samples[("conduit_principal_tool_calls_total", (("outcome", "ok"), ("principal", "oauth:dora")))] >= 1


async def test_bad_jwts_are_all_refused_with_401(setup: Setup) -> None:
    now = int(time.time())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = setup.signing_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode()).rstrip(b"=")
    claims = {"iss": setup.issuer, "aud": setup.audience, "sub": "dora", "exp": now + 300, "scope": SCOPE}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    unsigned = f"{header.decode()}.{payload.decode()}."
    hs_header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode()).rstrip(b"=")
    signed = hs_header + b"." + payload
    mac = base64.urlsafe_b64encode(hmac.new(public_pem, signed, hashlib.sha256).digest()).rstrip(b"=")
    forged_hmac = (signed + b"." + mac).decode()  # the public key used as an HMAC secret (key confusion)
    bad = {
        "expired": setup.token(exp=now - 3600),
        "not yet valid": setup.token(nbf=now + 3600),
        "another audience": setup.token(aud="https://elsewhere.example/mcp"),
        "another issuer": setup.token(iss="https://evil.example"),
        "unknown key": setup.token(stranger, kid="rsa-1"),
        "unknown key id": setup.token(stranger, kid="rsa-9"),
        "alg none": unsigned,
        "hmac with the public key": forged_hmac,
        "no exp": setup.token(exp=None),
        "no matching policy": setup.token(scope="nothing-mapped"),
        "garbage": "a.b.c",
    }
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx2.AsyncClient(timeout=10) as http:
        for why, token in bad.items():
            response = await http.post(
                setup.server.url, headers={**headers, "Authorization": f"Bearer {token}"}, json=INITIALIZE
            )
            assert response.status_code == 401, why
        fetches = (await http.get(f"{setup.issuer}/_stats")).json()["jwks"]
    assert fetches <= 3  # forged key ids do not make the issuer's keys be fetched again and again


async def test_the_master_token_cannot_be_a_principals_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"auth": {"principals": [{"id": "mallory", "apiKey": MASTER_TOKEN}]}, "ipcBearerToken": MASTER_TOKEN}
    )
    result = conduit("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 2
    assert "master token" in result.stderr and MASTER_TOKEN not in result.stderr


async def test_a_principals_key_is_not_the_master_token(setup: Setup) -> None:
    """The master may see everything; a principal's key used where the master's is expected gets the principal."""
    async with setup.client(ALICE_KEY) as alice:
        assert "toolbox__env" not in await tool_names(alice)
    async with setup.client(MASTER_TOKEN) as master:
        assert "toolbox__env" in await tool_names(master)


async def test_stdio_acts_as_the_principal_named_on_the_command_line(setup: Setup) -> None:
    params = stdio_client_for(setup.config, env={"STORE_KEY": STORE_KEY, "PATH": "/usr/bin:/bin"})
    params = params.model_copy(update={"args": [*params.args, "--principal", "bob"]})
    async with Client(params) as bob:
        assert await tool_names(bob) == {"toolbox__add", "toolbox__sleep", "remote__whoami"}
    unknown = await anyio.run_process(
        [CONDUIT, "serve", "--stdio", "--config", str(setup.config), "--principal", "nobody"],
        env={"STORE_KEY": STORE_KEY, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert unknown.returncode == 2
    assert b"no principal 'nobody'" in unknown.stderr


async def test_audit_records_name_the_principal(setup: Setup) -> None:
    records = [json.loads(line) for line in setup.server.log.read_text().splitlines() if line.startswith("{")]
    calls = [record for record in records if record.get("logger") == "conduit.audit"]
    assert {record.get("principal") for record in calls} >= {"alice", "bob", "oauth:dora"}


# -- identities: no token can become another caller by naming it ------------------------------------------------------


async def unknown_to(client: Client, execution_id: str) -> bool:
    """Whether ``client`` gets 'none of yours' for both the status and the cancel of ``execution_id``."""
    for tool in (STATUS, CANCEL):
        with pytest.raises(MCPError) as refused:
            await client.call_tool(tool, {"executionId": execution_id})
        if "none of yours has this id" not in refused.value.error.message:
            return False
    return True


async def still_running(client: Client, execution_id: str) -> bool:
    result = await client.call_tool(STATUS, {"executionId": execution_id})
    return result.structured_content is not None and result.structured_content["status"] == "running"


@pytest.mark.parametrize("claim", ["master", "local", "Master", "ｍaster"])
async def test_a_token_whose_claim_names_the_master_or_stdio_caller_is_neither(setup: Setup, claim: str) -> None:
    async with setup.client(MASTER_TOKEN) as master, setup.client(setup.token(sub=claim)) as named:
        run = await start_background(master, sleeping_program(3000))
        assert await unknown_to(named, run)  # before the fix: its stdout, and a cancel that stopped it
        assert await still_running(master, run)
        assert await tool_names(named) == {"toolbox__echo"}  # the scope's policy, not the master's reach
        await master.call_tool(CANCEL, {"executionId": run})


async def test_a_token_whose_claim_names_a_principal_gets_none_of_its_runs_credentials_or_shares(setup: Setup) -> None:
    program = "try { return await tools.remote.whoami({}); } catch (e) { return { code: e.code, message: e.message }; }"
    named = setup.token(sub="alice", groups=["remote"], scope="")
    async with setup.client(ALICE_KEY) as alice, setup.client(named) as impostor:
        run = await start_background(alice, sleeping_program(2000))
        assert await unknown_to(impostor, run)
        failed, outcome = await run_ts(impostor, program)
        assert not failed, outcome
        assert outcome["result"]["code"] == UPSTREAM_ERROR  # no credential of its own; never alice's
        assert "conduit auth --principal oauth:alice --upstream remote" in outcome["result"]["message"]
        assert await still_running(alice, run)
        await alice.call_tool(CANCEL, {"executionId": run})
    async with httpx2.AsyncClient(timeout=10) as http:
        stats = (await http.get(f"{setup.remote}/_stats")).json()
    assert set(stats["tokens"]) <= {ALICE_UPSTREAM_TOKEN, BOB_UPSTREAM_TOKEN}


async def test_a_token_whose_claim_names_a_principal_has_its_own_concurrency_share(setup: Setup) -> None:
    """bob's share is one run; the OAuth caller named bob has a share of one too: not bob's."""
    slow = "await new Promise((r) => setTimeout(r, 1200)); return 'slow';"
    quick = "return Date.now();"
    async with setup.client(BOB_KEY) as bob, setup.client(setup.token(sub="bob", groups=["remote"], scope="")) as named:
        ended: dict[str, float] = {}

        async def run(name: str, client: Client, code: str) -> None:
            failed, outcome = await run_ts(client, code)
            assert not failed, outcome
            ended[name] = time.monotonic()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "bob", bob, slow)
            await anyio.sleep(0.3)  # bob's share is taken
            tg.start_soon(run, "named", named, quick)
    assert ended["named"] < ended["bob"]  # it did not wait for bob's share


async def test_a_token_whose_claim_names_a_principal_has_its_own_rate_limit(setup: Setup) -> None:
    async with setup.client(CAROL_KEY) as carol:
        with pytest.raises(MCPError, match="principal carol"):
            for _ in range(4):  # carol's 3/minute, spent
                await run_ts(carol, "return 1;")
    async with setup.client(setup.token(sub="carol")) as named:
        failed, _ = await run_ts(named, "return 1;")
        assert not failed


@pytest.mark.parametrize(("one", "other"), [("erin", "Erin"), ("jos\u00e9", "jose\u0301"), ("ｅrin", "erin")])
async def test_claims_that_differ_in_case_or_unicode_form_are_different_callers(
    setup: Setup, one: str, other: str
) -> None:
    async with setup.client(setup.token(sub=one)) as first, setup.client(setup.token(sub=other)) as second:
        run = await start_background(first, sleeping_program(2000))
        assert await unknown_to(second, run)
        assert await still_running(first, run)
        await first.call_tool(CANCEL, {"executionId": run})


async def test_the_configured_mapping_makes_a_person_the_principal(setup: Setup) -> None:
    async with setup.client(ALICE_KEY) as alice, setup.client(setup.token(sub=ALICE_AT_IDP)) as mapped:
        run = await start_background(alice, sleeping_program(300))
        with anyio.fail_after(10):
            while await still_running(mapped, run):  # noqa: ASYNC110 - alice's own run, read with her other credential
                await anyio.sleep(0.1)
        assert await tool_names(mapped) == await tool_names(alice)
        failed, outcome = await run_ts(mapped, "return (await tools.remote.whoami({})).structuredContent.credential;")
        assert not failed and outcome["result"] == ALICE_UPSTREAM_TOKEN


async def test_an_oauth_caller_has_credentials_of_its_own_in_the_store(setup: Setup) -> None:
    env = {"PATH": "/usr/bin:/bin", "STORE_KEY": STORE_KEY}
    store = [CONDUIT, "auth", "--upstream", "remote", "--bearer-token", "user-frank-55aa"]
    store += ["--config", str(setup.config)]
    stored = await anyio.run_process([*store, "--principal", "oauth:frank"], env=env, check=False)
    assert stored.returncode == 0, stored.stderr
    for reserved in ("master", "local", "nobody-configured"):
        refused = await anyio.run_process([*store, "--principal", reserved], env=env, check=False)
        assert refused.returncode == 2 and b"no principal" in refused.stderr
    program = "return (await tools.remote.whoami({})).structuredContent.credential;"
    async with setup.client(setup.token(sub="frank", groups=["remote"], scope="")) as frank:
        failed, outcome = await run_ts(frank, program)
        assert not failed, outcome
        assert outcome["result"] == "user-frank-55aa"
