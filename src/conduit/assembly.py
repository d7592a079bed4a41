"""The composition root: everything behind a gateway, built in order and torn down in reverse.

:func:`open_gateway` detects the OS walls, makes Conduit's private work directory, binds the
bridge, builds each language's runtime (and its engines') from :mod:`conduit.core.languages`, learns
once which runtimes can run as the unprivileged uid, starts the pools, builds what the gateway keeps
(runs, approvals, rate limits, metrics), and only then creates the :class:`~conduit.core.gateway.Gateway`
and lets the bridge serve it. Nothing here runs a request; the gateway builds nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from conduit.bridge.server import BridgeServer
from conduit.cluster.run_mirror import RunMirror
from conduit.cluster.store import SharedStore
from conduit.config.schema import Config
from conduit.core.approvals import Approvals
from conduit.core.gateway import Gateway
from conduit.core.languages import LANGUAGES, RuntimeParts
from conduit.core.packages import Package
from conduit.core.ratelimit import RateLimiter
from conduit.core.runs import BOOT, Runs
from conduit.core.sessions import SessionRegistry
from conduit.errors import StateUnavailableError
from conduit.observability.metrics import Metrics
from conduit.observability.tracing import Tracing, traces_endpoint
from conduit.packages.skills import SkillsPackage, load_curated
from conduit.packages.workspace import WorkspacePackage
from conduit.privacy.token_map import MemoryTokenMap, RedisTokenMap
from conduit.privacy.tokens import Privacy
from conduit.sandbox.base import BridgeAddress, Runtime
from conduit.sandbox.deno.runtime import DenoLauncher, find_deno
from conduit.sandbox.host.process import use_pidfd_child_watcher
from conduit.sandbox.walls import Walls
from conduit.security.redact import Redactor
from conduit.state.database import StateDatabase
from conduit.state.skills import SkillStore
from conduit.state.workspace import WorkspaceStore
from conduit.upstream.credential_store import store_for
from conduit.upstream.network import guarded_client, policy_for
from conduit.upstream.on_demand import Authorizations, Flows
from conduit.upstream.registry import UpstreamRegistry

logger = logging.getLogger(__name__)

UPKEEP_S = 60.0
"""How often workspace files past their ttl are removed and the usage gauge is read anew."""


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
    deno: DenoLauncher | None = None
    try:
        os.chmod(work_dir, 0o711)  # sandboxes running as another uid pass through to their own directory
        async with anyio.create_task_group() as tg:
            sessions = SessionRegistry(master_token)
            credential_store = store_for(config, base_dir, shared)
            registry = UpstreamRegistry(
                base_dir=base_dir,
                host_env=host_env,
                tg=tg,
                network=policy_for(config.network),
                store=credential_store,
                shared=shared,
            )
            for upstream in config.upstreams:
                registry.add(upstream)
            if credential_store is not None and any(upstream.authorization for upstream in config.upstreams):
                network = policy_for(config.network)
                registry.authorizations = Authorizations(
                    credential_store, Flows(shared), lambda: guarded_client(network), config.http.public_url
                )
            state = StateDatabase.for_config(config, base_dir) if config.keeps_state else None
            packages = await _packages(config, base_dir, state)
            if state is not None:
                await state.open_if_present()
                tg.start_soon(_upkeep, packages)
            bridge = BridgeServer(sessions)
            address = await bridge.bind()
            runtimes: dict[str, Runtime] = {}
            tracing: Tracing | None = None
            gateway: Gateway | None = None
            try:
                deno = DenoLauncher(
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
                privacy = _privacy(config, shared)
                gateway = Gateway(
                    config,
                    registry=registry,
                    bridge=bridge,
                    sessions=sessions,
                    runtimes=runtimes,
                    runs=_runs(config, shared, tg),
                    approvals=_approvals(config, privacy),
                    rate_limiter=RateLimiter(config.rate_limit, shared, config.tool_call_rate_limit),
                    metrics=Metrics(),
                    tracing=tracing,
                    walls=walls,
                    shared=shared,
                    packages=packages,
                    privacy=privacy,
                )
                gateway.metrics.watch(dataclasses.replace(gateway.live_state(), workspace_bytes=_usage(packages)))
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
                    if state is not None:
                        await state.aclose()
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
    deno: DenoLauncher | None = None
    try:
        os.chmod(work_dir, 0o711)

        async def no_bridge(token: str, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
            raise AssertionError("nothing runs while the walls are probed")

        nowhere = BridgeAddress("127.0.0.1", 0)
        deno = DenoLauncher(deno_path=find_deno(config.deno_path), bridge=nowhere, work_dir=work_dir, walls=walls)
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
    """Every runtime, by name: each language's, and those of the further engines its programs may run on."""
    built = {language.name: language.build(parts) for language in LANGUAGES}
    built.update(
        {engine.runtime: engine.build(parts) for language in LANGUAGES for engine in language.engines if engine.build}
    )
    return built


