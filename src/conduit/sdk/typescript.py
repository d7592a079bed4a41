"""The TypeScript/JavaScript SDK a sandbox loads to get ``tools`` and ``discoverMCPTools``.

The SDK is one function, ``createTools(call)``; the harness passes it the bridge's
request function. Every tool becomes ``tools.<upstream>.<tool>(args)`` with a doc comment
and an argument type derived from its JSON Schema. A tool that publishes an output schema
resolves to its ``structuredContent``, typed by that schema (:mod:`conduit.core.typed`); any
other resolves to its ``CallToolResult``. ``tools.$raw(name, args)`` reaches any tool by its
qualified name and always resolves to the whole result. The SDK only shapes calls: the host
checks every call and every discovery against the execution's allowlist, whatever the program sends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from conduit.catalog import ToolEntry
from conduit.sandbox.protocol import CALL_TOOL, DISCOVER_TOOLS
from conduit.sdk.naming import identifier, layout

_MAX_DEPTH: Final = 6
_PRIMITIVES: Final = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean", "null": "null"}


def doc_comment(text: str, indent: str) -> str:
    """``text`` as a JSDoc block (``*/`` neutralised), or nothing for empty text."""
    lines = [line.rstrip() for line in text.replace("*/", "*\u2215").strip().splitlines()]
    if not lines:
        return ""
    if len(lines) == 1:
        return f"{indent}/** {lines[0]} */\n"
    body = "\n".join(f"{indent} *{' ' + line if line else ''}" for line in lines)
    return f"{indent}/**\n{body}\n{indent} */\n"


def schema_type(schema: Any, depth: int = 0, root: Mapping[str, Any] | None = None) -> str:
    """A TypeScript type for a JSON Schema; ``unknown`` wherever the schema says too little.

    ``$ref`` to the root's ``$defs`` (or ``definitions``) is expanded in place, a recursive one down to
    ``unknown`` past the depth limit; ``nullable: true`` adds ``| null``.

    >>> schema_type({"type": "object", "properties": {"a": {"type": "string"}, "b": {"enum": [1, "x"]}},
    ...              "required": ["a"]})
    '{ a: string; b?: 1 | "x" }'
    >>> schema_type({"$defs": {"n": {"type": "integer", "nullable": True}}, "type": "array",
    ...              "items": {"$ref": "#/$defs/n"}})
    'Array<number | null>'
    """
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return "unknown"
    if root is None:
        root = schema
    if schema.get("nullable") is True:
        plain = schema_type({key: value for key, value in schema.items() if key != "nullable"}, depth, root)
        return plain if plain in ("unknown", "null") else f"{plain} | null"
    reference = schema.get("$ref")
    if isinstance(reference, str):
        return schema_type(_resolve(reference, root), depth + 1, root)
    if "const" in schema:
        return json.dumps(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    for combinator in ("anyOf", "oneOf"):
        if isinstance(schema.get(combinator), list) and schema[combinator]:
            return " | ".join(schema_type(option, depth + 1, root) for option in schema[combinator])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(schema_type({**schema, "type": item}, depth + 1, root) for item in kind) or "unknown"
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "array":
        item = schema_type(schema.get("items"), depth + 1, root)
        return f"Array<{item}>"
    if kind == "object" or "properties" in schema:
        return _object_type(schema, depth, root)
    return "unknown"


BRIEF_MEMBERS: Final = 6
BRIEF_ENUM: Final = 4


def brief_type(schema: Any, depth: int = 0, root: Mapping[str, Any] | None = None) -> str:
    """A schema's type in brief, for a one-line stub: the top object's members, ``{…}`` below it.

    >>> brief_type({"type": "object", "properties": {"path": {"type": "string"}, "n": {"type": "integer"},
    ...     "opts": {"type": "object", "properties": {"a": {}}}, "tags": {"type": "array", "items": {"enum": [1, 2]}}},
    ...     "required": ["path"]})
    '{path: string, n?: number, opts?: {…}, tags?: (1|2)[]}'
    >>> brief_type({"enum": ["a", "b"]})
    "'a'|'b'"
    >>> brief_type({"type": "object", "properties": {}}), brief_type({"enum": list("abcde")})
    ('{}', 'string')
    """
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return "unknown"
    if root is None:
        root = schema
    nullable = "|null" if schema.get("nullable") is True else ""
    reference = schema.get("$ref")
    if isinstance(reference, str):
        return brief_type(_resolve(reference, root), depth, root) + nullable
    if "const" in schema:
        return _literal(schema["const"]) + nullable
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        if len(enum) > BRIEF_ENUM:
            kinds = {type(value).__name__ for value in enum}
            return ("string" if kinds == {"str"} else "number" if kinds <= {"int", "float"} else "unknown") + nullable
        return "|".join(_literal(value) for value in enum) + nullable
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            return "|".join(dict.fromkeys(brief_type(option, depth, root) for option in options)) + nullable
    kind = schema.get("type")
    if isinstance(kind, list):
        return "|".join(brief_type({**schema, "type": item}, depth, root) for item in kind) or "unknown"
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind] + nullable
    if kind == "array":
        item = brief_type(schema.get("items"), depth + 1, root)
        return (f"({item})[]" if "|" in item else f"{item}[]") + nullable
    properties = schema.get("properties")
    if kind == "object" or isinstance(properties, Mapping):
        if not isinstance(properties, Mapping) or not properties:
            return ("{}" if isinstance(properties, Mapping) else "object") + nullable
        if depth > 0:
            return "{…}" + nullable
        required = set(schema.get("required") or ())
        members = [
            f"{name if name.isidentifier() else json.dumps(name)}{'' if name in required else '?'}: "
            f"{brief_type(sub, depth + 1, root)}"
            for name, sub in list(properties.items())[:BRIEF_MEMBERS]
        ]
        more = ", …" if len(properties) > BRIEF_MEMBERS else ""
        return "{" + ", ".join(members) + more + "}" + nullable
    return "unknown"


def _literal(value: Any) -> str:
    """A literal type, strings single-quoted (no escaped quotes once the stub is JSON)."""
    if isinstance(value, str) and "'" not in value and "\\" not in value:
        return f"'{value}'"
    return json.dumps(value)


def _resolve(reference: str, root: Mapping[str, Any]) -> Any:
    """The schema ``#/$defs/name`` (or ``#/definitions/name``) names in ``root``; None for any other reference."""
    for prefix in ("#/$defs/", "#/definitions/"):
        if reference.startswith(prefix):
            defs = root.get(prefix[2:-1])
            return defs.get(reference.removeprefix(prefix)) if isinstance(defs, Mapping) else None
    return None


