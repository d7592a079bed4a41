# Conduit's runtime inside every Monty sandbox, fed before the SDK and the program (never imported on the host),
# after the protocol's method names (`_CALL_TOOL`, `_DISCOVER_TOOLS`: conduit.sandbox.protocol.PRELUDE_CONSTANTS).
#
# Monty has no user-defined exception classes, so a failed call raises the host's answer as an
# `Exception` whose message is the bridge's; `_conduit_call` is the host function (an external
# function of the session) that authenticates the call with the execution's token.


class _Missing:
    def __repr__(self):
        return "<not given>"


_MISSING = _Missing()


async def call(method, params):
    answer = await _conduit_call(method, params)  # noqa: F821 (the host function)
    if "error" in answer:
        raise Exception(answer["error"]["message"])
    return answer["result"]


async def invoke(name, args, kwargs, structured=False):
    """Call tool `name` with a dict of arguments and/or keyword arguments (keywords win); `structured`:
    get its `structuredContent` (a tool with an output schema), raising if it answers `isError`."""
    if args is not None and not isinstance(args, dict):
        raise TypeError(f"{name}: pass arguments as keywords or as one dict, not {type(args).__name__}")
    merged = dict(args or {})
    merged.update({key: value for key, value in kwargs.items() if value is not _MISSING})
    params = {"name": name, "arguments": merged}
    if structured:
        params["structured"] = True
    return await call(_CALL_TOOL, params)  # noqa: F821 (the protocol's names, fed first)


async def discover_mcp_tools(query=None):
    """The tools this execution may call: name, upstream, tool, description, inputSchema."""
    return await call(_DISCOVER_TOOLS, {} if query is None else {"query": query})  # noqa: F821
