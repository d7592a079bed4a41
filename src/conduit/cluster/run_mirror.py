"""Runs as the whole cluster sees them: every replica mirrors its runs into Redis; any replica reads them.

A run lives in the replica that started it (its sandbox is there). What others need of it is mirrored,
sealed with ``cluster.key``: its status (output so far, or its outcome), the approvals it waits for,
and its ``requestState``. A replica that receives a status, a cancel or a round's answers
for a run it does not hold reads the mirror and posts commands to the run's inbox, which the owner
takes every :data:`POLL_S`. Each replica also keeps a heartbeat: a run whose record says running while
its replica's heartbeat is gone was lost with that replica.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio
from cryptography.fernet import InvalidToken

from conduit.cluster.store import SharedStore
from conduit.errors import StoreUnavailableError

logger = logging.getLogger(__name__)

POLL_S: Final = 0.25
"""How often an owner publishes a changed run and takes its inbox; how often a reader re-reads."""
HEARTBEAT_S: Final = 1.0
HEARTBEAT_TTL_S: Final = 4
"""A replica whose heartbeat is older than this is gone (and its running runs were lost)."""


class RunMirror:
    """This replica's view of the cluster's runs in Redis."""

    def __init__(self, store: SharedStore, boot: str, keep_s: float, longest_s: float) -> None:
        self._store = store
        self._boot = boot
        self._keep_s = keep_s
        self._longest_s = longest_s

    def _record(self, run_id: str) -> str:
        return self._store.key("run", run_id)

    def _inbox(self, run_id: str) -> str:
        return self._store.key("run", run_id, "inbox")

    def _heartbeat(self, boot: str) -> str:
        return self._store.key("replica", boot)

    async def beat(self) -> None:
        """Keep this replica's heartbeat fresh until cancelled."""
        while True:
            try:
                await self._quiet(lambda: self._store.client.set(self._heartbeat(self._boot), b"1", ex=HEARTBEAT_TTL_S))
            except Exception:  # never take the server down for a heartbeat
                logger.exception("the replica's heartbeat could not be written")
            await anyio.sleep(HEARTBEAT_S)

    async def alive(self, boot: str) -> bool:
        """Whether replica ``boot`` beats (an unreachable Redis counts as alive: nothing is called lost then)."""

        async def read() -> bool:
            return bool(await self._store.client.exists(self._heartbeat(boot)))

        async def unknown() -> bool:
            return True

        return await self._store.with_fallback(read, unknown)

    async def publish(self, run_id: str, record: Mapping[str, Any], finished: bool) -> None:
        """Write a run's record (kept ``keepMs`` once finished, while it may still run otherwise)."""
        sealed = self._store.fernet.encrypt(json.dumps(record, ensure_ascii=False).encode())
        ttl = self._keep_s if finished else self._longest_s + self._keep_s
        await self._quiet(lambda: self._store.client.set(self._record(run_id), sealed, ex=max(1, round(ttl))))

    async def read(self, run_id: str) -> dict[str, Any] | None:
        """A run's record, or None (none, expired, sealed with another key, or Redis away with ``local``).

        Raises:
            StoreUnavailableError: Redis is away and ``cluster.onStoreError`` is ``refuse``.
        """

        async def get() -> bytes | None:
            value = await self._store.client.get(self._record(run_id))
            return value.encode() if isinstance(value, str) else value

        async def nothing() -> bytes | None:
            return None

        sealed = await self._store.with_fallback(get, nothing)
        if sealed is None:
            return None
        try:
            record: dict[str, Any] = json.loads(self._store.fernet.decrypt(sealed))
        except (InvalidToken, ValueError):
            logger.warning("run %s's record cannot be read with this replica's cluster.key", run_id)
            return None
        return record

    async def post(self, run_id: str, command: Mapping[str, Any]) -> None:
        """Leave a command (cancel, an approval's answer, a form sent) for the run's owner.

        Raises:
            StoreUnavailableError: Redis is away (a command that cannot be delivered is not silently dropped).
        """
        sealed = self._store.fernet.encrypt(json.dumps(command).encode())

        async def push() -> None:
            await self._store.client.rpush(self._inbox(run_id), sealed)
            await self._store.client.expire(self._inbox(run_id), max(1, round(self._longest_s)))

        await self._store.with_fallback(push, None)

    async def take(self, run_id: str) -> list[dict[str, Any]]:
        """The commands left for a run this replica owns, oldest first (none while Redis is away)."""

        async def pop() -> list[bytes]:
            async with self._store.client.pipeline(transaction=True) as pipe:
                pipe.lrange(self._inbox(run_id), 0, -1)
                pipe.delete(self._inbox(run_id))
                values, _ = await pipe.execute()
            return list(values)

        async def none() -> list[bytes]:
            return []

        try:
            taken = await self._store.with_fallback(pop, none)
        except StoreUnavailableError:  # refuse mode and Redis away: the commands wait in Redis
            return []
        commands = []
        for sealed in taken:
            try:
                commands.append(json.loads(self._store.fernet.decrypt(sealed)))
            except (InvalidToken, ValueError):
                logger.warning("a command for run %s cannot be read with this replica's cluster.key", run_id)
        return commands

    async def _quiet(self, write: Callable[[], Awaitable[Any]]) -> None:
        """A write that may be skipped while Redis is away (the next change writes again)."""

        async def written() -> None:
            await write()

        async def skipped() -> None:
            return None

        with contextlib.suppress(StoreUnavailableError):  # refuse mode: the owner goes on all the same
            await self._store.with_fallback(written, skipped)
