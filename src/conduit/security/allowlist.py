"""Tool allowlists: which upstream tools an execution may discover and call.

A pattern is one of:

- ``*``: every tool of every upstream;
- ``ns.*`` (or ``ns__*``): every tool of upstream ``ns``;
- ``ns.tool`` (or ``ns__tool``): one tool;
- ``tool``: a tool of that name on any upstream.

Nothing else matches: there are no partial globs, so ``git*`` is refused when the
allowlist is built rather than silently matching nothing.

>>> allow = Allowlist.parse(["github.*", "time.get_current_time", "echo"])
>>> allow.permits("github", "create_issue"), allow.permits("time", "convert_time"), allow.permits("x", "echo")
(True, False, True)
>>> Allowlist.parse([]).permits("github", "create_issue")
False
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")


class AllowlistError(ValueError):
    """A pattern is not one of the accepted forms."""


@dataclass(frozen=True)
class Allowlist:
    """An immutable, default-deny set of tool patterns."""

    everything: bool
    namespaces: frozenset[str]
    qualified: frozenset[tuple[str, str]]
    bare: frozenset[str]
    patterns: tuple[str, ...]

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> Allowlist:
        """Build an allowlist.

        Raises:
            AllowlistError: a pattern is empty or uses an unsupported wildcard.
        """
        everything = False
        namespaces: set[str] = set()
        qualified: set[tuple[str, str]] = set()
        bare: set[str] = set()
        kept: list[str] = []
        for raw in patterns:
            if not isinstance(raw, str):
                raise AllowlistError(f"allowlist entries must be strings, got {type(raw).__name__}")
            pattern = raw.strip()
            kept.append(pattern)
            if pattern == "*":
                everything = True
                continue
            namespace, tool = split_tool_id(pattern)
            if namespace is None:
                _check_name(pattern, raw)
                bare.add(pattern)
            elif tool == "*":
                _check_name(namespace, raw)
                namespaces.add(namespace)
            else:
                _check_name(namespace, raw)
                _check_name(tool, raw)
                qualified.add((namespace, tool))
        return cls(everything, frozenset(namespaces), frozenset(qualified), frozenset(bare), tuple(kept))

    def permits(self, namespace: str, tool: str) -> bool:
        """Whether tool ``tool`` of upstream ``namespace`` is allowed."""
        return (
            self.everything or namespace in self.namespaces or (namespace, tool) in self.qualified or tool in self.bare
        )


def split_tool_id(tool_id: str) -> tuple[str | None, str]:
    """Split ``ns__tool`` or ``ns.tool`` into its parts; a bare name gives ``(None, name)``.

    >>> split_tool_id("time__get_current_time"), split_tool_id("github.*"), split_tool_id("echo")
    (('time', 'get_current_time'), ('github', '*'), (None, 'echo'))
    """
    if "__" in tool_id:
        namespace, _, tool = tool_id.partition("__")
        return namespace, tool
    if "." in tool_id:
        namespace, _, tool = tool_id.partition(".")
        return namespace, tool
    return None, tool_id


def _check_name(part: str, raw: str) -> None:
    if not part or "*" in part or not _NAME.match(part):
        raise AllowlistError(f"invalid allowlist pattern {raw!r}: use '*', 'ns.*', 'ns.tool' or 'tool'")
