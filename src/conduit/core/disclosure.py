"""Progressive disclosure: what an agent can learn about upstream tools without loading every schema.

Packages (upstreams) first, then one package's tools as one-line signatures, then one tool's full
declaration (TypeScript or Python, the form a program calls it in, typed by its schemas) or its JSON
Schemas, or a ranked search across everything. Answers are short on purpose: a line per tool, the
first sentence of a description, pages of stubs; the full text is one ``read_tool_schema`` away.
All of it is computed from the gateway's catalog, so it always matches what the sandboxes' SDKs contain.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, Final

from conduit.catalog import Catalog, ToolEntry, ToolId
from conduit.core.validation import check_arguments, usable_schema
from conduit.errors import InvalidParamsError
from conduit.sdk.naming import layout, sdk_names
from conduit.sdk.python import python_declaration
from conduit.sdk.typescript import brief_type, typescript_declaration

SEARCH_LIMIT: Final = 6
STUBS_PAGE: Final = 10
SUMMARY_CHARS: Final = 80
FORMATS: Final = ("typescript", "python", "json")
_TERM: Final = re.compile(r"[a-z0-9]+")
_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s")


def summary(text: str) -> str:
    """The first sentence of a description's first line, at most ``SUMMARY_CHARS`` long.

    >>> summary("  Get the time. In any zone.\\nMore detail.")
    'Get the time.'
    >>> summary("word " * 30)[-11:]
    'word word …'
    """
    stripped = text.strip()
    first = _SENTENCE_END.split(stripped.splitlines()[0], maxsplit=1)[0] if stripped else ""
    if len(first) <= SUMMARY_CHARS:
        return first
    return first[: first.rfind(" ", 0, SUMMARY_CHARS - 1)].rstrip(",;:") + " …"


def list_packages(catalog: Catalog, transports: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every package reached (an upstream by its transport, Conduit's own as ``conduit``): how many tools it
    offers, and whether it answered."""
    packages = []
    for upstream_id, transport in transports.items():
        package: dict[str, Any] = {
            "packageId": upstream_id,
            "transport": transport,
            "toolCount": sum(1 for entry in catalog.tools if entry.upstream == upstream_id),
            "status": "unavailable" if upstream_id in catalog.failures else "ok",
        }
        if upstream_id in catalog.failures:
            package["reason"] = catalog.failures[upstream_id]
        packages.append(package)
    return packages


def list_stubs(
    catalog: Catalog, package_id: Any, offset: Any = None, limit: Any = None, reached: Collection[str] = ()
) -> dict[str, Any]:
    """One package's tools, a page at a time: ``name(args): result — summary`` each, in the SDK's names. A
    package ``reached`` that offers no tools (no skill saved yet) answers an empty page.

    Raises:
        ConduitError: no such package, or a bad offset or limit (INVALID_PARAMS).
    """
    if not isinstance(package_id, str) or not package_id:
        raise InvalidParamsError("packageId must be a non-empty string")
    offset = _bounded("offset", offset, 0, 0, 1_000_000)
    limit = _bounded("limit", limit, STUBS_PAGE, 1, 100)
    entries = [entry for entry in catalog.tools if entry.upstream == package_id]
    if not entries and package_id in reached and package_id not in catalog.failures:
        return {"package": package_id, "tools": []}
    if not entries and package_id not in catalog.failures:
        known = sorted({entry.upstream for entry in catalog.tools} | set(catalog.failures) | set(reached))
        raise InvalidParamsError(f"unknown package {package_id!r} (known: {', '.join(known) or 'none'})")
    if not entries:
        raise InvalidParamsError(f"package {package_id!r} is unavailable: {catalog.failures[package_id]}")
    [package] = layout(entries)
    page = package.tools[offset : offset + limit]
    answer: dict[str, Any] = {"package": package_id, "tools": [stub(entry, name) for entry, name in page]}
    if offset + limit < len(entries):
        answer["nextOffset"] = offset + limit
        answer["total"] = len(entries)
    return answer


