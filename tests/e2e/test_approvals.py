"""Approval of sensitive calls, with the official client's elicitation callback and a real upstream.

tests/servers/ledger.py keeps a ledger of every call it receives: a declined call must not be in it.
Rules: ``ledger.refund`` by name; ``ledger.balance`` for principal ``alice`` only (stdio is ``local``);
every tool annotated ``destructiveHint: true`` (``delete_account``), with a 1 s timeout. A rule guards its
tool whichever path reaches it: a program's call, or the client calling the proxied tool directly.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from conduit.errors import APPROVAL_DECLINED
from conduit.transport.wire import ERROR_CODE_META
from support import ConduitHttp, connected, run_ts, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

LEDGER = str(Path(__file__).parents[1] / "servers" / "ledger.py")
SECRET = "ipc-secret-token-0123456789abcdef"  # a configured secret: never shown to the person
ALICE_KEY = "alice-key-0123456789abcdef"


@dataclass
class Person:
    """The elicitation callback: answers as told, and remembers what it was asked."""

    action: str = "accept"
    approve: bool = True
    delay_s: float = 0.0
    asked: list[types.ElicitRequestFormParams] = field(default_factory=list)

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        self.asked.append(params)
        await anyio.sleep(self.delay_s)
        content = {"approve": self.approve} if self.action == "accept" else None
        return types.ElicitResult(action=self.action, content=content)  # type: ignore[arg-type]


def config_for(directory: Path) -> Path:
    return write_config(
        directory,
        {
            "ipcBearerToken": SECRET,
            "upstreams": [{"id": "ledger", "command": sys.executable, "args": [LEDGER]}],
            "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 0, "max": 1}},
            "auth": {"principals": [{"id": "alice", "apiKey": ALICE_KEY}]},
            "approvals": [
                {"tools": ["ledger.refund"]},
                {"tools": ["ledger.balance"], "principals": ["alice"]},
                {"annotations": {"destructiveHint": True}, "timeoutMs": 1000},
            ],
        },
    )


@pytest.fixture(scope="module")
def person() -> Person:
    return Person()


@pytest.fixture(scope="module", params=["auto", "legacy"])
async def client(
    request: pytest.FixtureRequest, person: Person, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    """``auto``: the 2026-07-28 protocol, asked in rounds (``input_required``); ``legacy``: the initialize
    handshake, asked with an ``elicitation/create`` request on the open connection."""
    config = config_for(tmp_path_factory.mktemp("approvals"))
    async with connected("stdio", config, elicitation_callback=person, mode=request.param) as c:
        yield c


@pytest.fixture(autouse=True)
def reset(person: Person) -> None:
    person.action, person.approve, person.delay_s = "accept", True, 0.0
    person.asked.clear()


CALL = """
try {{
  return {{ ok: await tools.ledger.{tool}({args}) }};
}} catch (e) {{
  return {{ code: e.code, message: e.message }};
}}
"""


async def call(client: Client, tool: str, args: str) -> dict[str, Any]:
    failed, outcome = await run_ts(client, CALL.format(tool=tool, args=args))
    assert not failed, outcome
    return dict(outcome["result"])


async def ledger(client: Client) -> list[dict[str, Any]]:
    result = await client.call_tool("ledger__calls", {})
    return list(result.structured_content["calls"])  # type: ignore[index]


async def test_an_approved_call_goes_through_and_the_person_saw_it_scrubbed(client: Client, person: Person) -> None:
    args = f'{{ account: "a-1", amount: 5, note: "{SECRET} / Authorization: Bearer abcdefghijklmnop1234" }}'
    answer = await call(client, "refund", args)
    assert answer["ok"]["structuredContent"] == {"tool": "refund", "ok": True}
    [asked] = person.asked
    assert "ledger__refund" in asked.message and '"account": "a-1"' in asked.message
    assert '"amount": 5' in asked.message
    assert SECRET not in asked.message and "abcdefghijklmnop1234" not in asked.message
    assert "[REDACTED]" in asked.message
    assert asked.requested_schema["properties"]["approve"]["type"] == "boolean"
    assert (await ledger(client))[-1] == {
        "tool": "refund",
        "arguments": {"account": "a-1", "amount": 5, "note": f"{SECRET} / Authorization: Bearer abcdefghijklmnop1234"},
    }


@pytest.mark.parametrize(
    ("action", "approve", "why"),
    [
        ("decline", True, "the person declined it"),
        ("accept", False, "the person declined it"),  # the form answered, but not with approval
        ("cancel", True, "the person cancelled the approval request"),
    ],
)
async def test_a_declined_call_throws_32015_and_never_reaches_the_upstream(
    client: Client, person: Person, action: str, approve: bool, why: str
) -> None:
    person.action, person.approve = action, approve
    before = await ledger(client)
    answer = await call(client, "refund", '{ account: "a-2", amount: 900 }')
    assert answer == {"code": -32015, "message": f"the call of 'ledger__refund' was not approved: {why}"}
    assert len(person.asked) == 1
    assert await ledger(client) == before  # the upstream never saw it


async def test_a_call_no_rule_covers_is_never_asked_about(client: Client, person: Person) -> None:
    answer = await call(client, "balance", '{ account: "a-3" }')  # its rule is alice's, not local's
    assert answer["ok"]["structuredContent"] == {"tool": "balance", "ok": True}
    assert person.asked == []


async def test_a_rule_on_annotations_covers_every_destructive_tool(client: Client, person: Person) -> None:
    answer = await call(client, "delete_account", '{ account: "a-4" }')
    assert answer["ok"]["structuredContent"] == {"tool": "delete_account", "ok": True}
    assert len(person.asked) == 1 and "ledger__delete_account" in person.asked[0].message


async def test_no_answer_in_time_declines_and_the_program_goes_on(client: Client, person: Person) -> None:
    person.delay_s = 3.0
    before = await ledger(client)
    program = """
