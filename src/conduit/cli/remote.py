"""``conduit run --url``: send a program to a running Conduit server and stream its output back.

Uses the official MCP client over Streamable HTTP, with a progress token so output lines
arrive as progress notifications while the program runs. The final result carries the
whole output; if the live stream skipped lines (a slow reader), the full output is printed
again after a note.
"""

from __future__ import annotations

import sys
from typing import Any, Final

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conduit.cli.common import report
from conduit.core.languages import BY_NAME

_STDERR_PREFIX: Final = "[stderr] "


def run_remote(
    url: str,
    token: str,
    language: str,
    code: str,
    allowed: list[str] | None,
    limits: dict[str, int] | None,
    engine: str | None = None,
) -> int:
    arguments: dict[str, Any] = {"code": code}
    if engine is not None:
        arguments["engine"] = engine
    if allowed is not None:
        arguments["allowedTools"] = allowed
    if limits is not None:
        arguments["limits"] = limits
    live: dict[str, list[str]] = {"stdout": [], "stderr": []}

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message is None:
            return
        stream, line = (
            ("stderr", message[len(_STDERR_PREFIX) :]) if message.startswith(_STDERR_PREFIX) else ("stdout", message)
        )
        live[stream].append(line)
        target = sys.stderr if stream == "stderr" else sys.stdout
        target.write(line + "\n")
        target.flush()

    async def call() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=None)) as http:
            probe = await http.get(url, headers={"Accept": "text/event-stream"})
            if probe.status_code == 401:
                raise PermissionError("the server refused the token: pass --token or set IPC_BEARER_TOKEN")
            async with Client(streamable_http_client(url, http_client=http)) as client:
                result = await client.call_tool(BY_NAME[language].tool, arguments, progress_callback=on_progress)
        payload = result.structured_content
        if not isinstance(payload, dict):
            raise MCPError(code=-32603, message="the server returned no structured result")
        return payload

    try:
        payload = anyio.run(call)
    except BaseException as exc:
        leaf = innermost(exc)
        if isinstance(leaf, MCPError):
            print(f"conduit: the server refused the program: {leaf}", file=sys.stderr)
            return 2
        if isinstance(leaf, PermissionError):
            print(f"conduit: {leaf}", file=sys.stderr)
            return 1
        if isinstance(leaf, (httpx2.HTTPError, OSError)):
            print(f"conduit: cannot reach {url}: {leaf}", file=sys.stderr)
            return 1
        raise
    for stream in ("stdout", "stderr"):
        full = str(payload.get(stream, ""))
        if "\n".join(live[stream]) != full.removesuffix("\n"):
            print(f"conduit: some live {stream} lines were skipped; the whole {stream} follows", file=sys.stderr)
            (sys.stderr if stream == "stderr" else sys.stdout).write(full)
    return report(payload)


def innermost(exc: BaseException) -> BaseException:
    """The first leaf of nested exception groups (task groups wrap what a client raises)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
