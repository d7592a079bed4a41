"""Run Conduit's MCP server: the gateway behind the stdio or Streamable HTTP front end."""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from conduit.assembly import open_gateway
from conduit.auth.http import Door
from conduit.auth.verifier import build_verifier
from conduit.config.loader import LoadedConfig
from conduit.core.gateway import Gateway
from conduit.errors import ListenError
from conduit.observability.context import CLIENT_GONE, STOPPED, Ending
from conduit.security.callers import LOCAL, Caller
from conduit.transport.body import limited
from conduit.transport.disconnect import CancelOnDisconnect
from conduit.transport.drain import Drain, DrainGate
from conduit.transport.http import serve_http
from conduit.transport.mcp_app import build_server, starts_work
from conduit.transport.oauth_callback import callback_route
from conduit.transport.ops import build_ops_app
from conduit.transport.stdio import stdio_streams

logger = logging.getLogger(__name__)


async def run_server(
    loaded: LoadedConfig, master_token: str, host_env: Mapping[str, str], local: Caller = LOCAL
) -> None:
    """Serve until the client disconnects (stdio) or SIGTERM/SIGINT arrives; ops endpoints beside.

    Over HTTP, SIGTERM drains first (:mod:`conduit.transport.drain`); SIGINT, a second signal, or the
    end of the drain cancels the serving, so everything opened is closed on the way out: HTTP requests
    are given a grace period, then sandboxes, upstreams and the gateway's other resources are released.
    """
    drain = Drain(loaded.config.http) if loaded.config.transport == "http" else None
    ending = _Ending()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signal, tg.cancel_scope, drain, ending)
        await _serve(loaded, master_token, host_env, local, drain, ending)
        tg.cancel_scope.cancel()


@dataclass
class _Ending:
    """Why serving ends, once it does: what work cancelled on the way out ended by (its end records say)."""

    why: Ending | None = None

    def because(self, why: Ending) -> None:
        self.why = self.why or why


async def _stop_on_signal(scope: anyio.CancelScope, drain: Drain | None, ending: _Ending) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for received in signals:
            logger.info("stopping on %s", signal.Signals(received).name)
            if drain is None or received != signal.SIGTERM:
                ending.because(STOPPED)
                scope.cancel()
                return
            break
        async with anyio.create_task_group() as draining:

            async def stop_at_once() -> None:
                async for again in signals:
                    logger.info("stopping at once on %s", signal.Signals(again).name)
                    draining.cancel_scope.cancel()
                    return

            draining.start_soon(stop_at_once)
            assert drain is not None
            await drain.run()
            draining.cancel_scope.cancel()
        ending.because(STOPPED)
        scope.cancel()


async def _serve(
    loaded: LoadedConfig,
    master_token: str,
    host_env: Mapping[str, str],
    local: Caller,
    drain: Drain | None,
    ending: _Ending,
) -> None:
    config = loaded.config
    verifier = build_verifier(config, master_token)
    async with open_gateway(config, master_token=master_token, base_dir=loaded.base_dir, host_env=host_env) as gw:
        server = build_server(gw, local, lambda: ending.why)
        async with anyio.create_task_group() as tg:
            if config.ops_enabled:
                tg.start_soon(_serve_ops, gw, config.transport == "http", drain)
            if config.transport == "stdio":
                logger.info("serving MCP over stdio")
                async with stdio_streams(on_end=lambda: ending.because(CLIENT_GONE)) as (read_stream, write_stream):
                    await server.run(read_stream, write_stream, server.create_initialization_options())
            else:
                mcp_app = server.streamable_http_app(
                    host=config.host,
                    stateless_http=config.stateless_http,
                    max_request_body_size=config.http.max_body_bytes,
                )
                assert drain is not None
                authorizations = gw.registry.authorizations
                public = [callback_route(authorizations)] if authorizations is not None else []
                door = Door(CancelOnDisconnect(mcp_app), verifier, config.auth.oauth, public)
                app = limited(DrainGate(door, drain, starts_work), config.http.max_body_bytes)

                def bound(url: str) -> None:  # without http.publicUrl, browsers come back where it listens
                    if authorizations is not None and authorizations.public_url is None:
                        authorizations.public_url = url

                await serve_http(
                    app,
                    host=config.host,
                    port=config.port,
                    log_level=config.log_level,
                    trusted_proxies=config.http.trusted_proxies,
                    on_bound=bound,
                )
            tg.cancel_scope.cancel()


async def _serve_ops(gateway: Gateway, required: bool, drain: Drain | None) -> None:
    config = gateway.config
    announce = "Conduit ops on {url} (/live, /ready, /health, /metrics)"
    try:
        await serve_http(
            limited(build_ops_app(gateway, drain), config.http.max_body_bytes),
            host=config.ops_host,
            port=config.ops_port,
            log_level="warning",
            announce=announce,
            listener="the ops endpoints (/live, /ready, /health, /metrics)",
            moved_by="--ops-port N (opsPort: in the config, OPS_PORT in the environment), or turn them off: --no-ops",
        )
    except ListenError as exc:
        if required:
            raise
        logger.warning("ops endpoints not served: %s", exc.message)
