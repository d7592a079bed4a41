"""Which Python programs run on Monty, decided before anything runs (``engine: auto``).

A program goes to Monty only when Monty will run it exactly as CPython would, as far as can be
known up front; otherwise it goes to Pyodide (full CPython). Nothing is ever run twice:

1. On the host, CPython parses the program. A program that is not valid Python here, names
   ``ToolError`` (Monty cannot define exception classes, so a failed call raises ``Exception``)
   or ``SystemExit``, or uses what Monty's parser refuses (``yield``, class bases or metaclasses,
   ``import *``, ``global``) goes to Pyodide.
2. Monty's type checker (ty, with stubs of Monty's own builtins and standard library, and of the
   execution's SDK) checks the whole program: an import of a module Monty does not provide, a
   builtin, method or parameter it lacks sends the program to Pyodide. Plain type errors (a
   dict of mixed values summed, an annotation the value does not match) do not: CPython ignores
   annotations, and Monty computes with the values as CPython does.

The check runs in a long-lived checker session (its own worker, behind the same walls, gone with the
session), warm, in a fraction of the time a fresh worker's checker needs. The program is never
executed there: it is fed as the body of an ``async def`` that is defined and never called, and the
host verifies with CPython's parser that defining it evaluates nothing of the program (no
decorators, defaults or annotations).
"""

from __future__ import annotations

import ast
import logging
import re
import textwrap
from collections import OrderedDict
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Final

import anyio
import pydantic_monty as pm
from anyio.abc import TaskGroup

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_S: Final = 10.0
"""A check that takes longer (a huge program, a stuck checker) gives up: the program runs on Pyodide."""
CHECKS_PER_SESSION: Final = 256
"""Checks one checker session serves before it is replaced (its type-check context grows with each)."""
WARM_AHEAD: Final = 16
"""A session's replacement is opened and warmed this many checks before it is needed (a cold checker
session takes 20–70 ms for its first check)."""
PYODIDE_NAMES: Final = {
    "ToolError": "on Monty a failed call raises Exception",
    "SystemExit": "Monty's SystemExit takes no exit code",
    "exit": "Monty's SystemExit takes no exit code",
    "quit": "Monty's SystemExit takes no exit code",
}
"""Names whose meaning Monty cannot keep: a program that uses one runs on Pyodide."""
SUPPORT_RULES: Final = frozenset(
    {
        "invalid-syntax",
        "unresolved-import",
        "unresolved-reference",
        "possibly-unresolved-reference",
        "unresolved-attribute",
        "possibly-missing-attribute",
        "unresolved-global",
        "unknown-argument",
        "missing-argument",
        "too-many-positional-arguments",
        "parameter-already-assigned",
    }
)
"""The checker's rules that mean "Monty lacks this" (a module, a builtin, a method, a parameter): a
program with one runs on Pyodide. The other rules are about the program's own types."""
STUB_PRELUDE: Final = """\
from typing import Any
_MISSING: Any
async def invoke(name: str, args: Any, kwargs: dict[str, Any], structured: bool = False) -> Any: ...
async def call(method: str, params: dict[str, Any]) -> Any: ...
async def discover_mcp_tools(query: str | None = None) -> list[dict[str, Any]]: ...
"""


@dataclass(frozen=True)
class Verdict:
    fits: bool
    reason: str = ""
    """Why the program does not fit Monty (empty when it does)."""


def host_gate(program: str) -> str | None:
    """Why CPython's view of ``program`` already rules Monty out, or None."""
    try:
        tree = ast.parse(program, "program.py")
    except (SyntaxError, ValueError) as exc:
        return f"not parsed here ({type(exc).__name__}: {exc})"
    for node in ast.walk(tree):
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name in PYODIDE_NAMES:
            return f"uses {name} ({PYODIDE_NAMES[name]})"
        if isinstance(node, ast.Yield | ast.YieldFrom):
            return "uses yield"
        if isinstance(node, ast.ClassDef) and (node.bases or node.keywords):
            return "defines a class with bases or a metaclass"
        if isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names):
            return "uses import *"
        if isinstance(node, ast.Global):
            return "declares global names (checked as a function body, they would mean something else)"
    return None


def wrapped(program: str, name: str) -> str | None:
    """``program`` as the body of ``async def name()``, or None if defining it could evaluate anything."""
    source = f"async def {name}():\n{textwrap.indent(program, '    ')}\n    pass\n"
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    if len(tree.body) != 1:
        return None
    (definition,) = tree.body
    if (
        not isinstance(definition, ast.AsyncFunctionDef)
        or definition.name != name
        or definition.decorator_list
        or definition.returns is not None
        or definition.args.args
        or definition.args.posonlyargs
        or definition.args.kwonlyargs
        or definition.args.vararg
        or definition.args.kwarg
        or getattr(definition, "type_params", None)
    ):
        return None
    return source


def stubs_for(sdk: str) -> str:
    """What the type checker knows about the names a program finds defined (the SDK and its helpers)."""
    return STUB_PRELUDE + sdk


class _CheckerSession:
    """A checked-out checker worker for one SDK: a type-check context that programs are checked against."""

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.stack = AsyncExitStack()
        self.session: pm.AsyncMontySession | None = None
        self.checks = 0
        self.ready = False
        """A spare: open, and its checker warmed by one check."""

    async def open(self, pool: pm.AsyncMonty, sdk: str) -> None:
        session = pool.checkout(
            type_check=True,
            type_check_stubs=stubs_for(sdk),
            type_check_format="concise",
            limits={"max_feed_duration_secs": 5.0, "max_memory": 64 << 20},
        )
        self.session = await self.stack.enter_async_context(session)

    async def aclose(self) -> None:
        self.session = None
        await self.stack.aclose()


