"""One request-body ceiling on the HTTP front end, enforced while the body is read.

An attacker with one valid credential sends a body far past ``http.maxBodyBytes`` (declared by its length,
or streamed in chunks), with and without an ``mcp-session-id`` header (the header once made a middleware
read and parse the whole body before the limit applied), or JSON nested too deep for the parser. Each gets
a clear refusal (413, or a JSON-RPC parse error with 400), the server's memory does not grow with the
body, nothing is logged as a crash, and the server goes on serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest

from support import INITIALIZE, ConduitHttp, run_ts, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

HUGE = 50 * 1024 * 1024
CHUNK = 256 * 1024
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def post_huge(url: str, headers: dict[str, str], *, chunked: bool) -> int:
    """POST a 50 MB JSON-ish body over a raw socket, reading the answer while sending; its status code.

    The body is sent for real (a server that buffers it all before answering gets all of it); sending
    stops once the answer has come, and a connection the server closes under the upload is expected.
    """
    parts = urlsplit(url)
    stream = await anyio.connect_tcp(parts.hostname or "127.0.0.1", parts.port or 80)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}"
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}{framing}\r\n\r\n".encode()
    answer = bytearray()
    answered = anyio.Event()

    async def read() -> None:
        try:
            while b"\r\n" not in answer:
                answer.extend(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
        answered.set()

    async def write() -> None:
        chunk = b'{"jsonrpc": "2.0", "method": "tools/list", "id": 1, "pad": "' + b"x" * CHUNK
        try:
            await stream.send(request)
            sent = 0
            while sent < HUGE and not answered.is_set():
                piece = chunk[: HUGE - sent]
                await stream.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked and not answered.is_set():
                await stream.send(b"0\r\n\r\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            tg.start_soon(write)
            await answered.wait()
            tg.cancel_scope.cancel()
    await stream.aclose()
    status_line = bytes(answer).split(b"\r\n", 1)[0].decode("latin-1")
    assert status_line.startswith("HTTP/1.1 "), f"no answer: {bytes(answer[:200])!r}"
    return int(status_line.split()[1])


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory, anyio_backend: str) -> ConduitHttp:
    config = write_config(tmp_path_factory.mktemp("bodies"), {"upstreams": []})
    async with ConduitHttp.start(config) as running:
        yield running  # type: ignore[misc]


async def open_session(server: ConduitHttp) -> dict[str, str]:
    """Headers of a real, initialised MCP session of the master's."""
    headers = {**HEADERS, "Authorization": f"Bearer {server.token}"}
    async with httpx2.AsyncClient(timeout=30) as http:
        answer = await http.post(server.url, json=INITIALIZE, headers=headers)
        assert answer.status_code == 200, answer.text
        session = answer.headers.get("mcp-session-id")
    return {**headers, "mcp-session-id": session} if session else headers


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("with_session", [False, True], ids=["no-session", "session"])
async def test_a_body_past_the_ceiling_is_refused_before_it_is_buffered(
    server: ConduitHttp, chunked: bool, with_session: bool
) -> None:
    headers = await open_session(server) if with_session else {**HEADERS, "Authorization": f"Bearer {server.token}"}
    before = rss_bytes(server.process.pid)
    status = await post_huge(server.url, headers, chunked=chunked)
    grown = rss_bytes(server.process.pid) - before
    assert status == 413
    assert grown < 10 * 1024 * 1024, f"the server's memory grew by {grown >> 20} MB for a refused body"
    async with server.client() as client:
        failed, outcome = await run_ts(client, "return 'still serving';")
    assert (failed, outcome["result"]) == (False, "still serving")


async def test_an_unauthenticated_huge_body_is_refused_too(server: ConduitHttp) -> None:
    before = rss_bytes(server.process.pid)
    status = await post_huge(server.url, {**HEADERS, "mcp-session-id": "made-up"}, chunked=True)
    assert status in (401, 413)
    assert rss_bytes(server.process.pid) - before < 10 * 1024 * 1024


@pytest.mark.parametrize("with_session", [False, True], ids=["no-session", "session"])
async def test_json_nested_too_deep_is_a_parse_error(server: ConduitHttp, with_session: bool) -> None:
    headers = await open_session(server) if with_session else {**HEADERS, "Authorization": f"Bearer {server.token}"}
    for body in (b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000):
        async with httpx2.AsyncClient(timeout=30) as http:
            answer = await http.post(server.url, content=body, headers=headers)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == -32700
    assert "Traceback" not in server.log.read_text()
    assert "RecursionError" not in server.log.read_text()
    async with server.client() as client:
        failed, outcome = await run_ts(client, "return 'still serving';")
    assert (failed, outcome["result"]) == (False, "still serving")


async def test_the_ceiling_is_configurable_and_guards_the_ops_port_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"upstreams": [], "http": {"maxBodyBytes": 65536}, "maxCodeBytes": 32768})
    async with ConduitHttp.start(config) as small:
        headers = {**HEADERS, "Authorization": f"Bearer {small.token}"}
        padded = {**INITIALIZE, "params": {**INITIALIZE["params"], "pad": "x" * 70_000}}  # type: ignore[dict-item]
        async with httpx2.AsyncClient(timeout=30) as http:
            refused = await http.post(small.url, content=json.dumps(padded), headers=headers)
            assert refused.status_code == 413
            fits = await http.post(small.url, json=INITIALIZE, headers=headers)
            assert fits.status_code == 200
            assert small.ops_url is not None
            ops = await http.post(small.ops_url + "/metrics", content=b"x" * 70_000)
            assert ops.status_code == 413
