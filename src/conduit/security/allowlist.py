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

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

from conduit.catalog import ToolId

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")


class AllowlistError(ValueError):
    """A pattern is not one of the accepted forms."""


@dataclass(frozen=True)
class Allowlist:
    """An immutable, default-deny set of tool patterns."""

    everything: bool
    upstreams: frozenset[str]
    qualified: frozenset[tuple[str, str]]
    bare: frozenset[str]
    patterns: tuple[str, ...]
    within: Allowlist | None = None
    """A second allowlist a tool must also be in (a principal's policy around a request's list)."""

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> Allowlist:
        """Build an allowlist.

        Raises:
            AllowlistError: a pattern is empty or uses an unsupported wildcard.
        """
        everything = False
        upstreams: set[str] = set()
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
            parts = ToolId.parse(pattern)
            upstream, tool = parts.upstream, parts.tool
            if upstream is None:
                _check_name(pattern, raw)
                bare.add(pattern)
            elif tool == "*":
                _check_name(upstream, raw)
                upstreams.add(upstream)
            else:
                _check_name(upstream, raw)
                _check_name(tool, raw)
                qualified.add((upstream, tool))
        return cls(everything, frozenset(upstreams), frozenset(qualified), frozenset(bare), tuple(kept))

    def permits(self, upstream: str, tool: str) -> bool:
        """Whether tool ``tool`` of upstream ``upstream`` is allowed."""
        mine = self.everything or upstream in self.upstreams or (upstream, tool) in self.qualified or tool in self.bare
        return mine and (self.within is None or self.within.permits(upstream, tool))

    def reaches(self, upstream: str) -> bool:
        """Whether some tool of ``upstream`` could be allowed (its package is visible)."""
        mine = (
            self.everything
            or upstream in self.upstreams
            or any(owner == upstream for owner, _ in self.qualified)
            or bool(self.bare)
        )
        return mine and (self.within is None or self.within.reaches(upstream))

    def narrowed(self, by: Allowlist | None) -> Allowlist:
        """This allowlist, where a tool must also be in ``by``: the intersection.

        >>> asked = Allowlist.parse(["*"]).narrowed(Allowlist.parse(["time.*"]))
        >>> asked.permits("time", "now"), asked.permits("github", "delete_repo")
        (True, False)
        """
        if by is None:
            return self
        return dataclasses.replace(self, within=by if self.within is None else self.within.narrowed(by))


def _check_name(part: str, raw: str) -> None:
    if not part or "*" in part or not _NAME.match(part):
        raise AllowlistError(f"invalid allowlist pattern {raw!r}: use '*', 'ns.*', 'ns.tool' or 'tool'")
