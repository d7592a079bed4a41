"""Conduit's own packages, served beside the upstreams: the workspace (:mod:`.workspace`) and saved skills
(:mod:`.skills`).

A package lists :class:`~conduit.catalog.ToolEntry` values as an upstream does, so everything programs
already have applies to it unchanged: the catalog and the generated SDKs, disclosure, allowlists
(``workspace.*``, ``skills.*``), approval rules, rate limits and audit records. What differs is where a call
goes: to :meth:`Package.call`, on the host, as the calling session's caller (no upstream may take a
package's id: the config refuses it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Protocol

import mcp_types as types
from pydantic import JsonValue

from conduit.catalog import ToolEntry
from conduit.core.sessions import Session
from conduit.security.callers import Caller


class Package(Protocol):
    """One of Conduit's own packages."""

    id: str

    async def entries(self, caller: Caller) -> list[ToolEntry]:
        """The tools ``caller`` finds in the package (before its allowlist).

        Raises:
            StateUnavailableError: what the package lists is in a database that cannot be reached.
        """

    async def call(
        self, session: Session, entry: ToolEntry, arguments: Mapping[str, JsonValue]
    ) -> types.CallToolResult:
        """Call one of the package's tools (checked already: allowlist, arguments' schema) for ``session``.

        Raises:
            ConduitError: the call failed (its code says why).
        """


def value_result(value: JsonValue) -> types.CallToolResult:
    """A package tool's answer: its value as ``structuredContent`` (what a typed call in a program gets) and as
    JSON text (what a model reads)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=value)


def entry(package: str, tool: types.Tool, revision: str = "") -> ToolEntry:
    """A package tool's catalog entry (``revision`` changes whenever its definition does)."""
    return ToolEntry(package, tool.name, tool.description or "", tool.input_schema, tool, revision=revision)
