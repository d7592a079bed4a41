"""The sandbox bridge, attacked the way a hostile program (or a local process) would.

These tests run the gateway in-process so they know the bridge's address, and talk to it
over real loopback TCP. A program steals its own session token by patching
``TextEncoder.prototype.encode`` (which the harness uses to frame its requests) and then
speaks raw JSON-RPC to the bridge: the host must still enforce everything.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from conduit.core.gateway import Gateway
from conduit.errors import FORBIDDEN, INVALID_REQUEST, PARSE_ERROR, UNAUTHORIZED
from conduit.security.allowlist import Allowlist
from support import MASTER, TOOLBOX

pytestmark = [pytest.mark.anyio, pytest.mark.deno]


class BridgeConnection:
    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.next_id = 1

    async def send_raw(self, data: bytes) -> dict[str, Any]:
        await self.stream.send(data)
        with anyio.fail_after(30):
            return json.loads(await self.reader.receive_until(b"\n", 1 << 24))

    async def request(self, method: str, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        if token is not None:
            message["auth"] = {"bearerToken": token}
        self.next_id += 1
        return await self.send_raw(json.dumps(message).encode() + b"\n")


@pytest.fixture
async def bridge(gateway: Gateway) -> AsyncIterator[BridgeConnection]:
    assert gateway.bridge.address is not None
    async with await anyio.connect_tcp(gateway.bridge.address.host, gateway.bridge.address.port) as stream:
        yield BridgeConnection(stream)


async def test_request_without_token_is_unauthorized(bridge: BridgeConnection) -> None:
    response = await bridge.request("mcp_discover_tools", {}, None)
    assert response["error"]["code"] == UNAUTHORIZED


async def test_wrong_token_is_unauthorized(bridge: BridgeConnection) -> None:
    response = await bridge.request("mcp_discover_tools", {}, MASTER[:-1] + "x")
    assert response["error"]["code"] == UNAUTHORIZED


async def test_invalid_json_gets_a_parse_error_and_the_connection_keeps_working(bridge: BridgeConnection) -> None:
    assert (await bridge.send_raw(b"{not json\n"))["error"]["code"] == PARSE_ERROR
    assert (await bridge.send_raw(b'{"id": 1, "method": 3}\n'))["error"]["code"] == INVALID_REQUEST
    assert (await bridge.send_raw(b"[1, 2]\n"))["error"]["code"] == INVALID_REQUEST
    response = await bridge.request("mcp_discover_tools", {}, MASTER)
    assert "toolbox__echo" in [tool["name"] for tool in response["result"]]


async def test_master_token_can_execute_and_register_upstreams(bridge: BridgeConnection) -> None:
    response = await bridge.request("mcp_execute_typescript", {"code": "return 1 + 1"}, MASTER)
    assert response["result"]["result"] == 2
    upstream = {"id": "late", "command": sys.executable, "args": [TOOLBOX]}
    assert (await bridge.request("mcp_register_upstream", {"upstream": upstream}, MASTER))["result"] == {"id": "late"}
    called = await bridge.request("mcp_call_tool", {"name": "late__echo", "arguments": {"text": "hi"}}, MASTER)
    assert called["result"]["content"][0]["text"] == "hi"
    again = await bridge.request("mcp_register_upstream", {"upstream": upstream}, MASTER)
    assert "already registered" in again["error"]["message"]


async def test_session_token_is_scoped_and_dies_with_its_session(gateway: Gateway, bridge: BridgeConnection) -> None:
    with gateway.sessions.session("exec-1", Allowlist.parse(["toolbox.echo"])) as session:
        token = session.token
        listed = await bridge.request("mcp_discover_tools", {}, token)
        assert [tool["name"] for tool in listed["result"]] == ["toolbox__echo"]
        allowed = await bridge.request("mcp_call_tool", {"name": "toolbox__echo", "arguments": {"text": "a"}}, token)
        assert allowed["result"]["content"][0]["text"] == "a"
        denied = await bridge.request("mcp_call_tool", {"name": "toolbox__add", "arguments": {"a": 1}}, token)
        assert denied["error"]["code"] == FORBIDDEN
        for method in ("mcp_execute_typescript", "mcp_register_upstream", "mcp_unknown"):
            refused = await bridge.request(method, {"code": "return 1"}, token)
            assert refused["error"]["code"] == FORBIDDEN, method
    after = await bridge.request("mcp_discover_tools", {}, token)
    assert after["error"]["code"] == UNAUTHORIZED


async def test_denied_tool_is_refused_before_it_is_looked_up(gateway: Gateway, bridge: BridgeConnection) -> None:
    # A tool that does not exist and is not allowed: the answer must not reveal whether it exists.
    with gateway.sessions.session("exec-2", Allowlist.parse(["toolbox.echo"])) as session:
        response = await bridge.request("mcp_call_tool", {"name": "secret__thing", "arguments": {}}, session.token)
    assert response["error"]["code"] == FORBIDDEN


STEAL_TOKEN = """
let stolen = null;
// The harness took its encoder before the program ran; what it cannot take is the connection's class:
// intercept the bytes the SDK's request writes on its bridge connection.
const conn = await Deno.connect({ hostname: "127.0.0.1", port: PORT });
let owner = Object.getPrototypeOf(conn);
while (!Object.hasOwn(owner, "write")) owner = Object.getPrototypeOf(owner);
const original = owner.write;
owner.write = function (bytes) {
  const text = new TextDecoder().decode(bytes);
  if (text.includes('"bearerToken"')) stolen = JSON.parse(text).auth.bearerToken;
  return original.call(this, bytes);
};
await tools.toolbox.echo({ text: "prime" });
owner.write = original;

