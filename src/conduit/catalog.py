"""Tools as Conduit names them: the catalog entry, the one tool-id parser, Conduit's own prefix.

An upstream tool's id is ``<upstream>__<tool>``; programs and allowlists may also write
``<upstream>.<tool>``, and a bare ``<tool>`` names that tool on any upstream. Upstream ids never
contain ``__`` (the config refuses it), so the first ``__`` splits an id unambiguously. Conduit's
own MCP tools are ``conduit__<name>``. Pure: no I/O, nothing from the rest of Conduit (only MCP's types).

>>> ToolId.parse("time.get_current_time"), ToolId.parse("toolbox__add").qualified, ToolId.parse("add")
(ToolId(upstream='time', tool='get_current_time'), 'toolbox__add', ToolId(upstream=None, tool='add'))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import mcp_types as types

SEPARATOR: Final = "__"
"""Between an upstream's id and a tool's name in a tool id."""
CONDUIT_PREFIX: Final = "conduit__"
"""Conduit's own MCP tools (execution and disclosure) are named with this prefix."""


@dataclass(frozen=True)
class ToolId:
    """A tool id split into its parts; ``upstream`` is None for a bare tool name."""

    upstream: str | None
    tool: str

    @classmethod
    def parse(cls, text: str) -> ToolId:
        """Split ``upstream__tool`` or ``upstream.tool``; a name with neither is bare.

        >>> ToolId.parse("github.*"), ToolId.parse("a.b.c")
        (ToolId(upstream='github', tool='*'), ToolId(upstream='a', tool='b.c'))
        """
        for separator in (SEPARATOR, "."):
            if separator in text:
                upstream, _, tool = text.partition(separator)
                return cls(upstream, tool)
        return cls(None, text)

    @property
    def qualified(self) -> str:
        """The id as Conduit writes it: ``upstream__tool`` (a bare name stays bare)."""
        return self.tool if self.upstream is None else f"{self.upstream}{SEPARATOR}{self.tool}"


def qualify(name: str) -> str:
    """A tool name as ``upstream__tool``; ``upstream.tool`` is accepted too.

    >>> qualify("time.get_current_time"), qualify("toolbox__add"), qualify("add")
    ('time__get_current_time', 'toolbox__add', 'add')
    """
    return ToolId.parse(name).qualified


@dataclass(frozen=True)
class ToolEntry:
    """One upstream tool as Conduit presents it."""

    upstream: str
    name: str
    description: str
    input_schema: Mapping[str, Any]
    listed: types.Tool | None = field(default=None, compare=False)
    """The upstream's own definition (output schema, annotations, title, icons), when it came from a listing."""
    revision: str = ""
    """Changes whenever the definition of a tool Conduit serves itself changes (a skill's owner and version):
    generated SDKs are kept per revision."""

    @classmethod
    def of(cls, upstream: str, tool: types.Tool) -> ToolEntry:
        """The entry of a tool an upstream listed."""
        return cls(upstream, tool.name, tool.description or "", tool.input_schema, tool)

    @property
    def qualified(self) -> str:
        return f"{self.upstream}{SEPARATOR}{self.name}"

    @property
    def output_schema(self) -> Mapping[str, Any] | None:
        return self.listed.output_schema if self.listed is not None else None

    @property
    def hints(self) -> str:
        """What the upstream's annotations say of the tool, in words (``read-only, idempotent``), or nothing.

        >>> ToolEntry.of("fs", types.Tool(name="rm", input_schema={}, annotations=types.ToolAnnotations(
        ...     destructive_hint=True, open_world_hint=False))).hints
        'destructive, closed-world'
        """
        notes = self.listed.annotations if self.listed is not None else None
        if notes is None:
            return ""
        words = [
            word
            for word, said in (
                ("read-only", notes.read_only_hint is True),
                ("destructive", notes.destructive_hint is True and notes.read_only_hint is not True),
                ("idempotent", notes.idempotent_hint is True),
                ("open-world", notes.open_world_hint is True),
                ("closed-world", notes.open_world_hint is False),
            )
            if said
        ]
        return ", ".join(words)

    def proxied(self) -> types.Tool:
        """The tool as Conduit lists it over MCP: its qualified name, and everything else the upstream said
        of it (title, description, input and output schema, annotations, icons) unchanged."""
        if self.listed is None:
            return types.Tool(name=self.qualified, description=self.description, input_schema=dict(self.input_schema))
        update: dict[str, Any] = {"name": self.qualified, "meta": None, "execution": None}
        if self.output_schema is not None and self.output_schema.get("type") != "object":
            update["output_schema"] = None  # MCP's output schemas describe objects; programs still get the value
        return self.listed.model_copy(update=update)

    def describe(self) -> dict[str, Any]:
        """This tool as discovery presents it to programs (``discoverMCPTools()``, ``conduit tools --json``), with
        its output schema (the shape of what a call gives) when it publishes one."""
        described = {
            "name": self.qualified,
            "upstream": self.upstream,
            "tool": self.name,
            "description": self.description,
            "inputSchema": dict(self.input_schema),
        }
        if self.output_schema:
            described["outputSchema"] = dict(self.output_schema)
        return described


@dataclass(frozen=True)
class Catalog:
    """What discovery found: tools of the upstreams that answered, reasons for those that did not."""

    tools: tuple[ToolEntry, ...]
    failures: Mapping[str, str] = field(default_factory=dict)

    def find(self, qualified: str) -> ToolEntry | None:
        return next((entry for entry in self.tools if entry.qualified == qualified), None)
