"""The host–sandbox protocol: everything both sides of a sandbox must agree on, in one place.

- **Bridge methods** a program's SDK calls (with its session token) and the master token's.
- **Markers**: a sandbox writes its outcome record on stdout behind ``RESULT_PREFIX`` + the job's
  nonce, and ``END_PREFIX`` + the nonce on stderr, after all of the program's output; the nonce
  (:func:`new_nonce`) is per job, so a program cannot forge either.
- **Records**: the outcome record's shapes (:mod:`conduit.sandbox.protocol.records`).
- **Codes** the harnesses answer with themselves (the bridge unreachable, arguments that are not JSON):
  :mod:`conduit.errors`' on the host, repeated in ``protocol.json`` for JavaScript.

The values live in ``protocol.json`` beside this file: the JavaScript side (``common.js``, imported by
every Deno harness) reads the same file; the Pyodide harness hands the method names, the records' source
and the calls every Python runtime shares (``capabilities.py``) to its Python prelude; Monty's prelude is
fed the method names and those calls by the host (:data:`PRELUDE_CONSTANTS`, :data:`CAPABILITIES_SOURCE`);
the SDK generators spell the method names from here.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any, Final

FOLDER: Final = Path(__file__).parent
"""The protocol's files (``protocol.json``, the JavaScript side ``common.js`` and ``result.js``, ``records.py``):
readable by every Deno sandbox."""
_SHARED: Final[dict[str, Any]] = json.loads((FOLDER / "protocol.json").read_text(encoding="utf-8"))

DISCOVER_TOOLS: Final[str] = _SHARED["methods"]["discoverTools"]
CALL_TOOL: Final[str] = _SHARED["methods"]["callTool"]
REGISTER_UPSTREAM: Final[str] = _SHARED["methods"]["registerUpstream"]
EXECUTE_PREFIX: Final[str] = _SHARED["methods"]["executePrefix"]
"""``mcp_execute_<language>`` runs a program (master token only)."""
SESSION_METHODS: Final = frozenset({DISCOVER_TOOLS, CALL_TOOL})
"""The only bridge methods a session token may call."""

RESULT_PREFIX: Final[bytes] = _SHARED["resultPrefix"].encode()
END_PREFIX: Final[bytes] = _SHARED["endPrefix"].encode()

JAVASCRIPT_CODES: Final[dict[str, int]] = _SHARED["codes"]
"""The codes the JavaScript harnesses answer with themselves: :mod:`conduit.errors`' (a test holds them equal)."""

RECORDS_SOURCE: Final = (FOLDER / "records.py").read_text(encoding="utf-8")
"""The records module's source, as the Pyodide harness loads it inside the sandbox."""

PRELUDE_CONSTANTS: Final = f"CALL_TOOL = {CALL_TOOL!r}\nDISCOVER_TOOLS = {DISCOVER_TOOLS!r}\n"
"""The method names as Python, for a prelude the host feeds as source (Monty's)."""
CAPABILITIES_SOURCE: Final = (FOLDER / "capabilities.py").read_text(encoding="utf-8")
"""What programs of every Python runtime call the host with (``invoke``, ``discover_mcp_tools``), as source each
prelude runs after defining its own ``call``."""


def new_nonce() -> str:
    """A job's nonce: what its markers end with (128 random bits, as hex)."""
    return secrets.token_hex(16)
