"""Personal values stay out of the model, through a real Conduit over HTTP with a real upstream holding them.

Every byte each client receives (results, progress notifications, errors, elicitation requests) is recorded
at its HTTP transport and scanned for the upstream's real values; the upstream records exactly what it
received, in a file the test reads without going through Conduit.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from servers.crm import CUSTOMERS
from support import (
    EXECUTE_ISOLATE,
    EXECUTE_PYTHON,
    EXECUTE_TS,
    STATUS,
    ConduitHttp,
    connected,
    run_code,
    start_background,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

CRM = str(Path(__file__).parent.parent / "servers" / "crm.py")
MASTER = "master-token-for-privacy-0123"
KEYS = {name: f"{name}-key-for-privacy-0123456789" for name in ("alice", "bob", "carol", "dave")}
REAL = sorted(
    {str(customer[key]) for customer in CUSTOMERS for key in ("email", "phone", "card", "iban")}, key=len, reverse=True
)
"""Every personal value the upstream holds."""
TOKEN = re.compile(r"\[(EMAIL|PHONE|CREDIT_CARD|IBAN|CUSTOMER_ID)_\d+\]")
ANN = CUSTOMERS[0]


class Recording(httpx2.AsyncBaseTransport):
    """An HTTP transport that keeps every byte of every response body it receives."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.received = bytearray()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        received = self.received

        class Tee(httpx2.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in response.stream:  # type: ignore[union-attr]
                    received.extend(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await response.aclose()

        return httpx2.Response(
            response.status_code, headers=response.headers, stream=Tee(), extensions=response.extensions
        )

    async def aclose(self) -> None:
        await self.inner.aclose()

    def leaked(self) -> list[str]:
        """The real values found in what was received (as sent, and as JSON would escape them)."""
        text = self.received.decode("utf-8", "replace")
        return [value for value in REAL if value in text or json.dumps(value)[1:-1] in text]


@dataclass
class Person:
    """The elicitation callback: approves, and remembers what it was shown."""

    asked: list[str] = field(default_factory=list)

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        self.asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": True})


@dataclass
class Setup:
    server: ConduitHttp
    crm_log: Path

    @asynccontextmanager
    async def client(self, name: str, **options: Any) -> AsyncIterator[tuple[Client, Recording]]:
        recording = Recording()
        headers = {"Authorization": f"Bearer {KEYS[name]}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60, transport=recording) as http:
            async with Client(streamable_http_client(self.server.url, http_client=http), **options) as client:
                yield client, recording

    def received(self) -> list[dict[str, Any]]:
        """What the upstream received, read from its own record (not through Conduit)."""
        if not self.crm_log.exists():
            return []
        return [json.loads(line) for line in self.crm_log.read_text().splitlines()]

    def counted(self, principal: str) -> list[dict[str, Any]]:
        """``principal``'s execution audit records that count tokens, oldest first."""
        lines = [json.loads(line) for line in self.server.log.read_text().splitlines() if line.startswith("{")]
        return [
            line
            for line in lines
            if line.get("logger") == "conduit.audit"
            and line.get("message") == "execution"
            and line.get("principal") == principal
            and "privacy" in line
        ]


@pytest.fixture(scope="module")
async def setup(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    directory = tmp_path_factory.mktemp("privacy")
    crm_log = directory / "crm-received.jsonl"
    config = write_config(
        directory,
        {
            "codeModeOnly": False,
            "upstreams": [{"id": "crm", "command": sys.executable, "args": [CRM], "env": {"CRM_LOG": str(crm_log)}}],
            "resourceLimits": {"timeoutMs": 20_000},
            "privacy": {
                "tokenize": ["email", "phone", "credit_card", "iban", {"name": "customer_id", "pattern": r"C-\d{4}"}],
                "principals": ["alice", "bob", "dave"],
                "exempt": ["crm.note"],
            },
            "approvals": [{"tools": ["crm.charge_card"], "principals": ["dave"]}],
            "auth": {"principals": [{"id": name, "apiKey": key} for name, key in KEYS.items()]},
            "workspace": {"enabled": False},
            "skills": {"enabled": False},
            "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 0, "max": 1}},
        },
    )
    async with ConduitHttp.start(config, token=MASTER) as server:
        yield Setup(server, crm_log)


READ_PRINT_RETURN = {
    "ts": "const r = await tools.crm.customers({});\n"
    "for (const c of r.structuredContent.customers) console.log(JSON.stringify(c));\n"
    "console.error(r.content[0].text);\nreturn r.structuredContent.customers;",
    "js": "const r = await tools.crm.customers({});\n"
    "for (const c of r.structuredContent.customers) console.log(JSON.stringify(c));\n"
    "console.error(r.content[0].text);\nreturn r.structuredContent.customers;",
    "monty": "r = await tools.crm.customers()\nfor c in r['structuredContent']['customers']:\n    print(c)\n"
    "r['structuredContent']['customers']",
    "pyodide": "import sys\nr = await tools.crm.customers()\nfor c in r['structuredContent']['customers']:\n"
    "    print(c)\nprint(r['content'][0]['text'], file=sys.stderr)\nr['structuredContent']['customers']",
}
TOOL = {"ts": EXECUTE_TS, "js": EXECUTE_ISOLATE, "monty": EXECUTE_PYTHON, "pyodide": EXECUTE_PYTHON}
SEND = {
    "ts": "return await tools.crm.send_email({ to: {TOKEN}, subject: 'hello', body: 'to ' + {TOKEN} });",
    "js": "return await tools.crm.send_email({ to: {TOKEN}, subject: 'hello', body: 'to ' + {TOKEN} });",
    "monty": "await tools.crm.send_email(to={TOKEN}, subject='hello', body='to ' + {TOKEN})",
    "pyodide": "await tools.crm.send_email(to={TOKEN}, subject='hello', body='to ' + {TOKEN})",
}
ANN_TOKENS: dict[str, str] = {}
"""Ann's tokens as alice first saw them: every later run (any runtime) must show the same ones."""


async def execute(client: Client, language: str, code: str, **arguments: Any) -> dict[str, Any]:
    if language in ("monty", "pyodide"):
        arguments["engine"] = language
    is_error, result = await run_code(client, TOOL[language], code, **arguments)
    assert not is_error, result
    return result


@pytest.mark.parametrize("language", ["ts", "js", "monty", "pyodide"])
async def test_a_program_reads_records_and_the_model_sees_only_tokens_then_sends_to_one(
    setup: Setup, language: str
) -> None:
    async with setup.client("alice") as (client, recording):
        result = await execute(client, language, READ_PRINT_RETURN[language])
        returned = result["result"]
        assert [record["name"] for record in returned] == [c["name"] for c in CUSTOMERS]  # what is not personal stays
        ann = returned[0]
        for key in ("email", "phone", "card", "iban", "id"):
            assert TOKEN.fullmatch(ann[key]), (key, ann[key])
        tokens = {key: ann[key] for key in ("email", "phone", "card", "iban", "id")}
        assert ANN_TOKENS.setdefault("alice", json.dumps(tokens)) == json.dumps(tokens)  # same value, same token
        assert ann["email"] in result["stdout"] and ann["card"] in result["stdout"]
        if language != "monty":
            assert ann["email"] in result["stderr"]
        assert len({record["email"] for record in returned}) == 3  # values stay apart: three addresses, three tokens

        before = len(setup.received())
        sent = await execute(client, language, SEND[language].replace("{TOKEN}", json.dumps(ann["email"])))
        assert sent["result"]["structuredContent"]["echo"]["to"] == ann["email"]  # the echoed value, tokenised again
        assert recording.leaked() == []  # every byte alice's client got
    arrived = setup.received()[before:]
    assert arrived == [
        {"tool": "send_email", "arguments": {"to": ANN["email"], "subject": "hello", "body": f"to {ANN['email']}"}}
    ]


async def test_one_value_one_token_in_stdout_result_and_a_later_proxied_call(setup: Setup) -> None:
    before = len(setup.received())
    async with setup.client("alice") as (client, recording):
        code = "const r = await tools.crm.customers({});\nconst ann = r.structuredContent.customers[0];\n"
        code += "console.log(`mail ${ann.email}`);\nreturn ann.email;"
        result = await execute(client, "ts", code)
        token = result["result"]
        assert TOKEN.fullmatch(token) and result["stdout"] == f"mail {token}\n"
        direct = await client.call_tool("crm__customer", {"email": token})  # the token restored on the way in
        assert not direct.is_error, direct
        record = direct.structured_content["customers"][0]  # type: ignore[index]
        assert record["email"] == token and record["name"] == "Ann Lee"
        assert token in direct.content[0].text  # type: ignore[union-attr]
        assert recording.leaked() == []
    assert len(setup.received()) == before  # the direct call read a record: the upstream recorded nothing


async def test_another_principals_token_restores_nothing(setup: Setup) -> None:
    async with setup.client("alice") as (alice, _):
        token = (
            await execute(alice, "ts", "return (await tools.crm.customers({})).structuredContent.customers[1].email;")
        )["result"]
    forged = "[EMAIL_1]"  # alice's numbering; bob has issued no token at all
    async with setup.client("bob") as (bob, recording):
        before = len(setup.received())
        code = f"return await tools.crm.send_email({{ to: {json.dumps(token)}, body: {json.dumps(forged)} }});"
        result = await execute(bob, "ts", code)
        assert result["result"]["structuredContent"]["echo"] == {"to": token, "body": forged}
        assert recording.leaked() == []
    assert setup.received()[before:] == [{"tool": "send_email", "arguments": {"to": token, "body": forged}}]
    await wait_until(lambda: bool(setup.counted("bob")))
    record = setup.counted("bob")[-1]
    assert record["privacy"]["restored"] == {} and record["privacy"]["unrestored"] == len({token, forged})


async def test_a_value_split_across_output_chunks_and_progress_lines_is_still_tokenised(setup: Setup) -> None:
    code = (
        "import sys, asyncio\n"
        f"sys.stdout.write({ANN['email'][:7]!r}); sys.stdout.flush()\n"
        "await asyncio.sleep(0.4)\n"
        f"sys.stdout.write({ANN['email'][7:]!r} + ' paid with ' + {ANN['card'][:9]!r}); sys.stdout.flush()\n"
        "await asyncio.sleep(0.4)\n"
        f"print({ANN['card'][9:]!r})\n"
        "print('order 4111 1111 1111 1112 ships')\n"
    )
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with setup.client("alice") as (client, recording):
        result = await client.call_tool(
            EXECUTE_PYTHON, {"code": code, "engine": "pyodide"}, progress_callback=on_progress
        )
        assert not result.is_error, result
        stdout = result.structured_content["stdout"]  # type: ignore[index]
        assert recording.leaked() == []
        assert ANN["email"][:7] not in recording.received.decode()
    tokens = json.loads(ANN_TOKENS.get("alice", "{}")) or None
    first, second = stdout.splitlines()
    assert TOKEN.fullmatch(first.split(" paid with ")[0]) and TOKEN.fullmatch(first.split(" paid with ")[1])
    if tokens is not None:
        assert first == f"{tokens['email']} paid with {tokens['card']}"
    assert second == "order 4111 1111 1111 1112 ships"  # fails Luhn: not a card, left alone
    assert progress == [first, second]


async def test_a_direct_calls_result_and_failure_are_tokenised_and_exempt_tools_keep_tokens(setup: Setup) -> None:
    async with setup.client("alice") as (client, recording):
        listing = await client.call_tool("crm__customers", {})
        assert not listing.is_error
        assert TOKEN.search(listing.content[0].text)  # type: ignore[union-attr]
        token = listing.structured_content["customers"][0]["email"]  # type: ignore[index]
        before = len(setup.received())
        noted = await client.call_tool("crm__note", {"text": f"call {token}"})
        assert noted.structured_content["echo"] == {"text": f"call {token}"}  # type: ignore[index]
        assert recording.leaked() == []
    assert setup.received()[before:] == [{"tool": "note", "arguments": {"text": f"call {token}"}}]  # exempt


async def test_a_principal_privacy_does_not_cover_sees_the_values(setup: Setup) -> None:
    async with setup.client("carol") as (client, recording):
        result = await execute(client, "ts", "return (await tools.crm.customers({})).structuredContent.customers[0];")
        assert result["result"]["email"] == ANN["email"]
        assert recording.leaked() != []


async def test_background_status_and_approval_forms_show_tokens(setup: Setup) -> None:
    person = Person()
    async with setup.client("dave", elicitation_callback=person) as (client, recording):
        code = "const c = (await tools.crm.customers({})).structuredContent.customers[2];\n"
        code += "console.log(c.email, c.phone);\nawait new Promise((r) => setTimeout(r, 300));\nreturn c;"
        execution_id = await start_background(client, code)
        with anyio.fail_after(20):
            while True:
                status = (await client.call_tool(STATUS, {"executionId": execution_id})).structured_content
                assert status is not None
                if status["status"] != "running":
                    break
                await anyio.sleep(0.1)
        assert TOKEN.fullmatch(status["result"]["email"]), status
        card = status["result"]["card"]
        before = len(setup.received())
        charge = "const c = (await tools.crm.customers({})).structuredContent.customers[2];\n"
        charge += "await tools.crm.charge_card({ card: c.card, amount: 5 });\n"
        charge += f"return await tools.crm.charge_card({{ card: {json.dumps(card)}, amount: 6 }});"
        await execute(client, "ts", charge)
        assert recording.leaked() == []
    assert len(person.asked) == 2 and all(card in asked for asked in person.asked), person.asked
    assert not any(CUSTOMERS[2]["card"] in asked for asked in person.asked)
    arrived = setup.received()[before:]
    assert [call["arguments"] for call in arrived] == [
        {"card": CUSTOMERS[2]["card"], "amount": 5},  # the program's own value
        {"card": CUSTOMERS[2]["card"], "amount": 6},  # the token, restored after the person approved
    ]


async def test_each_executions_audit_record_counts_what_was_tokenised_and_restored(setup: Setup) -> None:
    async with setup.client("alice") as (client, _):
        ann = await execute(client, "ts", "return (await tools.crm.customers({})).structuredContent.customers[0];")
        token = ann["result"]["email"]
        code = f"await tools.crm.send_email({{ to: {json.dumps(token)}, body: 'x' }});\nreturn 'sent';"
        await execute(client, "ts", code)
    await wait_until(lambda: len(setup.counted("alice")) >= 2)
    records = setup.counted("alice")
    read, sent = records[-2]["privacy"], records[-1]["privacy"]
    assert read["tokenized"] == {"CREDIT_CARD": 1, "CUSTOMER_ID": 1, "EMAIL": 1, "IBAN": 1, "PHONE": 1}
    assert sent == {"tokenized": {}, "restored": {"EMAIL": 1}, "unrestored": 0}
    log = setup.server.log.read_text()
    assert not [value for value in REAL if value in log]  # nor do the logs hold a value


async def test_over_stdio_the_local_caller_gets_tokens_and_its_tokens_restore(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    directory = tmp_path_factory.mktemp("privacy-stdio")
    crm_log = directory / "crm-received.jsonl"
    config = write_config(
        directory,
        {
            "upstreams": [{"id": "crm", "command": sys.executable, "args": [CRM], "env": {"CRM_LOG": str(crm_log)}}],
            "privacy": {"tokenize": ["email", "credit_card"]},
            "workspace": {"enabled": False},
            "skills": {"enabled": False},
            "pools": {"typescript": {"min": 1, "max": 1}, "python": {"min": 0, "max": 0}},
        },
    )
    async with connected("stdio", config) as client:
        read = "const c = (await tools.crm.customers({})).structuredContent.customers[1];\n"
        read += "console.log(c.email);\nreturn c;"
        _, result = await run_code(client, EXECUTE_TS, read)
        token = result["result"]["email"]
        assert TOKEN.fullmatch(token) and result["stdout"] == f"{token}\n"
        assert CUSTOMERS[1]["email"] not in json.dumps(result)
        send = f"return (await tools.crm.send_email({{ to: {json.dumps(token)}, body: 'hi' }})).isError ?? false;"
        _, sent = await run_code(client, EXECUTE_TS, send)
        assert sent["result"] is False, sent
    assert [json.loads(line)["arguments"]["to"] for line in crm_log.read_text().splitlines()] == [CUSTOMERS[1]["email"]]


async def test_a_program_written_to_dodge_the_patterns_is_out_of_scope_as_documented(setup: Setup) -> None:
    """Tokenisation stops accidental exposure, not deliberate exfiltration (docs/PRIVACY.md): a value a program
    encodes is not recognised. The allowlist and approvals are the wall against such a program."""
    async with setup.client("alice") as (client, _):
        code = "const c = (await tools.crm.customers({})).structuredContent.customers[0];\n"
        code += "return { plain: c.email, encoded: btoa(c.email) };"
        result = await execute(client, "ts", code)
    assert TOKEN.fullmatch(result["result"]["plain"])
    assert base64.b64decode(result["result"]["encoded"]).decode() == ANN["email"]
