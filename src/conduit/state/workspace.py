"""Each principal's workspace: files its programs write and read across runs, within its limits.

A path is a relative POSIX path, normalised so that every spelling of one file is that file (Unicode NFC,
empty and ``.`` segments dropped); ``..``, an absolute path, NUL or any control character, more than 16
segments or a segment longer than 255 bytes is refused. A write is one transaction under the principal's
row lock: it is checked against ``workspace.maxFileBytes``, ``quotaBytes`` and ``maxFiles`` with the
principal's totals and writes the whole file or nothing; two writes of one path at once leave one of them
whole. Files not written for ``ttlDays`` are removed before the principal's next operation (and by
:meth:`WorkspaceStore.expire`).
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import JsonValue
from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from conduit.config.schema import WorkspaceConfig
from conduit.errors import InvalidParamsError, WorkspaceLimitError
from conduit.state.database import StateDatabase
from conduit.state.tables import workspace_files, workspace_owners

MAX_SEGMENTS: Final = 16
MAX_SEGMENT_BYTES: Final = 255
Encoding = Literal["text", "base64"]


def normalise_path(raw: object) -> str:
    """The one spelling of a workspace path.

    >>> normalise_path("notes//./day1.md"), normalise_path("cafe\\u0301/x")
    ('notes/day1.md', 'café/x')

    Raises:
        InvalidParamsError: not a string, empty, absolute, with ``..``, a control character, too deep or a
            segment too long.
    """
    if not isinstance(raw, str):
        raise InvalidParamsError("path must be a string")
    if any(unicodedata.category(char) == "Cc" for char in raw):
        raise InvalidParamsError("path must not contain NUL or control characters")
    if raw.startswith("/"):
        raise InvalidParamsError(f"path {raw!r} is absolute: workspace paths are relative ('notes/a.md')")
    text = unicodedata.normalize("NFC", raw)
    segments = [segment for segment in text.split("/") if segment not in ("", ".")]
    if ".." in segments:
        raise InvalidParamsError(f"path {raw!r} contains '..': workspace paths cannot leave the workspace")
    if not segments:
        raise InvalidParamsError("path is empty")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidParamsError(f"path has {len(segments)} segments; at most {MAX_SEGMENTS}")
    for segment in segments:
        try:
            size = len(segment.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidParamsError("path is not valid Unicode (a lone surrogate)") from None
        if size > MAX_SEGMENT_BYTES:
            raise InvalidParamsError(f"a path segment is {size} bytes; at most {MAX_SEGMENT_BYTES}")
    return "/".join(segments)


def _digest(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8")).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    modified_ms: int
    encoding: Encoding

    def describe(self) -> dict[str, JsonValue]:
        """``{path, size, modified}`` as programs see it (``modified``: ISO 8601, UTC)."""
        moment = datetime.fromtimestamp(self.modified_ms / 1000, UTC)
        return {"path": self.path, "size": self.size, "modified": moment.isoformat(timespec="milliseconds")}


@dataclass(frozen=True)
class Usage:
    bytes: int
    files: int


class WorkspaceStore:
    """Workspace files in the state database, per principal."""

    def __init__(self, database: StateDatabase, limits: WorkspaceConfig) -> None:
        self.database = database
        self.limits = limits
        self.totals: dict[str, Usage] = {}
        """Each principal's totals as last seen (its writes here, :meth:`usage` for everyone's): the
        ``conduit_workspace_bytes`` gauge, read at scrape time."""

    async def write(self, principal: str, path: str, content: bytes, encoding: Encoding) -> FileInfo:
        """Write a whole file (replacing one at ``path``), or nothing.

        Raises:
            InvalidParamsError: an invalid path.
            WorkspaceLimitError: the file is too large, or it would pass the quota or the file count.
            StateUnavailableError: the database is unreachable.
        """
        path = normalise_path(path)
        size = len(content)
        if size > self.limits.max_file_bytes:
            raise WorkspaceLimitError(
                f"{path!r} is {size} bytes; workspace.maxFileBytes is {self.limits.max_file_bytes}: nothing written"
            )
        sealed = self.database.sealer.seal(content)
        key = _key(principal, path)

        def write(connection: Connection) -> tuple[FileInfo, Usage]:
            self._expire(connection, principal)
            usage = self._lock_owner(connection, principal)
            previous = connection.execute(select(workspace_files.c.size).where(key)).scalar_one_or_none()
            total = usage.bytes - (previous or 0) + size
            files = usage.files + (previous is None)
            if total > self.limits.quota_bytes:
                raise WorkspaceLimitError(
                    f"writing {path!r} ({size} bytes) would bring the workspace to {total} bytes; workspace.quotaBytes "
                    f"is {self.limits.quota_bytes} (in use: {usage.bytes}): nothing written"
                )
            if files > self.limits.max_files:
                raise WorkspaceLimitError(
                    f"writing {path!r} would make {files} files; workspace.maxFiles is {self.limits.max_files}: "
                    "nothing written"
                )
            modified = _now_ms()
            row = {"path": path, "encoding": encoding, "size": size, "modified_ms": modified, "content": sealed}
            if previous is None:
                connection.execute(workspace_files.insert().values(principal=principal, digest=_digest(path), **row))
            else:
                connection.execute(update(workspace_files).where(key).values(**row))
            connection.execute(
                update(workspace_owners)
                .where(workspace_owners.c.principal == principal)
                .values(bytes=total, files=files)
            )
            return FileInfo(path, size, modified, encoding), Usage(total, files)

        info, self.totals[principal] = await self.database.transact(write)
        return info

    async def read(self, principal: str, path: str) -> tuple[FileInfo, bytes]:
        """A file's description and content.

        Raises:
            InvalidParamsError: an invalid path, or no such file.
            StateUnavailableError: the database is unreachable.
        """
        path = normalise_path(path)

        def read(connection: Connection) -> Row[Any] | None:
            self._expire(connection, principal)
            return connection.execute(select(workspace_files).where(_key(principal, path))).first()

        found = await self.database.transact(read) if self.database.exists else None
        if found is None:
            raise InvalidParamsError(f"no file {path!r} in the workspace")
        info = FileInfo(found.path, found.size, found.modified_ms, found.encoding)
        return info, self.database.sealer.open(found.content)

    async def list(self, principal: str, prefix: str | None = None) -> list[FileInfo]:
        """The principal's files, by path, under ``prefix`` (a path prefix, normalised: ``notes`` lists
        ``notes/...`` and ``notes.md``; None or empty: everything).

        Raises:
            InvalidParamsError: an invalid prefix.
            StateUnavailableError: the database is unreachable.
        """
        start = "" if prefix is None or prefix in ("", ".", "./") else normalise_path(prefix)
        if prefix is not None and isinstance(prefix, str) and prefix.endswith("/") and start:
            start += "/"
        columns = (
            workspace_files.c.path,
            workspace_files.c.size,
            workspace_files.c.modified_ms,
            workspace_files.c.encoding,
        )

        def listed(connection: Connection) -> Sequence[Row[Any, Any, Any, Any]]:
            self._expire(connection, principal)
            return connection.execute(select(*columns).where(workspace_files.c.principal == principal)).all()

        rows = await self.database.transact(listed) if self.database.exists else []
        return sorted(
            (FileInfo(row.path, row.size, row.modified_ms, row.encoding) for row in rows if row.path.startswith(start)),
            key=lambda info: info.path,
        )

    async def delete(self, principal: str, path: str) -> bool:
        """Remove a file; whether there was one.

        Raises:
            InvalidParamsError: an invalid path.
            StateUnavailableError: the database is unreachable.
        """
        path = normalise_path(path)

        def remove(connection: Connection) -> bool:
            self._expire(connection, principal)
            self._lock_owner(connection, principal)
            gone = connection.execute(delete(workspace_files).where(_key(principal, path)))
            if gone.rowcount:
                self._recount(connection, principal)
            return bool(gone.rowcount)

        return await self.database.transact(remove) if self.database.exists else False

    async def usage(self) -> Mapping[str, Usage]:
        """Every principal's totals (the ``conduit_workspace_bytes`` gauge).

        Raises:
            StateUnavailableError: the database is unreachable.
        """
        if not self.database.exists:
            return {}
        rows = await self.database.transact(lambda connection: connection.execute(select(workspace_owners)).all())
        self.totals = {row.principal: Usage(row.bytes, row.files) for row in rows}
        return dict(self.totals)

    async def expire(self) -> int:
        """Remove every principal's files older than ``ttlDays``; how many went.

        Raises:
            StateUnavailableError: the database is unreachable.
        """
        if self.limits.ttl_days is None or not self.database.exists:
            return 0

        def expire(connection: Connection) -> int:
            query = select(workspace_files.c.principal).where(self._expired()).distinct()
            owners = list(connection.execute(query).scalars())
            return sum(self._expire(connection, principal) for principal in owners)

        return await self.database.transact(expire)

    def _expired(self) -> ColumnElement[bool]:
        assert self.limits.ttl_days is not None
        return workspace_files.c.modified_ms < _now_ms() - self.limits.ttl_days * 86_400_000

    def _expire(self, connection: Connection, principal: str) -> int:
        if self.limits.ttl_days is None:
            return 0
        gone = connection.execute(
            delete(workspace_files).where((workspace_files.c.principal == principal) & self._expired())
        )
        if gone.rowcount:
            self._lock_owner(connection, principal)
            self._recount(connection, principal)
        return int(gone.rowcount or 0)

    def _lock_owner(self, connection: Connection, principal: str) -> Usage:
        """The principal's totals, its row locked until the transaction ends (made on its first write)."""
        mine = workspace_owners.c.principal == principal
        row = connection.execute(select(workspace_owners).where(mine).with_for_update()).first()
        if row is None:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            connection.execute(
                dialect.insert(workspace_owners)
                .values(principal=principal, bytes=0, files=0)
                .on_conflict_do_nothing(index_elements=["principal"])
            )
            row = connection.execute(select(workspace_owners).where(mine).with_for_update()).one()
        return Usage(row.bytes, row.files)

    def _recount(self, connection: Connection, principal: str) -> None:
        totals = connection.execute(
            select(func.coalesce(func.sum(workspace_files.c.size), 0), func.count()).where(
                workspace_files.c.principal == principal
            )
        ).one()
        usage = Usage(int(totals[0]), int(totals[1]))
        connection.execute(
            update(workspace_owners)
            .where(workspace_owners.c.principal == principal)
            .values(bytes=usage.bytes, files=usage.files)
        )
        self.totals[principal] = usage


def _key(principal: str, path: str) -> ColumnElement[bool]:
    """The row of ``principal``'s file at ``path`` (normalised)."""
    return (workspace_files.c.principal == principal) & (workspace_files.c.digest == _digest(path))
