"""One upstream MCP server: a lazily opened, self-healing client connection.

The official ``mcp`` client is an async context manager, so each connection lives in a task
of the gateway's task group: that task enters the client, publishes it, and holds it open
until asked to close or until the transport dies. Callers only ever see :meth:`list_tools`
and :meth:`call_tool`; the first caller opens the connection (concurrent first callers share
one attempt), and a call that finds the upstream dead makes the next caller start it again.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
import mcp_types as types
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client, StdioServerParameters
from mcp.client._transport import Transport
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError
from mcp.shared.exceptions import MCPError

from conduit.cluster.store import SharedStore
from conduit.config.schema import Credentials, UpstreamConfig
from conduit.errors import UPSTREAM_TIMEOUT, UpstreamError
from conduit.security.ssrf import NetworkPolicy
from conduit.upstream.credentials import build_auth
from conduit.upstream.network import READ_TIMEOUT, guarded_client
from conduit.upstream.plain_http import plain_http_client
from conduit.upstream.stderr import StderrPipe
from conduit.upstream.token_state import token_state_for

logger = logging.getLogger(__name__)

SAFE_ENV_NAMES: Final = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL")
"""The only host variables a stdio upstream inherits, besides its configured ``env``."""

_CLOSE_TIMEOUT: Final = 10.0
RETRY_BASE: Final = 1.0
RETRY_MAX: Final = 30.0
"""After a failed connect, further attempts wait 1 s, 2 s, 4 s... up to this many seconds."""
STDERR_GRACE_S: Final = 0.2
"""How long a failed start waits for the upstream's last stderr lines (and exit status) to be read, to quote them."""


