"""``conduit__mcp_save_skill``: a client saves a program as a skill of its caller's, callable by name in later
programs (``tools.skills.<name>(args)``) and, unless ``codeModeOnly``, as the MCP tool ``skills__<name>``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import mcp_types as types

from conduit.catalog import CONDUIT_PREFIX
from conduit.core.gateway import Gateway
from conduit.errors import MethodNotFoundError
from conduit.packages.skill_definition import definition_from
from conduit.packages.skills import ID as SKILLS
from conduit.packages.skills import SkillsPackage
from conduit.sdk.naming import identifier
from conduit.security.callers import Caller

SAVE: Final = f"{CONDUIT_PREFIX}mcp_save_skill"

TOOL: Final = types.Tool(
    name=SAVE,
    description="Save code as a skill, called as `await tools.skills.<name>(args)`.",
    input_schema={
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "language": {"type": "string"},
            "code": {"type": "string"},
            "inputSchema": {},
            "outputSchema": {},
            "allowedTools": {},
        },
        "required": ["name", "description", "language", "code"],
    },
)
"""Listed within the code-mode surface's budget (bench/surface.py): the fields' rules are in the errors."""


def skills_of(gateway: Gateway) -> SkillsPackage | None:
    package = gateway.packages.get(SKILLS)
    return package if isinstance(package, SkillsPackage) else None


async def save(gateway: Gateway, caller: Caller, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Save the skill ``arguments`` define as ``caller``'s; what it is now called.

    Raises:
        MethodNotFoundError: skills are turned off (``skills.enabled: false``).
        InvalidParamsError: an invalid field, code that does not parse, a curated skill's name.
        StateUnavailableError: the database is unreachable.
    """
    skills = skills_of(gateway)
    if skills is None:
        raise MethodNotFoundError("skills are turned off on this server (skills.enabled: false)")
    saved = await skills.save(caller, definition_from(arguments))
    answer: dict[str, Any] = {
        "name": saved.name,
        "version": saved.version,
        "call": f"await tools.skills.{identifier(saved.name)}(args)",
        "tool": f"{SKILLS}__{saved.name}",
    }
    engine = await gateway.skill_engine(saved.definition, caller)
    if engine is not None:
        answer["engine"] = engine  # Python: Monty (checked there) when the skill fits it, else Pyodide
    return answer
