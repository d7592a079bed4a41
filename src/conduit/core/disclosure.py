"""Progressive disclosure: what an agent can learn about upstream tools without loading every schema.

Packages (upstreams) first, then one package's tool stubs (names and one-line descriptions),
then one tool's full schema with the exact TypeScript and Python call forms, or a ranked
search across everything. All of it is computed from the gateway's catalog, so it always
matches what the sandboxes' generated SDKs contain.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from conduit.catalog import Catalog, ToolEntry, qualify
from conduit.core.validation import check_arguments, usable_schema
from conduit.errors import InvalidParamsError
from conduit.sdk.python import python_declaration
from conduit.sdk.typescript import typescript_declaration
from conduit.upstream.registry import Upstream

SEARCH_LIMIT: Final = 10
_TERM: Final = re.compile(r"[a-z0-9]+")


def summary(text: str) -> str:
    """The first line of a description.

    >>> summary("  Get the time.\\nMore detail.")
    'Get the time.'
    """
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


def list_packages(catalog: Catalog, connections: Mapping[str, Upstream]) -> list[dict[str, Any]]:
    """Every configured upstream: its transport, how many tools it offers, and whether it answered."""
    packages = []
    for upstream_id, connection in connections.items():
        package: dict[str, Any] = {
            "packageId": upstream_id,
            "transport": connection.config.type,
            "toolCount": sum(1 for entry in catalog.tools if entry.upstream == upstream_id),
            "status": "unavailable" if upstream_id in catalog.failures else "ok",
        }
        if upstream_id in catalog.failures:
            package["reason"] = catalog.failures[upstream_id]
        packages.append(package)
    return packages


def list_stubs(catalog: Catalog, package_id: Any) -> list[dict[str, Any]]:
    """One upstream's tools: ids and one-line descriptions.

    Raises:
        ConduitError: no such package (INVALID_PARAMS).
    """
    if not isinstance(package_id, str) or not package_id:
        raise InvalidParamsError("packageId must be a non-empty string")
    entries = [entry for entry in catalog.tools if entry.upstream == package_id]
    if not entries and package_id not in catalog.failures:
        known = sorted({entry.upstream for entry in catalog.tools} | set(catalog.failures))
        raise InvalidParamsError(f"unknown package {package_id!r} (known: {', '.join(known) or 'none'})")
    if not entries:
        raise InvalidParamsError(f"package {package_id!r} is unavailable: {catalog.failures[package_id]}")
    return [
        {"toolId": entry.qualified, "name": entry.name, "description": summary(entry.description)} for entry in entries
    ]


def find_tool(catalog: Catalog, tool_id: Any) -> ToolEntry:
    """The tool named ``upstream__tool`` or ``upstream.tool``.

    Raises:
        ConduitError: not a string, or no such tool (INVALID_PARAMS).
    """
    if not isinstance(tool_id, str) or not tool_id:
        raise InvalidParamsError("the tool id must be a non-empty string")
    qualified = qualify(tool_id)
    entry = catalog.find(qualified)
    if entry is None:
        raise InvalidParamsError(f"unknown tool {tool_id!r} (search with conduit__mcp_search_tools)")
    return entry


def read_schema(catalog: Catalog, tool_id: Any) -> dict[str, Any]:
    """One tool in full: description, input schema, its output schema when it publishes one (the shape of
    ``structuredContent``), and the call forms the sandboxes' SDKs give it."""
    entry = find_tool(catalog, tool_id)
    output = {"outputSchema": dict(entry.output_schema)} if entry.output_schema else {}
    return {
        "toolId": entry.qualified,
        "package": entry.upstream,
        "name": entry.name,
        "description": entry.description,
        "inputSchema": dict(entry.input_schema),
        **output,
        "typescript": typescript_declaration(entry),
        "python": python_declaration(entry),
    }


def search(catalog: Catalog, query: Any, limit: Any = None) -> list[dict[str, Any]]:
    """Tools ranked by how well their names, packages and descriptions match ``query``'s words.

    A word equal to the tool's name scores 10, equal to a word of the name 6, inside the name 3,
    equal to the package 4, a word of the description 2, inside the description 1.

    Raises:
        ConduitError: the query has no words, or the limit is not 1..50 (INVALID_PARAMS).
    """
    if not isinstance(query, str) or not _TERM.findall(query.lower()):
        raise InvalidParamsError("query must be a string with at least one word")
    if limit is None:
        limit = SEARCH_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 50:
        raise InvalidParamsError("limit must be an integer from 1 to 50")
    terms = _TERM.findall(query.lower())
    ranked = []
    for entry in catalog.tools:
        score = _score(entry, terms)
        if score > 0:
            ranked.append((score, entry))
    ranked.sort(key=lambda pair: (-pair[0], pair[1].qualified))
    return [
        {"toolId": entry.qualified, "description": summary(entry.description), "score": score}
        for score, entry in ranked[:limit]
    ]


def _score(entry: ToolEntry, terms: list[str]) -> int:
    name = entry.name.lower()
    name_words = set(_TERM.findall(name))
    description = entry.description.lower()
    description_words = set(_TERM.findall(description))
    score = 0
    for term in terms:
        if term == name:
            score += 10
        elif term in name_words:
            score += 6
        elif term in name:
            score += 3
        if term == entry.upstream.lower():
            score += 4
        if term in description_words:
            score += 2
        elif term in description:
            score += 1
    return score


def validate(catalog: Catalog, tool_name: Any, arguments: Any, strict: bool, result: Any = None) -> dict[str, Any]:
    """Whether ``arguments`` would pass validation for the tool, with every problem named; and, given a
    ``result`` (a ``structuredContent`` value), whether it matches the tool's output schema.

    Raises:
        InvalidParamsError: no such tool; ``args`` or ``result`` is not an object; neither is given.
    """
    entry = find_tool(catalog, tool_name)
    if arguments is None and result is None:
        raise InvalidParamsError("give args, result, or both")
    answer: dict[str, Any] = {}
    if arguments is not None:
        if not isinstance(arguments, dict):
            raise InvalidParamsError("args must be an object")
        answer = _checked(entry.input_schema, arguments, "args", strict, "the tool has no schema")
    if result is not None:
        if not isinstance(result, dict):
            raise InvalidParamsError("result must be an object (a structuredContent value)")
        answer["result"] = _checked(entry.output_schema, result, "result", strict, "the tool has no output schema")
    return answer


def _checked(schema: Any, value: dict[str, Any], root: str, strict: bool, missing: str) -> dict[str, Any]:
    if not usable_schema(schema):
        if strict:
            return {"valid": False, "errors": [{"path": root, "rule": "schema", "message": missing}]}
        return {"valid": True, "errors": [], "note": f"{missing} to check against"}
    problems = check_arguments(schema, value, root)
    return {
        "valid": not problems,
        "errors": [{"path": p.path, "rule": p.rule, "message": p.message} for p in problems],
    }