def result_type(entry: ToolEntry) -> str:
    """What a call of the tool resolves to: the type its output schema gives, else ``CallToolResult``."""
    return schema_type(entry.output_schema) if entry.output_schema else "CallToolResult"


def _object_type(schema: Mapping[str, Any], depth: int, root: Mapping[str, Any]) -> str:
    properties = schema.get("properties")
    required = set(schema.get("required") or ())
    members: list[str] = []
    described = False
    if isinstance(properties, Mapping):
        for name, sub in properties.items():
            optional = "" if name in required else "?"
            key = json.dumps(name) if not name.isidentifier() else name
            member = f"{key}{optional}: {schema_type(sub, depth + 1, root)}"
            description = sub.get("description") if isinstance(sub, Mapping) else None
            if depth == 0 and isinstance(description, str) and description.strip():
                described = True
                member = doc_comment(description, "  ") + "  " + member
            members.append(member)
    extra = schema.get("additionalProperties", True)
    if extra is not False and not members:
        return "Record<string, unknown>"
    if not members:
        return "Record<string, never>"
    if described:  # one member per line, each under its description
        return "{\n" + "".join(f"{m if m.startswith('  ') else '  ' + m};\n" for m in members) + "}"
    return "{ " + "; ".join(members) + " }"


def _tool_member(entry: ToolEntry, name: str, typed: bool) -> str:
    qualified = json.dumps(entry.qualified)
    through = "value" if entry.output_schema else "invoke"
    if typed:
        args_type = schema_type(entry.input_schema)
        optional = "?" if not (entry.input_schema or {}).get("required") else ""
        comment = doc_comment(entry.description, "      ")
        returned = f"Promise<{result_type(entry)}>"
        return f"{comment}      {name}: (args{optional}: {args_type}): {returned} => {through}({qualified}, args),\n"
    text = f"{entry.description}\n@param {{{schema_type(entry.input_schema)}}} args".strip()
    comment = doc_comment(text, "      ")
    return f"{comment}      {name}: (args) => {through}({qualified}, args),\n"


def _upstream_blocks(entries: Iterable[ToolEntry], typed: bool) -> str:
    blocks: list[str] = []
    for package in layout(entries):
        members = "".join(_tool_member(entry, name, typed) for entry, name in package.tools)
        comment = doc_comment(f"Tools of upstream '{package.upstream}'.", "    ")
        blocks.append(f"{comment}    {package.attribute}: Object.freeze({{\n{members}    }}),\n")
    return "".join(blocks)


def typescript_declaration(entry: ToolEntry) -> str:
    """How a program calls one tool, as a typed TypeScript declaration with its doc comment."""
    upstream, name = identifier(entry.upstream), identifier(entry.name)
    optional = "?" if not (entry.input_schema or {}).get("required") else ""
    comment = doc_comment(_with_hints(entry), "")
    signature = f"(args{optional}: {schema_type(entry.input_schema)}) => Promise<{result_type(entry)}>"
    return f"{comment}tools.{upstream}.{name}: {signature}"