const reader = conn.readable.getReader();
let buffered = "";
async function ask(method, params) {
  await conn.write(new TextEncoder().encode(JSON.stringify({ jsonrpc: "2.0", id: 1, method, params,
    auth: { bearerToken: stolen } }) + "\\n"));
  while (!buffered.includes("\\n")) buffered += new TextDecoder().decode((await reader.read()).value);
  const line = buffered.slice(0, buffered.indexOf("\\n"));
  buffered = buffered.slice(buffered.indexOf("\\n") + 1);
  return JSON.parse(line);
}
const forbiddenTool = await ask("mcp_call_tool", { name: "toolbox__add", arguments: { a: 1, b: 2 } });
const execute = await ask("mcp_execute_typescript", { code: "return 1" });
const register = await ask("mcp_register_upstream", { upstream: { id: "evil", command: "/bin/sh" } });
const discover = await ask("mcp_discover_tools", {});
return { stolen, forbiddenTool, execute, register, discover: discover.result.map((t) => t.name) };
"""


async def test_program_that_steals_its_session_token_gains_nothing(gateway: Gateway, bridge: BridgeConnection) -> None:
    assert gateway.bridge.address is not None
    code = STEAL_TOKEN.replace("PORT", str(gateway.bridge.address.port))
    outcome = await gateway.execute("typescript", code, allowed_tools=["toolbox.echo"])
    assert outcome.error is None, outcome.stderr
    result = outcome.result
    assert isinstance(result["stolen"], str) and len(result["stolen"]) >= 40
    assert result["forbiddenTool"]["error"]["code"] == FORBIDDEN
    assert result["execute"]["error"]["code"] == FORBIDDEN
    assert result["register"]["error"]["code"] == FORBIDDEN
    assert result["discover"] == ["toolbox__echo"]
    assert "evil" not in gateway.registry.connections
    # The execution is over: its token is dead.
    replay = await bridge.request("mcp_discover_tools", {}, result["stolen"])
    assert replay["error"]["code"] == UNAUTHORIZED
    assert gateway.sessions.active == 0


async def test_sdk_and_raw_calls_outside_the_allowlist_throw_forbidden(gateway: Gateway) -> None:
    code = """
    const codes = [];
    for (const call of [() => tools.$raw("toolbox__add", {a: 1, b: 2}), () => tools.$raw("toolbox.add", {a: 1}),
                        () => tools.$raw("nothere__tool", {})]) {
      try { await call(); codes.push("called"); } catch (e) { codes.push(e.code); }
    }
    return [codes, Object.keys(tools.toolbox)];
    """
    outcome = await gateway.execute("typescript", code, allowed_tools=["toolbox.echo"])
    assert outcome.result == [[FORBIDDEN, FORBIDDEN, FORBIDDEN], ["echo"]]


async def test_unknown_tool_inside_the_allowlist_throws_unknown_tool(gateway: Gateway) -> None:
    code = 'try { await tools.$raw("toolbox__nope", {}); } catch (e) { return [e.code, e.message]; }'
    outcome = await gateway.execute("typescript", code, allowed_tools=["*"])
    assert outcome.result[0] == -32004
    assert "no tool 'nope'" in outcome.result[1]


async def test_empty_allowlist_denies_everything(gateway: Gateway) -> None:
    code = (
        "try { await tools.$raw('toolbox__echo', {text: 'x'}); }"
        " catch (e) { return [e.code, await discoverMCPTools(), Object.keys(tools)]; }"
    )
    outcome = await gateway.execute("typescript", code, allowed_tools=[])
    assert outcome.result == [FORBIDDEN, [], ["$raw"]]
