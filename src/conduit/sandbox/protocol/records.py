"""The outcome record a sandbox reports once its program has ended, one shape for every runtime::

    {"status": "ok", "value"?: <json>, "unserializable"?: str}
    {"status": "error", "error": {"name": str, "message": str}}
    {"status": "limit", "limit": "memory" | "timeout"}       (a limit the sandbox itself saw)
    {"status": "exit", "code": int}                          (Python: SystemExit with a non-zero code)

The one Python home of these records: the host's runtimes import it (Monty, the isolate worker), and
the Pyodide harness loads this same source inside the sandbox as ``_conduit_records``, so it uses the
standard library only. The JavaScript harnesses' records are made by ``result.js`` and ``common.js``.
"""

from __future__ import annotations

import json
from typing import Any

Record = dict[str, Any]


def value_record(value: object, max_bytes: int) -> Record:
    """The record for a program's value (None: no value): the value, or why it could not be kept."""
    if value is None:
        return {"status": "ok"}
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return {"status": "ok", "unserializable": f"the value of the last expression is not JSON-serialisable: {exc}"}
    if len(text.encode()) > max_bytes:
        return {"status": "ok", "unserializable": f"the value is larger than the {max_bytes}-byte output limit"}
    return {"status": "ok", "value": json.loads(text)}


def exit_record(code: object) -> Record:
    """The record for a ``SystemExit`` with ``code`` (as Python maps it: None is 0, a non-int is 1)."""
    status = code if isinstance(code, int) else (0 if code is None else 1)
    return {"status": "ok"} if status == 0 else {"status": "exit", "code": status}


def error_record(name: str, message: str) -> Record:
    """The record for a program that failed with an error ``name`` (its type) and ``message``."""
    return {"status": "error", "error": {"name": name, "message": message}}


def limit_record(limit: str) -> Record:
    """The record for a limit the sandbox itself saw: ``memory`` or ``timeout``."""
    return {"status": "limit", "limit": limit}
