"""Saved skills in the state database: each principal's programs by name, the last versions of each kept.

Each save of a name makes its next version; the newest :data:`KEPT_VERSIONS` are kept (and listed), older ones
are removed. The code is stored sealed; name, description, language and schemas as they are (they are listed
and searched).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import and_, delete, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from conduit.state.database import StateDatabase
from conduit.state.tables import skills

KEPT_VERSIONS: Final = 10
LISTED_OWNERS: Final = 1024
"""Owners whose listing is kept between executions (SQLite)."""


@dataclass(frozen=True)
class SkillDefinition:
    """What a skill is, whoever keeps it: checked by :func:`conduit.packages.skill_definition.definition_from`."""

    name: str
    description: str
    language: str
    """A language's name (``typescript``, ``python``, ``isolate``)."""
    code: str
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    allowed_tools: tuple[str, ...] | None = None
    """Allowlist patterns the skill's runs are narrowed to (None: its caller's allowlist alone)."""


@dataclass(frozen=True)
class Skill:
    """A skill as a caller finds it: its definition, whose it is and which version."""

    definition: SkillDefinition
    owner: str
    """The principal that saved it, or ``curated`` for the operators' directory."""
    version: int
    saved_ms: int

    @property
    def name(self) -> str:
        return self.definition.name


def _loads(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def _dumps(value: Any) -> str | None:
    return json.dumps(value, separators=(",", ":")) if value is not None else None


class SkillStore:
    """Principals' saved skills, versioned."""

    def __init__(self, database: StateDatabase) -> None:
        self.database = database
        self._listed: OrderedDict[str, tuple[Hashable, list[Skill]]] = OrderedDict()
        """Each owner's newest skills, with the store's change stamp they were read under (SQLite only: every
        execution lists its caller's skills, and the stamp tells without a query that nothing changed)."""

    async def save(self, owner: str, definition: SkillDefinition) -> Skill:
        """Save ``definition`` as its name's next version (the oldest beyond :data:`KEPT_VERSIONS` go).

        Raises:
            StateUnavailableError: the database is unreachable.
        """
        for attempt in range(5):
            try:
                return await self._save(owner, definition)
            except IntegrityError:  # another save of this name took the version first: take the next
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def _save(self, owner: str, definition: SkillDefinition) -> Skill:
        mine = (skills.c.owner == owner) & (skills.c.name == definition.name)
        saved = int(time.time() * 1000)
        code = self.database.sealer.seal(definition.code.encode("utf-8"))

        def save(connection: Connection) -> int:
            latest = connection.execute(select(func.max(skills.c.version)).where(mine)).scalar_one_or_none()
            version = (latest or 0) + 1
            connection.execute(
                skills.insert().values(
                    owner=owner,
                    name=definition.name,
                    version=version,
                    description=definition.description,
                    language=definition.language,
                    code=code,
                    input_schema=_dumps(definition.input_schema),
                    output_schema=_dumps(definition.output_schema),
                    allowed_tools=_dumps(list(definition.allowed_tools) if definition.allowed_tools else None),
                    saved_ms=saved,
                )
            )
            connection.execute(delete(skills).where(mine & (skills.c.version <= version - KEPT_VERSIONS)))
            return version

        return Skill(definition, owner, await self.database.transact(save), saved)

    async def latest(self, owner: str) -> list[Skill]:
        """The newest version of each of ``owner``'s skills, by name (their code not opened: see :meth:`get`).

        Raises:
            StateUnavailableError: the database is unreachable.
        """
        newest = (
            select(skills.c.name, func.max(skills.c.version).label("version"))
            .where(skills.c.owner == owner)
            .group_by(skills.c.name)
            .subquery()
        )
        query = (
            select(skills)
            .join(newest, and_(skills.c.name == newest.c.name, skills.c.version == newest.c.version))
            .where(skills.c.owner == owner)
            .order_by(skills.c.name)
        )
        if not self.database.exists:
            return []
        stamp = self.database.change_stamp()  # taken before reading: a write meanwhile makes the next one differ
        cached = self._listed.get(owner)
        if stamp is not None and cached is not None and cached[0] == stamp:
            self._listed.move_to_end(owner)
            return list(cached[1])
        rows = await self.database.transact(lambda connection: connection.execute(query).all())
        found = [self._skill(row, with_code=False) for row in rows]
        if stamp is not None:
            self._listed[owner] = (stamp, found)
            if len(self._listed) > LISTED_OWNERS:
                self._listed.popitem(last=False)
        return list(found)

    async def get(self, owner: str, name: str, version: int | None = None) -> Skill | None:
        """One of ``owner``'s skills (its newest version, or ``version``), with its code.

        Raises:
            StateUnavailableError: the database is unreachable.
        """
        query = select(skills).where((skills.c.owner == owner) & (skills.c.name == name))
        query = query.where(skills.c.version == version) if version else query.order_by(skills.c.version.desc())
        if not self.database.exists:
            return None
        row = await self.database.transact(lambda connection: connection.execute(query.limit(1)).first())
        return self._skill(row, with_code=True) if row is not None else None

    async def versions(self, owner: str, name: str) -> list[tuple[int, int]]:
        """``(version, saved_ms)`` of each kept version of a skill, newest first."""
        query = (
            select(skills.c.version, skills.c.saved_ms)
            .where((skills.c.owner == owner) & (skills.c.name == name))
            .order_by(skills.c.version.desc())
        )
        if not self.database.exists:
            return []
        rows = await self.database.transact(lambda connection: connection.execute(query).all())
        return [(row.version, row.saved_ms) for row in rows]

    async def remove(self, owner: str, name: str) -> int:
        """Remove every version of a skill; how many there were."""
        if not self.database.exists:
            return 0
        mine = (skills.c.owner == owner) & (skills.c.name == name)
        return await self.database.transact(
            lambda connection: int(connection.execute(delete(skills).where(mine)).rowcount)
        )

    def _skill(self, row: Any, *, with_code: bool) -> Skill:
        allowed = _loads(row.allowed_tools)
        definition = SkillDefinition(
            name=row.name,
            description=row.description,
            language=row.language,
            code=self.database.sealer.open(row.code).decode("utf-8") if with_code else "",
            input_schema=_loads(row.input_schema),
            output_schema=_loads(row.output_schema),
            allowed_tools=tuple(allowed) if allowed is not None else None,
        )
        return Skill(definition, row.owner, row.version, row.saved_ms)
