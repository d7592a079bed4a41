"""Tool and upstream names made into identifiers every SDK language accepts, and the SDK's layout.

>>> identifier("get-current-time"), identifier("2fa.verify"), identifier("delete"), identifier("class")
('get_current_time', '_2fa_verify', 'delete', 'class_')
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import Final

from conduit.catalog import ToolEntry

_INVALID = re.compile(r"[^A-Za-z0-9_]")

RESERVED: Final = frozenset(
    "constructor prototype __proto__ toString valueOf hasOwnProperty raw then".split()
) | frozenset(keyword.kwlist)
"""Words that cannot (or must not, on a plain object) be used as names in TS, JS or Python. Names are only ever
properties and methods (``tools.workspace.delete``), where JavaScript's reserved words are allowed; Python's
keywords are not, and a plain object's own members and ``then`` (a thenable) must not be shadowed."""


def identifier(name: str) -> str:
    """``name`` as a valid identifier in TypeScript, JavaScript and Python."""
    safe = _INVALID.sub("_", name) or "_"
    if safe[0].isdigit():
        safe = "_" + safe
    if safe in RESERVED:
        safe += "_"
    return safe


def unique_identifiers(names: Iterable[str]) -> dict[str, str]:
    """Map each name to an identifier, suffixing ``_2``, ``_3``... where two would collide.

    >>> unique_identifiers(["a-b", "a_b", "c"])
    {'a-b': 'a_b', 'a_b': 'a_b_2', 'c': 'c'}
    """
    taken: set[str] = set()
    mapping: dict[str, str] = {}
    for name in names:
        base = identifier(name)
        candidate, counter = base, 2
        while candidate in taken:
            candidate = f"{base}_{counter}"
            counter += 1
        taken.add(candidate)
        mapping[name] = candidate
    return mapping


@dataclass(frozen=True)
class Package:
    """One upstream as the SDK lays it out: ``tools.<attribute>.<name>`` for each of its tools."""

    upstream: str
    attribute: str
    tools: list[tuple[ToolEntry, str]]
    """Its tools, sorted by name, each with the identifier a program writes for it."""


def layout(entries: Iterable[ToolEntry]) -> list[Package]:
    """The SDK's packages and names for ``entries``: the one layout every generated SDK and every disclosure
    answer uses, so a name shown is a name that works.

    >>> [(p.attribute, [name for _, name in p.tools]) for p in layout(
    ...     [ToolEntry("a-b", "x", "", {}), ToolEntry("a_b", "x-y", "", {}), ToolEntry("a_b", "x_y", "", {})])]
    [('a_b', ['x']), ('a_b_2', ['x_y', 'x_y_2'])]
    """
    ordered = sorted(entries, key=lambda entry: (entry.upstream, entry.name))
    attributes = unique_identifiers(dict.fromkeys(entry.upstream for entry in ordered))
    packages = []
    for upstream, group in groupby(ordered, key=lambda entry: entry.upstream):
        tools = list(group)
        names = unique_identifiers(entry.name for entry in tools)
        packages.append(Package(upstream, attributes[upstream], [(entry, names[entry.name]) for entry in tools]))
    return packages


def sdk_names(entries: Iterable[ToolEntry]) -> dict[str, str]:
    """Each tool's name in the SDK, ``package.tool`` as a program writes it after ``tools.``, by qualified id."""
    return {entry.qualified: f"{p.attribute}.{name}" for p in layout(entries) for entry, name in p.tools}
