"""Which engine runs a Python program: Monty or Pyodide, decided once, before the program runs.

``engine`` comes from the request, else from ``pythonEngine`` in config. ``monty`` and ``pyodide``
are taken as asked. ``auto`` asks the Monty runtime whether the program is within what Monty runs
as CPython would (:mod:`conduit.sandbox.monty.check`); a program that is not, or any program while
Monty is unavailable, runs on Pyodide. The program is never run twice, whatever the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from conduit.config.schema import PYTHON_ENGINES
from conduit.errors import InvalidParamsError, SandboxStartError
from conduit.sandbox.base import Runtime
from conduit.sandbox.monty.runtime import MontyRuntime

logger = logging.getLogger(__name__)

RUNTIME_OF: Final = {"monty": "monty", "pyodide": "python"}
"""Engine name -> the runtime that is it."""


@dataclass(frozen=True)
class Choice:
    engine: str
    """``monty`` or ``pyodide``: what the outcome reports."""
    runtime: str
    """The runtime's name (``monty`` or ``python``)."""
    reason: str = ""
    """Why ``auto`` did not choose Monty."""


def requested_engine(value: Any, default: str) -> str:
    """The engine a request asks for (its own, else the configured one).

    Raises:
        InvalidParamsError: not one of ``auto``, ``monty``, ``pyodide``.
    """
    if value is None:
        return default
    if value not in PYTHON_ENGINES:
        raise InvalidParamsError(f"engine must be one of {', '.join(PYTHON_ENGINES)}")
    return str(value)


async def choose(engine: str, runtimes: Mapping[str, Runtime], program: str, sdk: str) -> Choice:
    """The engine for ``program`` (whose SDK is ``sdk``).

    Raises:
        SandboxStartError: ``engine: monty`` was asked for and Monty is unavailable.
    """
    monty = runtimes.get("monty")
    if engine == "pyodide":
        return Choice("pyodide", RUNTIME_OF["pyodide"])
    if engine == "monty":
        if monty is None:
            raise SandboxStartError("the Monty engine is not available")
        return Choice("monty", RUNTIME_OF["monty"])
    if not isinstance(monty, MontyRuntime) or monty.problem():
        return Choice("pyodide", RUNTIME_OF["pyodide"], "Monty is unavailable")
    verdict = await monty.check(program, sdk)
    if verdict.fits:
        return Choice("monty", RUNTIME_OF["monty"])
    logger.debug("program runs on Pyodide: %s", verdict.reason)
    return Choice("pyodide", RUNTIME_OF["pyodide"], verdict.reason)
