"""Tool and upstream names made into identifiers every SDK language accepts.

>>> identifier("get-current-time"), identifier("2fa.verify"), identifier("delete"), identifier("")
('get_current_time', '_2fa_verify', 'delete_', '_')
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from typing import Final

_INVALID = re.compile(r"[^A-Za-z0-9_]")

RESERVED: Final = frozenset(
    """
    break case catch class const continue debugger default delete do else enum export extends false finally for
    function if import in instanceof new null return super switch this throw true try typeof var void while with
    yield let static implements interface package private protected public await async constructor prototype
    __proto__ toString valueOf hasOwnProperty raw then
    """.split()
) | frozenset(keyword.kwlist)
"""Words that cannot (or must not, on a plain object) be used as names in TS, JS or Python."""


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
