"""What the gateway knows of Conduit's own packages (:mod:`conduit.packages`: the workspace, saved skills),
served beside the upstreams.

A package lists :class:`~conduit.catalog.ToolEntry` values as an upstream does, so everything programs
already have applies to it unchanged: the catalog and the generated SDKs, disclosure, allowlists
(``workspace.*``, ``skills.*``), approval rules, rate limits and audit records. What differs is where a call
goes: to :meth:`Package.call`, on the host, as the calling session's caller (no upstream may take a
package's id: the config refuses it). A package that runs programs (skills) does so through the gateway,
its :class:`PackageHost`, bound once the gateway exists.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Any, Protocol

import mcp_types as types
from pydantic import JsonValue

from conduit.catalog import ToolEntry
from conduit.core.sessions import Session
from conduit.security.callers import Caller
from conduit.state.skills import Skill, SkillDefinition


class PackageHost(Protocol):
    """What a package may ask of the gateway that serves it."""

    async def run_skill(
        self, session: Session, skill: Skill, arguments: Mapping[str, JsonValue]
    ) -> types.CallToolResult:
        """Run ``skill`` with ``arguments`` (checked against its input schema already) for ``session``."""


class Package(Protocol):
    """One of Conduit's own packages."""

    id: str

    def bind(self, host: PackageHost) -> None:
        """Called once by the gateway that serves the package."""

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


def package_entry(package: str, tool: types.Tool, revision: str = "") -> ToolEntry:
    """A package tool's catalog entry (``revision`` changes whenever its definition does)."""
    return ToolEntry(package, tool.name, tool.description or "", tool.input_schema, tool, revision=revision)


def with_args(definition: SkillDefinition, args: Mapping[str, Any]) -> str:
    """The skill's code with its input bound to ``args``, without moving its lines where the language allows:
    a statement before the first line in TypeScript and JavaScript (and in Python when the first line is a
    simple statement), else a line of its own.

    >>> with_args(SkillDefinition("s", "d", "python", "x = args['a']\\nx"), {"a": 1})
    "args = {'a': 1}; x = args['a']\\nx"
    """
    if definition.language != "python":
        literal = json.dumps(json.dumps(dict(args), separators=(",", ":")))
        return f"const args = Object.freeze(JSON.parse({literal})); {definition.code}"
    bound = f"args = {_python_literal(args)}"
    joined = f"{bound}; {definition.code}"
    try:
        parse_python(joined)
    except SyntaxError:
        return f"{bound}\n{definition.code}"
    return joined


def _python_literal(value: Any) -> str:
    """A JSON value as a Python literal (JSON's values are all Python literals as ``repr`` writes them)."""
    return repr(value)


def parse_python(code: str) -> None:
    """Raises:
    SyntaxError: ``code`` is not Python (top-level ``await`` allowed, as in programs).
    """
    compile(code, "skill.py", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
