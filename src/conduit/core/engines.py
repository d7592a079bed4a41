"""Which engine runs a program of a language that has several (Python: Pyodide or Monty), decided once,
before the program runs.

The engines are data in the language table (:attr:`~conduit.core.languages.Language.engines`): the first
is the language's own runtime, which runs every program; the others run only what fits them. ``engine``
comes from the request, else from ``pythonEngine`` in config, and a named engine is taken as asked.
``auto`` asks each further engine's runtime, in order, whether the program is within what it runs as the
language's own would (Monty: :mod:`conduit.sandbox.monty.check`); a program that fits none, or any
program while they are unavailable, runs on the first. The program is never run twice, whatever the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from conduit.core.languages import Engine, Language
from conduit.errors import SandboxStartError
from conduit.sandbox.base import Runtime

logger = logging.getLogger(__name__)


class Verdict(Protocol):
    fits: bool
    reason: str


@runtime_checkable
class CheckingRuntime(Protocol):
    """A runtime that tells, without running a program, whether it runs it as the language's own would."""

    def problem(self) -> str | None: ...

    async def check(self, program: str, sdk: str) -> Verdict: ...


async def choose(language: Language, requested: str, runtimes: Mapping[str, Runtime], program: str, sdk: str) -> Engine:
    """The engine of ``language`` for ``program`` (whose SDK, the language's own, is ``sdk``): ``requested``
    is ``auto`` or an engine's name.

    Raises:
        SandboxStartError: an engine was asked for by name and its runtime is not running.
    """
    if requested != "auto":
        engine = language.engine(requested)
        if engine.runtime not in runtimes:
            raise SandboxStartError(f"the {engine.title} engine is not available")
        return engine
    own, *further = language.engines
    for engine in further:
        runtime: object = runtimes.get(engine.runtime)
        if not isinstance(runtime, CheckingRuntime) or runtime.problem():
            continue  # unavailable: the language's own runs it
        verdict = await runtime.check(program, sdk)
        if verdict.fits:
            return engine
        logger.debug("program runs on %s: %s", own.title, verdict.reason)
    return own
