"""What a program that names a tool its SDK lacks is told, instead of the runtime's bare error; and what a
request whose ``allowedTools`` reaches no upstream is warned.

A tool a run may not call is absent from its SDK, as is one that does not exist: the program cannot tell
them apart, and must not. So calling one fails in the runtime itself (``tools.catalog.get_stock is not a
function``, ``'_Tools' object has no attribute 'catalog'``), which reads like a bug in the program. The
host knows which name the program reached for and which names the run has, and rewrites that error into
what happened and what to do, with the closest names the run may call. It never names a tool the run may
not call: the suggestions come from the run's own SDK.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Final

from conduit.catalog import Catalog
from conduit.errors import PROGRAM_ERROR
from conduit.sandbox.base import ProgramFailure, RunOutcome
from conduit.sdk.naming import identifier, sdk_names

SEARCH_TOOL: Final = "conduit__mcp_search_tools"

_JS_TOOL: Final = re.compile(r"tools\.([A-Za-z_$][\w$]*)\.([A-Za-z_$][\w$]*) is not a function")
_JS_UNDEFINED: Final = re.compile(r"Cannot read properties of undefined \(reading '([^']+)'\)")
_PY_PACKAGE: Final = re.compile(r"'_Tools' object has no attribute '([^']+)'")
_PY_TOOL: Final = re.compile(r"'_(\w+?)_tools' object has no attribute '([^']+)'")


def explain_missing_tool(outcome: RunOutcome, program: str, visible: Catalog) -> RunOutcome:
    """``outcome`` with a clear error when the program failed reaching for a tool or package its SDK lacks,
    or for the package of an upstream that is down (its reason).

    >>> from conduit.catalog import ToolEntry
    >>> entry = ToolEntry("catalog", "get_stock", "", {})
    >>> why = ProgramFailure(PROGRAM_ERROR, "TypeError: tools.catalog.get_stok is not a function")
    >>> failed = RunOutcome("", "", 1, why)
    >>> print(explain_missing_tool(failed, "", Catalog((entry,))).error.message)
    no tool 'get_stok' in package 'catalog' for this run (unknown or not allowed); see conduit__mcp_search_tools; \
closest: tools.catalog.get_stock (TypeError: tools.catalog.get_stok is not a function)
    """
    error = outcome.error
    if error is None or error.code != PROGRAM_ERROR:
        return outcome
    found = _reached_for(error.message, program)
    if found is None:
        return outcome
    package, tool = found
    names = sorted(sdk_names(visible.tools).values())
    packages = sorted({name.split(".", 1)[0] for name in names})
    if package is not None and tool is not None and package in packages:
        close = difflib.get_close_matches(f"{package}.{tool}", names, n=3, cutoff=0.6)
        hint = f"no tool {tool!r} in package {package!r} for this run (unknown or not allowed); see {SEARCH_TOOL}"
        hint += f"; closest: {', '.join(f'tools.{name}' for name in close)}" if close else ""
    elif package is not None and (down := _down(package, visible.failures)) is not None:
        hint = f"package {package!r} is unavailable: {down}"
    elif package is not None:
        close = difflib.get_close_matches(package, packages, n=3, cutoff=0.6)
        hint = f"no package {package!r} for this run (no such upstream, or not allowed); see {SEARCH_TOOL}"
        hint += f"; closest: {', '.join(close)}" if close else f"; packages here: {', '.join(packages) or 'none'}"
    else:
        return outcome
    return dataclasses.replace(outcome, error=ProgramFailure(error.code, f"{hint} ({error.message})"))


def _reached_for(message: str, program: str) -> tuple[str | None, str | None] | None:
    """The package and tool the failed program reached for, as far as its error (and source) tell."""
    if match := _JS_TOOL.search(message):
        return match[1], match[2]
    if match := _PY_TOOL.search(message):
        return match[1], match[2]
    if match := _PY_PACKAGE.search(message):
        return match[1], None
    if match := _JS_UNDEFINED.search(message):  # tools.<package>.<tool> with no such package: find it in the source
        written = re.search(rf"tools\s*\.\s*([A-Za-z_$][\w$]*)\s*\.\s*{re.escape(match[1])}\b", program)
        if written:
            return written[1], None
    return None


def unmatched_patterns(patterns: Iterable[str], visible: Catalog) -> list[str]:
    """A warning line for each requested ``upstream.*`` / ``upstream.tool`` pattern that names no upstream the
    run could use (a typo, or a config without it). Judged against what the caller may reach, so it tells
    nothing of upstreams its policy hides. The run sees them first on its stderr.

    >>> from conduit.catalog import ToolEntry
    >>> print(*unmatched_patterns(["catalog.*", "time.now", "*"], Catalog((ToolEntry("time", "now", "", {}),))))
    conduit: warning: allowedTools pattern 'catalog.*' matches no upstream this run can use (upstreams here: time)
    <BLANKLINE>
    """
    reachable = {entry.upstream for entry in visible.tools} | set(visible.failures)
    return [
        f"conduit: warning: allowedTools pattern {pattern!r} matches no upstream this run can use "
        f"(upstreams here: {', '.join(sorted(reachable)) or 'none'})\n"
        for pattern in patterns
        if "." in pattern and pattern.split(".", 1)[0] not in reachable
    ]


def _down(package: str, failures: Mapping[str, str]) -> str | None:
    """Why the upstream a program calls ``package`` is down, if it is one of ``failures``."""
    return next((why for upstream, why in failures.items() if identifier(upstream) == package), None)
