"""The ``skills`` package: programs saved by name and called like tools (``tools.skills.<name>(args)``,
``skills__<name>`` over MCP).

A caller finds the curated skills (``skills.dir``, the same for everyone, read-only) and its own saved ones
(:mod:`conduit.state.skills`; invisible to every other principal); its own may not take a curated one's
name. A call runs the skill's code in a fresh sandbox of its language, as the caller, through the host that
serves the package (:class:`~conduit.core.packages.PackageHost`, the gateway): what it may reach, how long
it may run and who approves its calls are the caller's, narrowed, never widened.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import mcp_types as types
from pydantic import JsonValue

from conduit.catalog import ToolEntry
from conduit.core.packages import PackageHost, package_entry
from conduit.core.sessions import Session
from conduit.errors import ConfigError, InvalidParamsError, UnknownToolError
from conduit.packages.skill_definition import check_code, read_skill_file
from conduit.security.callers import Caller
from conduit.state.skills import Skill, SkillDefinition, SkillStore

logger = logging.getLogger(__name__)

ID: Final = "skills"
CURATED: Final = "curated"
"""The owner curated skills are listed under."""
ANY_RESULT: Final = {"description": "Whatever the skill returns."}
"""The output schema of a skill that declares none: programs still get its value (never a CallToolResult)."""
LANGUAGE_TITLES: Final = {"typescript": "TypeScript", "python": "Python", "isolate": "JavaScript"}


def skill_tool(skill: Skill) -> types.Tool:
    """A skill as a tool: its name, description, input and output schema."""
    definition = skill.definition
    title = LANGUAGE_TITLES.get(definition.language, definition.language)
    whose = "curated skill" if skill.owner == CURATED else "skill"
    return types.Tool(
        name=definition.name,
        description=f"{definition.description} ({title} {whose}, v{skill.version})",
        input_schema=definition.input_schema or {"type": "object"},
        output_schema=definition.output_schema or ANY_RESULT,
    )


def load_curated(directory: Path) -> dict[str, Skill]:
    """The curated skills of ``directory``: every ``.ts``, ``.js``, ``.py`` file in it (names must differ).

    Raises:
        ConfigError: the directory is missing, or a file is not a valid skill (the message names it).
    """
    if not directory.is_dir():
        raise ConfigError(f"skills.dir: {directory} is not a directory")
    found: dict[str, Skill] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in (".ts", ".mts", ".js", ".mjs", ".py") or not path.is_file():
            continue
        try:
            definition = read_skill_file(path)
        except InvalidParamsError as exc:
            raise ConfigError(f"skills.dir: {exc.message}") from None
        if definition.name in found:
            raise ConfigError(f"skills.dir: two files define the skill {definition.name!r}")
        found[definition.name] = Skill(definition, CURATED, 1, int(path.stat().st_mtime * 1000))
    return found


class SkillsPackage:
    """Curated and saved skills, as tools."""

    id = ID

    def __init__(self, store: SkillStore, curated: Mapping[str, Skill], deno: str) -> None:
        self.store = store
        self.curated = dict(curated)
        self.deno = deno
        self.host: PackageHost | None = None
        """Bound by the gateway that serves the package (:meth:`bind`)."""

    def bind(self, host: PackageHost) -> None:
        self.host = host

    async def check_curated(self) -> None:
        """Check that every curated skill's code parses (at start).

        Raises:
            ConfigError: one does not (the message names it).
        """
        for skill in self.curated.values():
            try:
                await check_code(skill.definition, self.deno)
            except InvalidParamsError as exc:
                raise ConfigError(f"skills.dir: {exc.message}") from None

    async def entries(self, caller: Caller) -> list[ToolEntry]:
        own = [skill for skill in await self.store.latest(caller.id) if skill.name not in self.curated]
        return [
            package_entry(ID, skill_tool(skill), revision=f"{skill.owner}:{skill.version}")
            for skill in [*self.curated.values(), *own]
        ]

    async def find(self, caller: Caller, name: str, version: int | None = None) -> Skill | None:
        """A skill ``caller`` can call, with its code: a curated one, else its own (newest, or ``version``)."""
        if name in self.curated:
            return self.curated[name] if version in (None, 1) else None
        return await self.store.get(caller.id, name, version)

    async def save(self, caller: Caller, definition: SkillDefinition) -> Skill:
        """Save ``definition`` (its fields checked already) as ``caller``'s: its code parsed first.

        Raises:
            InvalidParamsError: the code does not parse, or the name is a curated skill's.
            StateUnavailableError: the database is unreachable.
        """
        if definition.name in self.curated:
            raise InvalidParamsError(
                f"{definition.name!r} is a curated skill (skills.dir): choose another name for your own"
            )
        await check_code(definition, self.deno)
        return await self.store.save(caller.id, definition)

    async def call(
        self, session: Session, entry: ToolEntry, arguments: Mapping[str, JsonValue]
    ) -> types.CallToolResult:
        skill = await self.find(session.caller, entry.name)
        if skill is None:
            raise UnknownToolError(f"unknown tool 'skills__{entry.name}': no such skill")
        assert self.host is not None, "a skills package is bound to its gateway before it serves"
        return await self.host.run_skill(session, skill, arguments)
