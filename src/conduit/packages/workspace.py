"""The ``workspace`` package: ``tools.workspace.write / read / list / delete``, the calling principal's own
files across runs (:mod:`conduit.state.workspace` keeps them).

Every call acts on the session's caller's workspace and no other: a program cannot name another
principal's (there is no argument for it), and the master and the local stdio caller have their own.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final

import mcp_types as types
from pydantic import JsonValue

from conduit.catalog import ToolEntry
from conduit.config.schema import WorkspaceConfig
from conduit.core.packages import PackageHost, package_entry, value_result
from conduit.core.sessions import Session
from conduit.errors import InvalidParamsError, WorkspaceLimitError
from conduit.security.callers import Caller
from conduit.state.workspace import WorkspaceStore

ID: Final = "workspace"

_PATH: Final = {"type": "string", "description": "Relative path, e.g. 'notes/today.md'."}
_FILE: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "size": {"type": "integer", "description": "Bytes."},
        "modified": {"type": "string", "description": "ISO 8601, UTC."},
    },
    "required": ["path", "size", "modified"],
}


_PATH_ONLY: Final = {
    "type": "object",
    "properties": {"path": _PATH},
    "required": ["path"],
    "additionalProperties": False,
}


def _annotations(*, read_only: bool, destructive: bool = False) -> types.ToolAnnotations:
    return types.ToolAnnotations(
        read_only_hint=read_only, destructive_hint=destructive, idempotent_hint=True, open_world_hint=False
    )


TOOLS: Final = (
    types.Tool(
        name="write",
        description=(
            "Write a whole file of your workspace, kept across runs: {path, text} or {path, base64}. Replaces the "
            "file at path; past a limit nothing is written (-32016)."
        ),
        input_schema={
            "type": "object",
            "properties": {"path": _PATH, "text": {"type": "string"}, "base64": {"type": "string"}},
            "required": ["path"],
            "additionalProperties": False,
        },
        output_schema=_FILE,
        annotations=_annotations(read_only=False, destructive=True),
    ),
    types.Tool(
        name="read",
        description="Read a file of your workspace: {text} or {base64}, as it was written (encoding says which).",
        input_schema=_PATH_ONLY,
        output_schema={
            "type": "object",
            "properties": {
                **_FILE["properties"],
                "encoding": {"enum": ["text", "base64"]},
                "text": {"type": "string"},
                "base64": {"type": "string"},
            },
            "required": ["path", "encoding", "size", "modified"],
        },
        annotations=_annotations(read_only=True),
    ),
    types.Tool(
        name="list",
        description="The files of your workspace (under prefix, when given), by path.",
        input_schema={
            "type": "object",
            "properties": {"prefix": {"type": "string"}},
            "additionalProperties": False,
        },
        output_schema={"type": "array", "items": _FILE},
        annotations=_annotations(read_only=True),
    ),
    types.Tool(
        name="delete",
        description="Delete a file of your workspace; deleted is false when there was none.",
        input_schema=_PATH_ONLY,
        output_schema={
            "type": "object",
            "properties": {"path": {"type": "string"}, "deleted": {"type": "boolean"}},
            "required": ["path", "deleted"],
        },
        annotations=_annotations(read_only=False, destructive=True),
    ),
)


def content_of(arguments: Mapping[str, JsonValue], max_bytes: int) -> tuple[bytes, str]:
    """What a write writes: ``text`` (UTF-8) or ``base64`` (decoded), exactly one, and its encoding.

    Raises:
        InvalidParamsError: neither or both, or invalid base64 or text.
        WorkspaceLimitError: larger than ``max_bytes`` (checked before base64 is decoded).
    """
    text, encoded = arguments.get("text"), arguments.get("base64")
    if (text is None) == (encoded is None):
        raise InvalidParamsError("write takes exactly one of text and base64")
    if isinstance(text, str):
        try:
            return text.encode("utf-8"), "text"
        except UnicodeEncodeError:
            raise InvalidParamsError("text is not valid Unicode (a lone surrogate): write it as base64") from None
    if not isinstance(encoded, str):
        raise InvalidParamsError("base64 must be a string")
    if len(encoded) * 3 // 4 > max_bytes + 3:
        raise WorkspaceLimitError(f"the file is over {max_bytes} bytes (workspace.maxFileBytes): nothing written")
    try:
        return base64.b64decode(encoded, validate=True), "base64"
    except (binascii.Error, ValueError):
        raise InvalidParamsError("base64 is not valid base64") from None


class WorkspacePackage:
    """The workspace tools over a :class:`~conduit.state.workspace.WorkspaceStore`."""

    id = ID

    def __init__(self, store: WorkspaceStore, limits: WorkspaceConfig) -> None:
        self.store = store
        self.limits = limits
        self._entries = [package_entry(ID, tool) for tool in TOOLS]

    def bind(self, host: PackageHost) -> None:
        """The workspace asks nothing of its gateway."""

    async def entries(self, caller: Caller) -> list[ToolEntry]:
        return self._entries

    async def call(
        self, session: Session, entry: ToolEntry, arguments: Mapping[str, JsonValue]
    ) -> types.CallToolResult:
        principal = session.caller.id
        path = arguments.get("path")
        if entry.name == "write":
            content, encoding = content_of(arguments, self.limits.max_file_bytes)
            written = await self.store.write(
                principal, _text(path, "path"), content, "text" if encoding == "text" else "base64"
            )
            return value_result(written.describe())
        if entry.name == "read":
            info, content = await self.store.read(principal, _text(path, "path"))
            body = (
                {"text": content.decode("utf-8")}
                if info.encoding == "text"
                else {"base64": base64.b64encode(content).decode("ascii")}
            )
            return value_result({**info.describe(), "encoding": info.encoding, **body})
        if entry.name == "list":
            prefix = arguments.get("prefix")
            listed = await self.store.list(principal, _text(prefix, "prefix") if prefix is not None else None)
            return value_result([info.describe() for info in listed])
        if entry.name == "delete":
            gone = await self.store.delete(principal, _text(path, "path"))
            return value_result({"path": _text(path, "path"), "deleted": gone})
        raise InvalidParamsError(f"the workspace has no tool {entry.name!r}")


def _text(value: JsonValue, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidParamsError(f"{name} must be a string")
    return value
