"""Bad input gets a clear error and the server keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from support import CONDUIT, EXECUTE_ISOLATE, EXECUTE_PYTHON, EXECUTE_TS, INITIALIZE, ConduitHttp, run_ts

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({}, "missing required argument 'code'"),
        ({"code": 123}, "code must be a string"),
        ({"code": "return 1", "allowedTools": "toolbox.*"}, "allowedTools must be an array"),
        ({"code": "return 1", "allowedTools": ["git*"]}, "invalid allowlist pattern"),
        ({"code": "return 1", "limits": {"timeoutMs": "soon"}}, "limits.timeoutMs: must be a positive integer"),
        ({"code": "return 1", "limits": {"timeoutMs": -5}}, "limits.timeoutMs: must be a positive integer"),
        ({"code": "return 1", "limits": {"cpu": 1}}, "limits.cpu: unknown limit"),
        ({"code": "return 1", "limits": [1]}, "limits must be an object"),
        ({"code": "return 1", "language": "ts"}, "unknown argument(s): language"),
        ({"code": "x" * 2 * 1024 * 1024}, "the limit is 262144 bytes"),
    ],
)
async def test_invalid_execute_arguments_are_invalid_params(
    conduit: Client, arguments: dict[str, object], fragment: str
) -> None:
    for tool in (EXECUTE_TS, EXECUTE_PYTHON, EXECUTE_ISOLATE):
        with pytest.raises(MCPError) as caught:
            await conduit.call_tool(tool, arguments)
        assert caught.value.error.code == -32602, tool
        assert fragment in caught.value.error.message, tool
    is_error, out = await run_ts(conduit, "return 'still serving';")
    assert (is_error, out["result"]) == (False, "still serving")


async def test_unknown_tool_is_a_protocol_error(conduit: Client) -> None:
    for name in ("nothing__here", "conduit__mcp_execute_cobol", "toolbox__missing", "plainname"):
        with pytest.raises(MCPError) as caught:
            await conduit.call_tool(name, {})
        assert caught.value.error.code == -32602, name


async def test_upstream_that_dies_mid_call_gives_a_clean_error_and_is_restarted(conduit: Client) -> None:
    code = """
    const before = (await tools.toolbox.env({})).structuredContent.pid;
    let error;
    try { await tools.toolbox.crash({}); } catch (e) { error = {code: e.code, message: e.message}; }
    const after = (await tools.toolbox.env({})).structuredContent.pid;
    const echo = (await tools.toolbox.echo({text: "back"})).content[0].text;
    return {error, restarted: before !== after, echo};
    """
    is_error, out = await run_ts(conduit, code)
    assert not is_error, out
    assert out["result"]["error"]["code"] == -32005
    assert out["result"]["error"]["message"] == (
        "upstream 'toolbox' exited with status 3 during 'crash'; its stderr: toolbox: crashing on purpose"
    )
    assert out["result"]["restarted"] is True
    assert out["result"]["echo"] == "back"


async def test_direct_proxied_call_to_dying_upstream_is_an_error_result(conduit: Client) -> None:
    result = await conduit.call_tool("toolbox__crash", {})
    assert result.is_error
    assert result.content[0].text == (  # type: ignore[union-attr]
        "upstream 'toolbox' exited with status 3 during 'crash'; its stderr: toolbox: crashing on purpose"
    )
    again = await conduit.call_tool("toolbox__echo", {"text": "ok"})
    assert again.content[0].text == "ok"  # type: ignore[union-attr]


async def test_upstream_env_holds_only_the_safe_set_and_configured_values(conduit: Client) -> None:
    result = await conduit.call_tool("toolbox__env", {})
    names = set(result.structured_content["names"])  # type: ignore[index]
    assert "IPC_BEARER_TOKEN" not in names
    assert names <= {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM"}


async def test_invalid_json_rpc_on_stdio_gets_an_error_and_the_session_continues(e2e_config: Path) -> None:
    async with await anyio.open_process([CONDUIT, "serve", "--stdio", "--config", str(e2e_config)]) as process:
        assert process.stdin is not None and process.stdout is not None
        from anyio.streams.buffered import BufferedByteReceiveStream

        reader = BufferedByteReceiveStream(process.stdout)

        async def exchange(line: bytes) -> dict[str, object]:
            await process.stdin.send(line + b"\n")  # type: ignore[union-attr]
            with anyio.fail_after(30):
                return json.loads(await reader.receive_until(b"\n", 1 << 20))

        garbage = await exchange(b"{this is not json")
        assert garbage["error"]["code"] == -32700  # type: ignore[index]
        answer = await exchange(json.dumps(INITIALIZE).encode())
        assert answer["result"]["serverInfo"]["name"] == "conduit"  # type: ignore[index]
        await process.stdin.aclose()
        with anyio.fail_after(20):
            await process.wait()


async def test_http_refuses_missing_and_wrong_tokens_and_keeps_serving(e2e_config: Path) -> None:
    async with ConduitHttp.start(e2e_config) as server:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx2.AsyncClient(timeout=30) as http:
            missing = await http.post(server.url, json=body, headers=headers)
            assert missing.status_code == 401
            wrong = await http.post(server.url, json=body, headers={**headers, "Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            basic_auth = {**headers, "Authorization": f"Basic {server.token}"}
            basic = await http.post(server.url, json=body, headers=basic_auth)
            assert basic.status_code == 401
            garbage = await http.post(
                server.url,
                content=b"{not json",
                headers={**headers, "Authorization": f"Bearer {server.token}"},
            )
            assert garbage.status_code == 400
            assert garbage.json()["error"]["code"] == -32700
        with pytest.raises(BaseException):  # noqa: B017 - the SDK surfaces the 401 as an exception group
            async with server.client(token="wrong-token") as client:
                await client.list_tools()
        async with server.client() as client:
            is_error, out = await run_ts(client, "return 'fine';")
            assert (is_error, out["result"]) == (False, "fine")