def _with_hints(entry: ToolEntry) -> str:
    """The description, and what the tool's annotations say of it (``Hints: read-only, idempotent.``)."""
    return f"{entry.description.strip()}\nHints: {entry.hints}." if entry.hints else entry.description


def generate_typescript_sdk(entries: Iterable[ToolEntry]) -> str:
    """The SDK as a TypeScript module exporting ``createTools``, with types from the tools' schemas."""
    return _TYPESCRIPT.replace("/*UPSTREAMS*/\n", _upstream_blocks(entries, typed=True))


def generate_deno_sdk(entries: Iterable[ToolEntry], unavailable: Iterable[str] = ()) -> str:
    """The SDK a TypeScript sandbox imports: the JavaScript SDK as an ES module exporting ``createTools``.

    Types only serve the declarations the model reads (:func:`generate_typescript_sdk`); the sandbox
    does not type-check, so it is sent JavaScript and Deno has nothing to transpile (~1 ms per run).
    """
    return "export " + generate_javascript_sdk(entries, unavailable)


def generate_javascript_sdk(entries: Iterable[ToolEntry], unavailable: Iterable[str] = ()) -> str:
    """The SDK as a plain JavaScript function expression ``function createTools(call) {...}`` (for V8 isolates).

    Each of the ``unavailable`` upstreams (configured and allowed, but down) keeps its namespace: calling any
    of its tools asks the host, which throws -32005 with why the upstream is down.
    """
    kept = "".join(
        f"    {identifier(upstream)}: unavailable({json.dumps(upstream)}),\n" for upstream in sorted(unavailable)
    )
    return _JAVASCRIPT.replace("/*UPSTREAMS*/\n", _upstream_blocks(entries, typed=False) + kept)


_TYPESCRIPT_TEMPLATE: Final = """\
// Generated by Conduit: the tools this execution may call. Do not edit.
type Call = (method: string, params: unknown) => Promise<any>;

/** A tool call failed: denied (-32003), unknown (-32004), upstream failure (-32005/-32006), ...
 * A typed tool that answered isError throws -32005 with the raw CallToolResult as `data`. */
export interface ToolError extends Error { code: number; data?: unknown }

/** What a tool without an output schema (and `$raw`) answers. */
export interface CallToolResult {
  content: Array<{ type: string; [key: string]: unknown }>;
  structuredContent?: Record<string, unknown>;
  isError?: boolean;
}

export function createTools(call: Call) {
  const invoke = (name: string, args: unknown) => call(CALL_TOOL, { name, arguments: args ?? {} });
  const value = (name: string, args: unknown) =>
    call(CALL_TOOL, { name, arguments: args ?? {}, structured: true });
  const tools = {
/*UPSTREAMS*/
    /** Call any allowed tool by its qualified name, e.g. `$raw("github__create_issue", {...})`: the whole result. */
    $raw: (name: string, args?: Record<string, unknown>): Promise<CallToolResult> => invoke(name, args),
  };
  /** The tools this execution may call, with descriptions and input schemas. */
  const discoverMCPTools = (options?: { query?: string }) => call(DISCOVER_TOOLS, options ?? {});
  return { tools: Object.freeze(tools), discoverMCPTools };
}
"""

_JAVASCRIPT_TEMPLATE: Final = """\
function createTools(call) {
  const invoke = (name, args) => call(CALL_TOOL, { name, arguments: args ?? {} });
  const value = (name, args) => call(CALL_TOOL, { name, arguments: args ?? {}, structured: true });
  const unavailable = (upstream) =>
    new Proxy(Object.freeze({}), {
      get: (_, name) =>
        typeof name === "string" && name !== "then" ? (args) => invoke(`${upstream}__${name}`, args) : undefined,
    });
  const tools = {
/*UPSTREAMS*/
    /** Call any allowed tool by its qualified name, e.g. `$raw("github__create_issue", {...})`: the whole result. */
    $raw: (name, args) => invoke(name, args),
  };
  /** The tools this execution may call, with descriptions and input schemas. */
  const discoverMCPTools = (options) => call(DISCOVER_TOOLS, options ?? {});
  return { tools: Object.freeze(tools), discoverMCPTools };
}
"""


def _with_methods(template: str) -> str:
    """``template`` with the protocol's bridge method names spelled in (:mod:`conduit.sandbox.protocol`)."""
    return template.replace("CALL_TOOL", json.dumps(CALL_TOOL)).replace("DISCOVER_TOOLS", json.dumps(DISCOVER_TOOLS))


_TYPESCRIPT: Final = _with_methods(_TYPESCRIPT_TEMPLATE)
_JAVASCRIPT: Final = _with_methods(_JAVASCRIPT_TEMPLATE)
