# What programs of every Python runtime call the host with: the `tools` SDK's `invoke` and `discover_mcp_tools`
# (never imported on the host). Each runtime's prelude defines `call(method, params)` (its way to the bridge,
# raising the host's error), `_MISSING` and the method names `CALL_TOOL` and `DISCOVER_TOOLS`, then runs this
# source in its own namespace: Monty's is fed it after the prelude, Pyodide's executes it from the harness.
# A further host capability for Python programs is one more function here (and its bridge method).


async def invoke(name, args, kwargs, structured=False):
    """Call tool `name` with a dict of arguments and/or keyword arguments (keywords win); `structured`:
    get its `structuredContent` (a tool with an output schema), raising if it answers `isError`."""
    if args is not None and not isinstance(args, dict):
        raise TypeError(f"{name}: pass arguments as keywords or as one dict, not {type(args).__name__}")
    merged = dict(args or {})
    merged.update({key: value for key, value in kwargs.items() if value is not _MISSING})  # noqa: F821
    params = {"name": name, "arguments": merged}
    if structured:
        params["structured"] = True
    return await call(CALL_TOOL, params)  # noqa: F821


async def discover_mcp_tools(query=None):
    """The tools this execution may call: name, upstream, tool, description, inputSchema."""
    return await call(DISCOVER_TOOLS, {} if query is None else {"query": query})  # noqa: F821
