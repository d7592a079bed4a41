"""Conduit's runtime inside every Pyodide sandbox: the ``_conduit`` module.

Loaded by ``pyodide_harness.js`` before the sandbox is sealed; ``run`` executes one program:
it builds the ``tools`` SDK from the generated source it is given, runs the program with
top-level ``await``, and returns the outcome record as JSON. The value of the program's last
expression becomes ``result``; an exception prints a traceback of the program's own frames.
"""

import builtins
import json
import linecache
import re
import sys
import traceback
import types

import _conduit_bridge  # registered by the harness: call(method, params_json) -> Promise[str], the protocol
from pyodide.code import eval_code_async
from pyodide.ffi import JsException

PROGRAM = "program.py"
CALL_TOOL = _conduit_bridge.CALL_TOOL
DISCOVER_TOOLS = _conduit_bridge.DISCOVER_TOOLS
_records = types.ModuleType("_conduit_records")  # conduit/sandbox/protocol/records.py, as the host has it
exec(compile(_conduit_bridge.RECORDS, "<conduit-records>", "exec"), _records.__dict__)
_OUT_OF_MEMORY = re.compile(
    r"RangeError: .*(allocation failed|could not allocate memory|unable to grow instance memory|out of memory)",
    re.IGNORECASE,
)


class ToolError(Exception):
    """A tool call failed: denied (-32003), unknown (-32004), upstream failure (-32005/-32006), ...

    ``data`` is what the host sent besides the message: for a typed call whose tool answered
    ``isError``, the raw CallToolResult.
    """

    def __init__(self, code, message, data=None):
        super().__init__(message)
        self.code = code
        self.data = data


_MISSING = object()


async def call(method, params):
    answer = json.loads(await _conduit_bridge.call(method, json.dumps(params)))
    if "error" in answer:
        error = answer["error"]
        raise ToolError(
            error.get("code", _conduit_bridge.INTERNAL_ERROR),
            error.get("message", "tool call failed"),
            error.get("data"),
        )
    return answer["result"]


_capabilities = {"call": call, "_MISSING": _MISSING, "CALL_TOOL": CALL_TOOL, "DISCOVER_TOOLS": DISCOVER_TOOLS}
exec(compile(_conduit_bridge.CAPABILITIES, "<conduit-capabilities>", "exec"), _capabilities)
invoke = _capabilities["invoke"]
discover_mcp_tools = _capabilities["discover_mcp_tools"]


def _program_traceback(exc):
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == PROGRAM]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


async def run(code, sdk_source, max_result_bytes):
    sdk = types.ModuleType("conduit_tools")
    sdk.__dict__.update({"invoke": invoke, "call": call, "_MISSING": _MISSING})
    exec(compile(sdk_source, "<tools>", "exec"), sdk.__dict__)
    sys.modules["conduit_tools"] = sdk
    namespace = {
        "__name__": "__main__",
        "__builtins__": builtins,
        "tools": sdk.tools,
        "discover_mcp_tools": discover_mcp_tools,
        "ToolError": ToolError,
    }
    linecache.cache[PROGRAM] = (len(code), None, code.splitlines(True), PROGRAM)
    try:
        value = await eval_code_async(code, namespace, filename=PROGRAM)
        record = _records.value_record(value, max_result_bytes)
    except SystemExit as exc:
        record = _records.exit_record(exc.code)
    except MemoryError as exc:
        sys.stderr.write(_program_traceback(exc))
        record = _records.limit_record("memory")
    except JsException as exc:  # a JavaScript allocation the limit refused (a WebAssembly memory at its ceiling)
        sys.stderr.write(_program_traceback(exc))
        if _OUT_OF_MEMORY.search(str(exc)):
            record = _records.limit_record("memory")
        else:
            record = _records.error_record(type(exc).__name__, str(exc))
    except BaseException as exc:  # the program's own failure, whatever it raised
        sys.stderr.write(_program_traceback(exc))
        record = _records.error_record(type(exc).__name__, str(exc))
    sys.stdout.flush()
    sys.stderr.flush()
    return json.dumps(record)


_module = types.ModuleType("_conduit", __doc__)
for _name in ("run", "ToolError", "discover_mcp_tools", "invoke", "call"):
    setattr(_module, _name, globals()[_name])
sys.modules["_conduit"] = _module
