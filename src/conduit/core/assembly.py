"""The composition root: everything behind a gateway, built in order and torn down in reverse.

:func:`open_gateway` detects the OS walls, makes Conduit's private work directory, binds the
bridge, builds each language's runtime from :mod:`conduit.core.languages`, learns once which
runtimes can run as the unprivileged uid, starts the pools, and only then creates the
:class:`~conduit.core.gateway.Gateway` and lets the bridge serve it. Nothing here runs a request;
nothing in the gateway builds a runtime.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from conduit.bridge.server import BridgeServer
from conduit.cluster.store import SharedStore
from conduit.config.schema import Config
from conduit.core.gateway import Gateway
from conduit.core.languages import LANGUAGES, RuntimeParts
from conduit.core.sessions import SessionRegistry
from conduit.observability.tracing import Tracing, traces_endpoint
from conduit.sandbox.base import BridgeAddress, Runtime
from conduit.sandbox.deno.runtime import DenoRuntime, find_deno
from conduit.sandbox.host.process import use_pidfd_child_watcher
from conduit.sandbox.walls import Walls
from conduit.upstream.credential_store import store_for
from conduit.upstream.network import policy_for
from conduit.upstream.registry import UpstreamRegistry

logger = logging.getLogger(__name__)


@asynccontextmanager
async def open_gateway(
    config: Config, *, master_token: str, base_dir: Path, host_env: Mapping[str, str]
) -> AsyncIterator[Gateway]:
    """A running gateway; on exit upstreams, sandboxes and the bridge are stopped and private files removed.

    Raises:
        SandboxStartError: Deno is missing, or a wall ``isolation.require`` names is unavailable.
    """
    use_pidfd_child_watcher()
    shared = SharedStore(config.cluster) if config.cluster.redis_url is not None else None
    work_dir = Path(tempfile.mkdtemp(prefix="conduit-"))
    walls = Walls.detect(config.resource_limits.timeout_ms, enabled=config.isolation.enabled)
    deno: DenoRuntime | None = None
    try:
        os.chmod(work_dir, 0o711)  # sandboxes running as another uid pass through to their own directory
        async with anyio.create_task_group() as tg:
            sessions = SessionRegistry(master_token)
            registry = UpstreamRegistry(
                base_dir=base_dir,
                host_env=host_env,
                tg=tg,
                network=policy_for(config.network),
                store=store_for(config, base_dir, shared),
                shared=shared,
            )
            for upstream in config.upstreams:
                registry.add(upstream)
            bridge = BridgeServer(sessions)
            address = await bridge.bind()
            runtimes: dict[str, Runtime] = {}
            tracing: Tracing | None = None
            gateway: Gateway | None = None
            try:
                deno = DenoRuntime(
                    deno_path=find_deno(config.deno_path), bridge=address, work_dir=work_dir, walls=walls, reaper=tg
                )
                parts = RuntimeParts(
                    config=config, deno=deno, bridge=address, work_dir=work_dir, walls=walls, bridge_call=bridge.answer
                )
                built = _build(parts)
                await _probe_uids(walls, deno, built)
                logger.info("sandbox uids: %s", walls.uid_wall().detail)
                walls.check_required(config.isolation.require)
                for name, runtime in built.items():
                    runtime.start(tg)
                    runtimes[name] = runtime
                tracing = Tracing(traces_endpoint(config.tracing.otlp_endpoint, host_env), config.tracing.service_name)
                gateway = Gateway(
                    config,
                    master_token=master_token,
                    registry=registry,
                    bridge=bridge,
                    sessions=sessions,
                    runtimes=runtimes,
                    tracing=tracing,
                    walls=walls,
                    shared=shared,
                    tasks=tg,
                )
                bridge.serve(tg, gateway)
                yield gateway
            finally:
                if gateway is not None:
                    gateway.runs.cancel_all()  # before the runtimes and upstreams they use go
                with anyio.CancelScope(shield=True):
                    await registry.aclose()
                    for runtime in reversed(list(runtimes.values())):
                        await runtime.aclose()
                    await bridge.aclose()
                    if tracing is not None:
                        await anyio.to_thread.run_sync(tracing.shutdown)
                    if shared is not None:
                        await shared.aclose()
                tg.cancel_scope.cancel()
    finally:
        if deno is not None:
            deno.homes.close()
        walls.close()
        shutil.rmtree(work_dir, ignore_errors=True)


async def probed_walls(config: Config) -> Walls:
    """The walls as a server with ``config`` has them once it has started (each runtime's uid probed), for
    ``conduit doctor``; no sandbox is started. The caller closes them.

    Raises:
        SandboxStartError: Deno is missing.
    """
    walls = Walls.detect(config.resource_limits.timeout_ms, enabled=config.isolation.enabled)
    work_dir = Path(tempfile.mkdtemp(prefix="conduit-doctor-"))
    deno: DenoRuntime | None = None
    try:
        os.chmod(work_dir, 0o711)

        async def no_bridge(token: str, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
            raise AssertionError("nothing runs while the walls are probed")

        nowhere = BridgeAddress("127.0.0.1", 0)
        deno = DenoRuntime(deno_path=find_deno(config.deno_path), bridge=nowhere, work_dir=work_dir, walls=walls)
        parts = RuntimeParts(
            config=config, deno=deno, bridge=nowhere, work_dir=work_dir, walls=walls, bridge_call=no_bridge
        )
        await _probe_uids(walls, deno, _build(parts))
    except BaseException:
        walls.close()
        raise
    finally:
        if deno is not None:
            deno.homes.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    return walls


def _build(parts: RuntimeParts) -> dict[str, Runtime]:
    """Every runtime, by name: each language's, and the further engines its programs may run on."""
    built = {language.name: language.build(parts) for language in LANGUAGES}
    built.update({name: build(parts) for language in LANGUAGES for name, build in language.engines})
    return built


async def _probe_uids(walls: Walls, deno: DenoRuntime, runtimes: Mapping[str, Runtime]) -> None:
    """Learn which runtimes can start as the unprivileged uid (a no-op unless Conduit runs as root)."""
    for name, runtime in runtimes.items():
        home = deno.homes.make()
        try:
            argv, env = runtime.uid_probe(home)
            await walls.probe_uid(name, argv, env=env, read_write=[str(home)])
        finally:
            deno.homes.remove(home)