const started = Date.now();
try { await tools.ledger.delete_account({ account: "a-5" }); return "sent"; }
catch (e) {
  const then = await tools.ledger.balance({ account: "a-5" });
  return { code: e.code, message: e.message, waitedMs: Date.now() - started, then };
}
"""
    failed, outcome = await run_ts(client, program)
    assert not failed, outcome
    answer = outcome["result"]
    assert (answer["code"], answer["message"]) == (
        -32015,
        "the call of 'ledger__delete_account' was not approved: no answer within 1 s",
    )
    assert 900 <= answer["waitedMs"] < 2500  # declined at the rule's timeout, not when the person answered
    assert answer["then"]["structuredContent"] == {"tool": "balance", "ok": True}  # the program went on
    assert await ledger(client) == [*before, {"tool": "balance", "arguments": {"account": "a-5"}}]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_client_that_cannot_be_asked_gets_32015_at_once(tmp_path: Path, mode: str) -> None:
    async with connected("stdio", config_for(tmp_path), mode=mode) as plain:  # no elicitation callback
        started = time.monotonic()
        answer = await call(plain, "refund", '{ account: "a-6", amount: 1 }')
        assert time.monotonic() - started < 10  # not the rule's 120 s: nobody is waited for
        assert answer["code"] == -32015
        assert "this client cannot be asked (no elicitation)" in answer["message"]
        assert await ledger(plain) == []


async def test_every_request_and_decision_is_an_audit_record_over_http(tmp_path: Path) -> None:
    person = Person()
    config = config_for(tmp_path)
    async with ConduitHttp.start(config, token=SECRET) as server, server.client(elicitation_callback=person) as http:
        assert (await call(http, "refund", '{ account: "b-1", amount: 2 }'))["ok"]
        person.action = "decline"
        assert (await call(http, "delete_account", '{ account: "b-2" }'))["code"] == -32015
        with anyio.fail_after(5):
            while True:
                lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
                records = [r for r in lines if r.get("message") == "approval"]
                if len(records) >= 2:
                    break
                await anyio.sleep(0.05)
    decisions = [(r["tool"], r["decision"], r["decided_by"], r["principal"]) for r in records]
    assert decisions == [  # the master token's caller; the person answering is its client's
        ("ledger__refund", "approved", "master", "master"),
        ("ledger__delete_account", "declined", "master", "master"),
    ]
    assert all(r["logger"] == "conduit.audit" and r["execution_id"] for r in records)
    requested = [(r["tool"], r["decision"]) for r in lines if r.get("message") == "approval requested"]
    assert requested == [("ledger__refund", "asked"), ("ledger__delete_account", "asked")]  # each request, too
    assert all(SECRET not in json.dumps(r) for r in records)


async def test_a_background_runs_approval_is_asked_when_its_status_is_read(client: Client, person: Person) -> None:
    started = await client.call_tool(
        "conduit__mcp_execute_typescript",
        {"code": 'return await tools.ledger.refund({ account: "c-1", amount: 3 });', "background": True},
    )
    execution_id = started.structured_content["executionId"]  # type: ignore[index]
    with anyio.fail_after(10):
        while True:  # each status read asks about what the run waits for, as the execution call would have
            result = await client.call_tool("conduit__mcp_execution_status", {"executionId": execution_id})
            answer = result.structured_content
            assert answer is not None
            if answer["status"] != "running":
                break
            await anyio.sleep(0.1)
    assert answer["status"] == "done" and answer["result"]["structuredContent"] == {"tool": "refund", "ok": True}
    assert len(person.asked) == 1 and "ledger__refund" in person.asked[0].message


def declined(result: types.CallToolResult) -> str:
    """The text of a direct call refused as not approved (-32015 in its ``_meta``)."""
    assert result.is_error and (result.meta or {}).get(ERROR_CODE_META) == APPROVAL_DECLINED, result
    [content] = result.content
    assert isinstance(content, types.TextContent)
    return content.text


async def test_a_direct_call_a_rule_covers_waits_for_the_persons_approval(client: Client, person: Person) -> None:
    before = await ledger(client)
    result = await client.call_tool("ledger__refund", {"account": "d-1", "amount": 7})
    assert not result.is_error and result.structured_content == {"tool": "refund", "ok": True}
    [asked] = person.asked
    assert "ledger__refund" in asked.message and '"amount": 7' in asked.message
    assert await ledger(client) == [*before, {"tool": "refund", "arguments": {"account": "d-1", "amount": 7}}]


@pytest.mark.parametrize(("action", "why"), [("decline", "the person declined it"), ("cancel", "the person cancelled")])
async def test_a_declined_direct_call_is_a_32015_tool_error_and_never_reaches_the_upstream(
    client: Client, person: Person, action: str, why: str
) -> None:
    person.action = action
    before = await ledger(client)
    result = await client.call_tool("ledger__refund", {"account": "d-2", "amount": 900})
    assert declined(result).startswith(f"the call of 'ledger__refund' was not approved: {why}")
    assert len(person.asked) == 1
    assert await ledger(client) == before


async def test_a_direct_call_nobody_answers_is_declined_at_the_rules_timeout(client: Client, person: Person) -> None:
    person.delay_s = 3.0
    before = await ledger(client)
    result = await client.call_tool("ledger__delete_account", {"account": "d-3"})
    assert declined(result) == "the call of 'ledger__delete_account' was not approved: no answer within 1 s"
    assert await ledger(client) == before


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_direct_call_from_a_client_that_cannot_be_asked_gets_32015_at_once(tmp_path: Path, mode: str) -> None:
    async with connected("stdio", config_for(tmp_path), mode=mode) as plain:  # no elicitation callback
        result = await plain.call_tool("ledger__refund", {"account": "d-4", "amount": 1})
        assert "this client cannot be asked (no elicitation)" in declined(result)
        assert (await plain.call_tool("ledger__balance", {"account": "d-4"})).structured_content == {
            "tool": "balance",
            "ok": True,
        }  # no rule covers local's balance: called at once
        assert await ledger(plain) == [{"tool": "balance", "arguments": {"account": "d-4"}}]


async def test_direct_calls_of_the_master_and_of_a_principal_wait_for_approval_over_http(tmp_path: Path) -> None:
    person = Person(action="decline")
    async with (
        ConduitHttp.start(config_for(tmp_path), token=SECRET) as server,
        server.client(elicitation_callback=person) as master,
        server.client(ALICE_KEY, elicitation_callback=person) as alice,
    ):
        assert "not approved" in declined(await master.call_tool("ledger__refund", {"account": "e-1", "amount": 1}))
        assert "not approved" in declined(await alice.call_tool("ledger__balance", {"account": "e-2"}))
        assert not (await master.call_tool("ledger__balance", {"account": "e-3"})).is_error  # alice's rule only
        person.action = "accept"
        approved = await alice.call_tool("ledger__refund", {"account": "e-4", "amount": 2})
        assert approved.structured_content == {"tool": "refund", "ok": True}
        assert [call["arguments"]["account"] for call in await ledger(master)] == ["e-3", "e-4"]
    assert [asked.message.split(" wants")[0] for asked in person.asked] == ["'master'", "'alice'", "'alice'"]