class MontyChecker:
    """Type-checks programs for Monty in warm checker workers, one session per SDK (least recently used goes)."""

    def __init__(self, pool: pm.AsyncMonty, capacity: int, background: TaskGroup | None = None) -> None:
        self._pool = pool
        self._capacity = max(capacity, 1)
        self._sessions: OrderedDict[str, _CheckerSession] = OrderedDict()
        self._spares: dict[str, _CheckerSession] = {}
        """A warmed replacement per SDK, opened in ``background`` before its session is used up."""
        self._background = background
        self._guard = anyio.Lock()
        self._counter = 0

    async def check(self, program: str, sdk: str) -> Verdict:
        reason = host_gate(program)
        if reason is not None:
            return Verdict(False, reason)
        self._counter += 1
        source = wrapped(program, f"__conduit_check_{self._counter}__")
        if source is None:
            return Verdict(False, "its body would not stay unevaluated when checked")
        while True:
            checker = await self._session(sdk)
            async with checker.lock:
                if checker.session is not None:  # else it was replaced while this check waited
                    return await self._check_in(checker, sdk, source)

    async def _check_in(self, checker: _CheckerSession, sdk: str, source: str) -> Verdict:
        """Feed ``source`` to ``checker`` (whose lock the caller holds) and judge what the checker says."""
        assert checker.session is not None
        checker.checks += 1
        try:
            with anyio.fail_after(CHECK_TIMEOUT_S):
                await checker.session.feed_run(source, print_callback=lambda _stream, _text: None)
        except TimeoutError:
            logger.warning("the Monty checker took over %.0f s; the program runs on Pyodide", CHECK_TIMEOUT_S)
            await self._drop(sdk, checker)
            return Verdict(False, "the Monty checker took too long")
        except pm.MontyTypingError as exc:
            unsupported = _unsupported(exc.display())
            if unsupported:
                return Verdict(False, unsupported)
        except pm.MontySyntaxError as exc:
            return Verdict(False, f"SyntaxError: {_first_line(str(exc))}")
        except pm.MontyRuntimeError as exc:
            return Verdict(False, _first_line(str(exc)))
        except pm.MontyError as exc:
            logger.warning("the Monty checker failed (%s); the program runs on Pyodide", exc)
            await self._drop(sdk, checker)
            return Verdict(False, "the Monty checker failed")
        finally:
            if checker.checks == CHECKS_PER_SESSION - WARM_AHEAD:
                self._warm_spare(sdk)
            if checker.checks >= CHECKS_PER_SESSION:
                await self._drop(sdk, checker)
        return Verdict(True)

    def _warm_spare(self, sdk: str) -> None:
        if self._background is not None and sdk not in self._spares:
            self._spares[sdk] = _CheckerSession()
            self._background.start_soon(self._open_spare, sdk, self._spares[sdk])

    async def _open_spare(self, sdk: str, spare: _CheckerSession) -> None:
        """Open ``spare`` and check a program in it, so that its checker is warm when it takes over."""
        async with spare.lock:
            try:
                await spare.open(self._pool, sdk)
                assert spare.session is not None
                with anyio.fail_after(CHECK_TIMEOUT_S):
                    await spare.session.feed_run("async def __conduit_warm__():\n    pass\n")
                spare.checks = 1
                spare.ready = True
            except (pm.MontyError, OSError, TimeoutError) as exc:
                logger.warning("a spare Monty checker could not start: %s", exc)
                if self._spares.get(sdk) is spare:
                    del self._spares[sdk]
                await spare.aclose()

    async def _session(self, sdk: str) -> _CheckerSession:
        async with self._guard:
            existing = self._sessions.get(sdk)
            if existing is not None:
                self._sessions.move_to_end(sdk)
                return existing
            while len(self._sessions) >= self._capacity:
                gone, oldest = self._sessions.popitem(last=False)
                for checker in (oldest, self._spares.pop(gone, None)):
                    if checker is not None:
                        async with checker.lock:
                            await checker.aclose()
            spare = self._spares.get(sdk)
            if spare is not None and spare.ready:
                del self._spares[sdk]
                self._sessions[sdk] = spare
                return spare
            fresh = _CheckerSession()
            await fresh.open(self._pool, sdk)
            self._sessions[sdk] = fresh
            return fresh

    async def _drop(self, sdk: str, checker: _CheckerSession) -> None:
        """Replace ``checker`` (its lock is held by the caller) by its warmed spare if it has one, and close it."""
        if self._sessions.get(sdk) is checker:
            spare = self._spares.get(sdk)
            if spare is not None and spare.ready:
                del self._spares[sdk]
                self._sessions[sdk] = spare
            else:
                del self._sessions[sdk]
        await checker.aclose()

    async def aclose(self) -> None:
        self._background = None
        for group in (self._sessions, self._spares):
            while group:
                _, checker = group.popitem()
                await checker.aclose()


_DIAGNOSTIC: Final = re.compile(r"^\S+:\d+:\d+: error\[(?P<rule>[a-z-]+)\] (?P<message>.*)$", re.MULTILINE)


def _unsupported(diagnostics: str) -> str | None:
    """The first diagnostic that says the program uses what Monty lacks (None: only type errors).

    Anything else is about the program's own values (ty is strict about dicts of mixed values, and
    CPython does not check annotations): the program runs on Monty, which behaves as CPython does there.
    A diagnostic the checker renders in a shape this does not know counts as unsupported.
    """
    found = list(_DIAGNOSTIC.finditer(diagnostics))
    if not found:
        return _first_line(diagnostics)
    for match in found:
        if match["rule"] in SUPPORT_RULES:
            return f"error[{match['rule']}] {match['message']}"[:300]
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)[:300]
