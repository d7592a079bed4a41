"""The Python SDK a Python sandbox loads: ``tools.<upstream>.<tool>(**kwargs)`` and ``tools.raw``.

Every tool becomes an ``async`` method with keyword-only arguments taken from its JSON Schema
(required ones without a default), type hints, and a docstring from its description; a
dict may be passed instead of (or besides) keywords. Names are made into identifiers; a
property whose name is not one (or is a keyword) is reachable through the dict form. A tool
that publishes an output schema returns its ``structuredContent``, typed by a ``TypedDict``
(:mod:`conduit.sdk.typeddicts`); any other returns its CallToolResult as a dict. The generated
source runs inside the sandbox next to ``invoke`` and ``_MISSING`` from the sandbox runtime
(``python_prelude.py`` on Pyodide, ``monty_prelude.py`` on Monty, which gets it without the
``TypedDict``s).
"""

from __future__ import annotations

import json
import keyword
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any, Final

from conduit.catalog import ToolEntry
from conduit.sdk.naming import identifier, layout
from conduit.sdk.typeddicts import TypedDicts, literal

_PRIMITIVES: Final = {"string": "str", "number": "float", "integer": "int", "boolean": "bool", "null": "None"}


def python_type(schema: Any, depth: int = 0) -> str:
    """A Python type hint for a JSON Schema.

    >>> python_type({"type": "array", "items": {"type": "integer"}}), python_type({"type": ["string", "null"]})
    ('list[int]', 'str | None')
    >>> python_type({"enum": ["a", "b"]}), python_type({"type": "object"}), python_type({})
    ("Literal['a', 'b']", 'dict[str, Any]', 'Any')
    """
    if not isinstance(schema, Mapping) or depth > 6:
        return "Any"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return literal(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(python_type({**schema, "type": item}, depth + 1) for item in kind) or "Any"
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "array":
        return f"list[{python_type(schema.get('items'), depth + 1)}]"
    if kind == "object" or "properties" in schema:
        return "dict[str, Any]"
    return "Any"


def _docstring(text: str, indent: str) -> str:
    body = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"').strip()
    if not body:
        return ""
    lines = body.splitlines()
    if len(lines) == 1:
        return f'{indent}"""{lines[0]}"""\n'
    rest = "\n".join(f"{indent}{line}" if line else "" for line in lines[1:])
    return f'{indent}"""{lines[0]}\n{rest}\n{indent}"""\n'


def signature(entry: ToolEntry) -> tuple[str, list[str], str]:
    """A tool method's parameter list, the names it passes on, and an ``Args:`` docstring section.

    Every keyword defaults to "not given" so the dict form (``tool({"a": 1})``) works too;
    required arguments are marked in the docstring and checked by the host and the upstream.
    """
    schema = entry.input_schema or {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
    required = set(schema.get("required") or ())
    params: list[str] = ["self", "args: dict[str, Any] | None = None", "/", "*"]
    names: list[str] = []
    docs: list[str] = []
    for name, sub in (properties or {}).items():
        hint = python_type(sub)
        description = sub.get("description", "") if isinstance(sub, Mapping) else ""
        marker = "required" if name in required else "optional"
        docs.append(f"    {name} ({hint}, {marker}){': ' + ' '.join(str(description).split()) if description else ''}")
        if not name.isidentifier() or keyword.iskeyword(name) or name in ("self", "args"):
            continue
        params.append(f"{name}: {hint} = _MISSING")
        names.append(name)
    if params[-1] == "*":
        params.pop()
    return ", ".join(params), names, ("Args:\n" + "\n".join(docs)) if docs else ""


def _method(entry: ToolEntry, name: str, types: TypedDicts) -> str:
    params, names, args_doc = signature(entry)
    kwargs = "{" + ", ".join(f"{json.dumps(arg)}: {arg}" for arg in names) + "}"
    doc = _docstring("\n\n".join(part for part in (entry.description.strip(), args_doc) if part), "        ")
    if entry.output_schema:
        returned = types.result_hint(entry.upstream, entry.name, entry.output_schema)
        call = f"invoke({json.dumps(entry.qualified)}, args, {kwargs}, True)"
    else:
        returned, call = "dict[str, Any]", f"invoke({json.dumps(entry.qualified)}, args, {kwargs})"
    return f"    async def {name}({params}) -> {returned}:\n{doc}        return await {call}\n"


def python_declaration(entry: ToolEntry) -> str:
    """How a program calls one tool, as the Python method the SDK generates (``tools.<upstream>.<tool>``),
    after the ``TypedDict``s of what it returns when it publishes an output schema."""
    types = TypedDicts()
    method = textwrap.dedent(_method(entry, identifier(entry.name), types))
    body = method[: method.rindex("    return await invoke")] + "    ...\n"
    hints = f"  ({entry.hints})" if entry.hints else ""
    call = f"# await tools.{identifier(entry.upstream)}.{identifier(entry.name)}(...){hints}\n"
    return f"{types.source()}{call}{body}"


def generate_python_sdk(
    entries: Iterable[ToolEntry], unavailable: Iterable[str] = (), *, result_types: bool = True
) -> str:
    """Python source defining ``tools`` for ``entries``, and the ``TypedDict``s of typed tools' results
    (importable from ``conduit_tools`` on Pyodide; ``result_types=False`` leaves them out, for interpreters
    that have no ``TypedDict``: annotations are never evaluated there, so the names need not exist).

    ``unavailable`` upstreams get no namespace here (Monty has no ``__getattr__`` to make one of any
    name): a program that reaches for one is told why it is down (:mod:`conduit.core.hints`)."""
    types = TypedDicts()
    classes: list[str] = []
    attributes: list[str] = []
    for package in layout(entries):
        class_name = f"_{package.attribute}_tools"  # unique, as the attributes are
        methods = "\n".join(_method(entry, name, types) for entry, name in package.tools)
        classes.append(f'class {class_name}:\n    """Tools of upstream {package.upstream!r}."""\n\n{methods}')
        attributes.append(f"    {package.attribute} = {class_name}()\n")
    typed = types.source()
    declared = f"{TYPES_START}from typing import NotRequired, TypedDict\n\n\n{typed}{TYPES_END}" if typed else ""
    return _TEMPLATE.format(
        types=declared if result_types else "", classes="\n\n".join(classes), attributes="".join(attributes)
    )


def generate_monty_sdk(entries: Iterable[ToolEntry], unavailable: Iterable[str] = ()) -> str:
    """The Python SDK for Monty, which has no ``TypedDict``: :func:`generate_python_sdk` without result types."""
    return generate_python_sdk(entries, unavailable, result_types=False)


TYPES_START: Final = "# >>> result types (CPython only)\n"
TYPES_END: Final = "# <<< result types\n"


_TEMPLATE: Final = '''\
# Generated by Conduit: the tools this execution may call. Do not edit.
from typing import Any, Literal

{types}
{classes}

class _Tools:
    """Upstream tools: ``await tools.<upstream>.<tool>(**kwargs)`` returns the tool's structuredContent when it
    publishes an output schema (a TypedDict below), else the CallToolResult as a dict."""

{attributes}
    async def raw(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call any allowed tool by qualified name, e.g. ``await tools.raw("github__create_issue", {{...}})``:
        the whole CallToolResult."""
        return await invoke(name, args, {{}})


tools = _Tools()
'''