def stub(entry: ToolEntry, name: str) -> str:
    """One tool in a line: its SDK name, argument and result types in brief, and its summary.

    >>> stub(ToolEntry("t", "now", "Current time.\\nIn a zone.", {"type": "object",
    ...     "properties": {"zone": {"type": "string"}}, "required": ["zone"]}), "now")
    'now({zone: string}): CallToolResult — Current time.'
    """
    returned = brief_type(entry.output_schema) if entry.output_schema else "CallToolResult"
    line = f"{name}({brief_type(entry.input_schema)}): {returned}"
    described = summary(entry.description)
    return f"{line} — {described}" if described else line


def _bounded(name: str, value: Any, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParamsError(f"{name} must be an integer from {low} to {high}")
    return value


def find_tool(catalog: Catalog, tool_id: Any) -> ToolEntry:
    """The tool named ``upstream__tool`` or ``upstream.tool``, by its upstream's names or the SDK's.

    Raises:
        ConduitError: not a string, or no such tool (INVALID_PARAMS).
    """
    if not isinstance(tool_id, str) or not tool_id:
        raise InvalidParamsError("the tool id must be a non-empty string")
    parsed = ToolId.parse(tool_id)
    entry = catalog.find(parsed.qualified)
    if entry is None and parsed.upstream is not None:  # the SDK's name: tools.<package>.<name>
        wanted = f"{parsed.upstream}.{parsed.tool}"
        qualified = next((q for q, name in sdk_names(catalog.tools).items() if name == wanted), None)
        entry = catalog.find(qualified) if qualified is not None else None
    if entry is None:
        raise InvalidParamsError(f"unknown tool {tool_id!r} (search with conduit__mcp_search_tools)")
    return entry


def read_schema(catalog: Catalog, tool_id: Any, form: Any = None) -> dict[str, Any]:
    """One tool in full, in ``form``: ``typescript`` (default) or ``python``, the declaration a program calls
    (typed by its input and output schemas, with its description and argument docs); ``json``, its
    description and JSON Schemas (``outputSchema``, the shape of its typed value, when it publishes one).

    Raises:
        ConduitError: no such tool, or an unknown form (INVALID_PARAMS).
    """
    entry = find_tool(catalog, tool_id)
    form = form or "typescript"
    if form not in FORMATS:
        raise InvalidParamsError(f"format must be one of {', '.join(FORMATS)}")
    if form == "typescript":
        return {"toolId": entry.qualified, "declaration": typescript_declaration(entry)}
    if form == "python":
        return {"toolId": entry.qualified, "declaration": python_declaration(entry)}
    output = {"outputSchema": dict(entry.output_schema)} if entry.output_schema else {}
    return {
        "toolId": entry.qualified,
        "description": entry.description,
        "inputSchema": dict(entry.input_schema),
        **output,
    }


def search(catalog: Catalog, query: Any, limit: Any = None) -> list[str]:
    """Tools ranked by how well their names, packages and descriptions match ``query``'s words, each as
    ``package.tool: summary``, best first.

    A word equal to the tool's name scores 10, equal to a word of the name 6, inside the name 3,
    equal to the package 4, a word of the description 2, inside the description 1.

    Raises:
        ConduitError: the query has no words, or the limit is not 1..50 (INVALID_PARAMS).
    """
    if not isinstance(query, str) or not _TERM.findall(query.lower()):
        raise InvalidParamsError("query must be a string with at least one word")
    limit = _bounded("limit", limit, SEARCH_LIMIT, 1, 50)
    terms = _TERM.findall(query.lower())
    ranked = []
    for entry in catalog.tools:
        score = _score(entry, terms)
        if score > 0:
            ranked.append((score, entry))
    ranked.sort(key=lambda pair: (-pair[0], pair[1].qualified))
    names = sdk_names(catalog.tools)
    return [f"{names[entry.qualified]}: {summary(entry.description)}".rstrip(": ") for _, entry in ranked[:limit]]


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