def upstream_environment(configured: Mapping[str, str], host_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a stdio upstream: the minimal safe set from ``host_env``, then ``configured``.

    >>> upstream_environment({"TOKEN": "t"}, {"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x"})
    {'PATH': '/bin', 'TOKEN': 't'}
    """
    env = {name: host_env[name] for name in SAFE_ENV_NAMES if name in host_env and not host_env[name].startswith("()")}
    env.update(configured)
    return env


def _executable(command: str, cwd: Path) -> str:
    """``command`` if it names a file that can be run (relative to ``cwd`` when relative).

    Raises:
        FileNotFoundError: not found (on the search path, or at that path).
        PermissionError: found, but not executable.
    """
    where = command if os.path.isabs(command) else str(cwd / command)
    if os.sep not in command or not os.path.isfile(where):
        raise FileNotFoundError(errno.ENOENT, "command not found", command)
    if not os.access(where, os.X_OK):
        raise PermissionError(errno.EACCES, "command not executable", command)
    return command


def resolve_command(command: str, search_path: str | None) -> str:
    """Find ``command`` beside Conduit's own interpreter (its venv's ``bin``), then on ``search_path``.

    Looking in Conduit's environment first makes ``python`` and console scripts installed with
    Conduit (``mcp-server-time``) mean the same thing under ``make run`` and a desktop client.
    """
    if os.sep in command:
        return command
    beside = Path(sys.executable).parent / command
    if beside.is_file():
        return str(beside)
    return shutil.which(command, path=search_path) or command


class UpstreamConnection:
    """A connection to one upstream, opened on first use and reopened after it dies."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        base_dir: Path,
        host_env: Mapping[str, str],
        tg: TaskGroup,
        network: NetworkPolicy | None = None,
        credentials: Credentials | None = None,
        on_rotate: Callable[[str], None] | None = None,
        shared: SharedStore | None = None,
        principal: str | None = None,
        subject: Callable[[], str | None] | None = None,
    ):
        """``credentials`` (with ``on_rotate`` for a rotated refresh token) stand in for the config's
        own: ``principal``'s, for an upstream marked ``credentials: perPrincipal``; ``subject`` gives
        ``principal``'s access token where the credentials exchange it. With ``shared`` (the cluster's
        Redis), OAuth tokens live there."""
        self.config = config
        self._base_dir = base_dir
        self._host_env = host_env
        self._tg = tg
        self._network = network or NetworkPolicy()
        # One auth flow per upstream, so cached OAuth tokens outlive reconnections.
        if credentials is None and isinstance(config.credentials, Credentials):
            credentials = config.credentials
        state = token_state_for(shared, config.id, credentials, principal)
        self._auth = build_auth(credentials, lambda: guarded_client(self._network), on_rotate, state, subject)
        self._http_refusals: list[str] = []
        self._stderr: StderrPipe | None = None
        """A stdio upstream's stderr, logged under its id (its last lines explain a failed start)."""
        self._lock = anyio.Lock()
        self._client: Client | None = None
        self._close: anyio.Event | None = None
        self._closed: anyio.Event | None = None
        self._tools: list[types.Tool] | None = None
        self.last_error: str | None = None
        """Why the last connection attempt or call failed (host-side only: may name paths)."""
        self.failures = 0
        """Connection attempts that failed in a row (reset by a successful connect)."""
        self._retry_at = 0.0
        self._tools_at = 0.0
        self._tools_stale = False
        self._refresh_lock = anyio.Lock()
        self.generation = 0
        """Changes whenever the tool list may have changed (a connect, a refresh); keys SDK caches."""
        self.connects = 0
        """How many times the connection has been (re)opened; for health and tests."""

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def list_tools(self) -> list[types.Tool]:
        """The upstream's tools, connecting first if needed.

        Raises:
            UpstreamError: the upstream cannot be started or reached.
        """
        client = await self._ensure_connected()
        assert self._tools is not None
        ttl = self.config.tools_cache_ttl_ms / 1000
        expired = ttl > 0 and anyio.current_time() - self._tools_at > ttl
        if self._tools_stale or expired:
            async with self._refresh_lock:
                if self._tools_stale or anyio.current_time() - self._tools_at > ttl > 0:
                    self._tools_stale = False
                    try:
                        with anyio.fail_after(self.config.connect_timeout_ms / 1000):
                            self._tools = await _list_all_tools(client)
                    except Exception as exc:  # keep serving the last good list; the call path notices a dead link
                        logger.warning("upstream %s: refreshing its tool list failed: %s", self.id, _describe(exc))
                    else:
                        self.generation += 1
                    self._tools_at = anyio.current_time()
        return self._tools

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> types.CallToolResult:
        """Call one tool with the upstream's per-call timeout.

        Raises:
            UpstreamError: the upstream is unreachable, timed out, died or answered with a protocol error.
        """
        client = await self._ensure_connected()
        timeout = self.config.timeout_ms / 1000
        try:
            with anyio.fail_after(timeout):
                result = await client.call_tool(name, dict(arguments))
        except TimeoutError:
            raise UpstreamError(
                f"upstream {self.id!r} did not answer {name!r} within {timeout:g} s", code=UPSTREAM_TIMEOUT
            ) from None
        except MCPError as exc:
            if exc.error.code == types.CONNECTION_CLOSED:
                ended = await self._how_it_ended(f" during {name!r}") or f"closed the connection during {name!r}"
                await self._mark_dead(ended)
                raise UpstreamError(f"upstream {self.id!r} {ended}") from None
            raise UpstreamError(f"upstream {self.id!r}: {exc.error.message}", code=exc.error.code) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
            await self._mark_dead(f"transport failed during {name!r}: {exc}")
            raise UpstreamError(f"upstream {self.id!r} is unreachable") from None
        if not isinstance(result, types.CallToolResult):
            raise UpstreamError(f"upstream {self.id!r} answered {name!r} with an unsupported result")
        return result

    async def aclose(self) -> None:
        """Close the connection (and stop a stdio upstream's process), waiting a bounded time."""
        async with self._lock:
            await self._stop()

    async def _ensure_connected(self) -> Client:
        client = self._client
        if client is not None:
            return client
        async with self._lock:
            if self._client is None:
                await self._connect()
            assert self._client is not None
            return self._client

    async def _connect(self) -> None:
        if anyio.current_time() < self._retry_at:
            raise UpstreamError(self._unavailable())
        self._http_refusals.clear()
        timeout = self.config.connect_timeout_ms / 1000
        try:
            with anyio.fail_after(timeout):
                await self._tg.start(self._hold_connection)
        except TimeoutError:
            self.last_error = f"not ready within {timeout:g} s"
        except Exception as exc:  # the SDK and the OS raise many kinds; all mean "could not connect"
            self.last_error = _describe(exc)
            if self._http_refusals:  # the SDK reports HTTP failures without their status
                self.last_error += f" ({self._http_refusals[-1]})"
            # "Connection closed" is what a stdio upstream's exit did: say that, and what it said
            self.last_error = await self._how_it_ended() or self.last_error
        else:
            self.last_error = None
            self.failures = 0
            self.connects += 1
            return
        self.failures += 1
        self._retry_at = anyio.current_time() + min(RETRY_MAX, RETRY_BASE * 2 ** (self.failures - 1))
        logger.warning("upstream %s could not be connected: %s", self.id, self.last_error)
        raise UpstreamError(self._unavailable())

    async def _how_it_ended(self, during: str = "") -> str | None:
        """How a stdio upstream that closed its end ended (:meth:`StderrPipe.ending`), once its stderr is read
        to its exit status (briefly waited for); None for other upstreams, or when nothing is known."""
        if self._stderr is None:
            return None
        with anyio.move_on_after(STDERR_GRACE_S):
            await self._stderr.ended.wait()
        return self._stderr.ending(during)

    def _unavailable(self) -> str:
        """What a caller of a tool of this upstream is told while it cannot be connected: why."""
        why = f": {self.last_error}" if self.last_error else ""
        return f"upstream {self.id!r} is unavailable{why}"

    async def _hold_connection(self, *, task_status: TaskStatus[None]) -> None:
        close, closed = anyio.Event(), anyio.Event()
        started = False
        try:
            async with AsyncExitStack() as stack:
                transport = await self._transport(stack)
                client = await stack.enter_async_context(
                    Client(transport, mode="auto", message_handler=self._on_message)
                )
                tools = await _list_all_tools(client)
                self._client, self._tools, self._close, self._closed = client, tools, close, closed
                self._tools_at, self._tools_stale = anyio.current_time(), False
                self.generation += 1
                logger.info("upstream %s connected with %d tools", self.id, len(tools))
                task_status.started()
                started = True
                async with anyio.create_task_group() as watchers:
                    watchers.start_soon(self._watch_tool_changes, client)
                    await close.wait()
                    watchers.cancel_scope.cancel()
        except Exception as exc:
            if not started:
                raise
            logger.warning("upstream %s connection ended with an error: %s", self.id, _describe(exc))
        finally:
            if self._closed is closed:
                self._client = None
            closed.set()

    async def _transport(self, stack: AsyncExitStack) -> Transport:
        """What the client connects through; HTTP clients it needs are closed with ``stack``."""
        config = self.config
        self._stderr = None  # an earlier attempt's says nothing of this one
        if config.type == "stdio":
            assert config.command is not None
            env = upstream_environment(config.env, self._host_env)
            cwd = self._base_dir / config.cwd if config.cwd else self._base_dir
            command = _executable(resolve_command(config.command, env.get("PATH")), cwd)
            self._stderr = StderrPipe(self.id)
            shell, args = self._stderr.reporting(command, list(config.args), env)
            params = StdioServerParameters(command=shell, args=args, env=env, cwd=str(cwd))
            self._stderr.start(self._tg)
            stack.callback(self._stderr.close)
            return stdio_client(params, errlog=self._stderr.errlog)
        assert config.url is not None
        if config.type == "sse":

            def factory(
                headers: dict[str, str] | None = None,
                timeout: httpx2.Timeout | None = None,
                auth: httpx2.Auth | None = None,
            ) -> httpx2.AsyncClient:
                return guarded_client(
                    self._network, headers=headers, auth=auth, timeout=timeout, on_response=self._note_response
                )

            return sse_client(
                config.url,
                headers=dict(config.headers),
                timeout=config.connect_timeout_ms / 1000,
                sse_read_timeout=READ_TIMEOUT,
                httpx_client_factory=factory,
                auth=self._auth,
            )
        http = await stack.enter_async_context(
            guarded_client(self._network, headers=config.headers, auth=self._auth, on_response=self._note_response)
        )
        if config.type == "streamableHttp":
            return streamable_http_client(config.url, http_client=http)
        return plain_http_client(config.url, http)

    async def _watch_tool_changes(self, client: Client) -> None:
        """On 2026-07-28 sessions, subscribe to tool-list changes (older ones notify unasked: see _on_message)."""
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    logger.info("upstream %s says its tools changed; listing them again on next use", self.id)
                    self._tools_stale = True
        except ListenNotSupportedError:
            return
        except Exception as exc:  # a server without subscriptions: the TTL still refreshes its list
            logger.debug("upstream %s: no tool-change subscription (%s)", self.id, _describe(exc))

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            logger.info("upstream %s says its tools changed; listing them again on next use", self.id)
            self._tools_stale = True

    async def _note_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            where = response.request.url.copy_with(query=None)
            self._http_refusals.append(f"HTTP {response.status_code} from {where}")

    async def _mark_dead(self, reason: str) -> None:
        logger.warning("upstream %s is down (%s); it will be restarted on next use", self.id, reason)
        self.last_error = reason
        async with self._lock:
            await self._stop()

    async def _stop(self) -> None:
        close, closed = self._close, self._closed
        self._client = None
        self._close = self._closed = None
        if close is None or closed is None:
            return
        close.set()
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await closed.wait()


async def _list_all_tools(client: Client) -> list[types.Tool]:
    """Every tool the upstream lists, following pagination."""
    listed = await client.list_tools()
    tools = list(listed.tools)
    cursor = listed.next_cursor
    while cursor:
        listed = await client.list_tools(cursor=cursor)
        tools.extend(listed.tools)
        cursor = listed.next_cursor
    return tools


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    if isinstance(exc, MCPError):
        return exc.error.message
    if isinstance(exc, FileNotFoundError) and exc.filename:  # a stdio upstream's command
        return f"command not found: {exc.filename!r}"
    if isinstance(exc, PermissionError) and exc.filename:
        return f"command not executable: {exc.filename!r}"
    return str(exc) or type(exc).__name__