async def _packages(config: Config, base_dir: Path, state: StateDatabase | None) -> list[Package]:
    """Conduit's own packages the config enables, over the state database (curated skills read and checked).

    Raises:
        ConfigError: ``skills.dir`` is missing or holds an invalid skill.
    """
    packages: list[Package] = []
    if state is None:
        return packages
    if config.workspace.enabled:
        packages.append(WorkspacePackage(WorkspaceStore(state, config.workspace), config.workspace))
    if config.skills.enabled:
        curated = load_curated(base_dir / config.skills.dir) if config.skills.dir else {}
        skills = SkillsPackage(SkillStore(state), curated, find_deno(config.deno_path))
        await skills.check_curated()
        packages.append(skills)
    return packages


def _usage(packages: Sequence[Package]) -> Callable[[], dict[str, int]]:
    """The ``conduit_workspace_bytes`` gauge's reader: each principal's bytes, as the workspace last saw them."""
    stores = [package.store for package in packages if isinstance(package, WorkspacePackage)]
    return lambda: {principal: usage.bytes for store in stores for principal, usage in store.totals.items()}


async def _upkeep(packages: Sequence[Package], every_s: float = UPKEEP_S) -> None:
    """Every ``every_s``: workspace files past ``ttlDays`` removed, and every principal's totals read for the
    ``conduit_workspace_bytes`` gauge (other replicas write too). A database away is logged, then tried again."""
    stores = [package.store for package in packages if isinstance(package, WorkspacePackage)]
    while stores:
        for store in stores:
            try:
                removed = await store.expire()
                if removed:
                    logger.info("removed %d workspace files past workspace.ttlDays", removed)
                await store.usage()
            except StateUnavailableError as exc:
                logger.warning("workspace upkeep: %s", exc.message)
        await anyio.sleep(every_s)


def _runs(config: Config, shared: SharedStore | None, tasks: TaskGroup) -> Runs:
    """Executions that outlive their request, run in ``tasks`` (mirrored to the cluster's Redis when there is one)."""
    keep_s = config.background.keep_ms / 1000
    longest_s = max(config.resource_limits.timeout_ms, config.background.max_timeout_ms) / 1000
    mirror = RunMirror(shared, BOOT, keep_s, longest_s) if shared is not None else None
    return Runs(tasks, keep_s, config.background.max_per_principal, mirror)


def _privacy(config: Config, shared: SharedStore | None) -> Privacy | None:
    """Tokenising personal values (``privacy``), its map in this process or, for replicas, in Redis."""
    if not config.privacy.enabled:
        return None
    ttl_s, bound = config.privacy.ttl_ms / 1000, config.privacy.max_values
    tokens = MemoryTokenMap(ttl_s, bound) if shared is None else RedisTokenMap(shared, ttl_s, bound)
    return Privacy(config.privacy, tokens)


def _approvals(config: Config, privacy: Privacy | None) -> Approvals:
    """The approval rules, and what a person asked is shown: no secret, no credential shape; the PII they
    need to judge."""
    redactor = Redactor(
        config.secret_values(), config.secret_redaction_patterns, credentials=config.redact_credentials, pii=False
    )
    return Approvals(config.approvals, redactor, privacy)


async def _probe_uids(walls: Walls, deno: DenoLauncher, runtimes: Mapping[str, Runtime]) -> None:
    """Learn which runtimes can start as the unprivileged uid (a no-op unless Conduit runs as root)."""
    for name, runtime in runtimes.items():
        home = deno.homes.make()
        try:
            argv, env = runtime.uid_probe(home)
            await walls.probe_uid(name, argv, env=env, read_write=[str(home)])
        finally:
            deno.homes.remove(home)
