"""Python ``TypedDict``s for tools' output schemas: the shape of what a typed call returns.

Every object with properties in an output schema becomes a ``TypedDict`` named after its tool and
where it sits (``WxForecast``, ``WxForecastDaysItem``; a ``$defs`` entry ``WxLookupCity``), written
before the ones that use it; a property the schema does not require is ``NotRequired``; a
recursive ``$ref`` is a quoted forward reference. A property name that is not an identifier
makes the functional form (``TypedDict("Name", {"first-name": str})``).

>>> types = TypedDicts()
>>> types.result_hint("wx", "forecast", {"type": "object", "required": ["city"], "properties": {
...     "city": {"type": "string"}, "days": {"type": "array", "items": {"type": "object",
...     "properties": {"high": {"type": "number", "description": "°C"}}, "required": ["high"]}}}})
'WxForecast'
>>> print(types.source(), end="")
class WxForecastDaysItem(TypedDict):
    high: float  # °C
<BLANKLINE>
class WxForecast(TypedDict):
    city: str
    days: NotRequired[list[WxForecastDaysItem]]
<BLANKLINE>
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from conduit.sdk.naming import identifier

MAX_DEPTH: Final = 8
_SDK_NAMES: Final = frozenset({"Any", "Literal", "NotRequired", "TypedDict", "None", "True", "False"})
"""Names the generated SDK already uses: no class may take one."""
_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PRIMITIVES: Final = {"string": "str", "number": "float", "integer": "int", "boolean": "bool", "null": "None"}


def literal(values: list[Any]) -> str:
    """``Literal[...]`` of ``values`` when Python allows them there (strings, integers, booleans, None),
    else ``Any`` (a ``Literal`` of a float, list or dict would be wrong, or fail when the SDK loads).

    >>> literal(["a", 1, None]), literal([{"a": 1}]), literal([1.5])
    ("Literal['a', 1, None]", 'Any', 'Any')
    """
    if not all(value is None or isinstance(value, (str, int)) for value in values):
        return "Any"
    return f"Literal[{', '.join(repr(value) for value in values)}]"


def camel(name: str) -> str:
    """``name`` as a CamelCase identifier part.

    >>> camel("get_current-time"), camel("2fa"), camel("")
    ('GetCurrentTime', '_2fa', '_')
    """
    parts = [part for part in identifier(name).split("_") if part]
    joined = "".join(part[:1].upper() + part[1:] for part in parts) or "_"
    return joined if joined.isidentifier() else "_" + joined


class TypedDicts:
    """The ``TypedDict`` classes of one SDK (names unique across it), and the hint for each tool's result."""

    def __init__(self) -> None:
        self._classes: list[str] = []
        self._taken: set[str] = set(_SDK_NAMES)
        self._defs: dict[tuple[int, str], str] = {}
        """A ``$ref`` already made (or being made) into a hint, by root schema and reference."""
        self._pending: set[str] = set()
        """TypedDicts whose fields are being written: a field that names one is quoted."""

    def result_hint(self, upstream: str, tool: str, schema: Mapping[str, Any]) -> str:
        """The type hint of what the tool's typed call returns (defining the TypedDicts it needs)."""
        base = camel(upstream) + camel(tool)
        return self._hint(schema, base, _Where(schema, base), 0)

    def source(self) -> str:
        """Every class defined so far, dependencies first; empty when there is none."""
        return "".join(self._classes)

    def _reserve(self, wanted: str) -> str:
        name, counter = wanted, 2
        while name in self._taken:
            name, counter = f"{wanted}{counter}", counter + 1
        self._taken.add(name)
        return name

    def _hint(self, schema: Any, name: str, where: _Where, depth: int, reserved: str | None = None) -> str:
        if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
            return "Any"
        if schema.get("nullable") is True:
            plain = self._hint({k: v for k, v in schema.items() if k != "nullable"}, name, where, depth, reserved)
            return plain if plain in ("Any", "None") else f"{plain} | None"
        reference = schema.get("$ref")
        if isinstance(reference, str):
            return self._reference(reference, where, depth)
        if "const" in schema:
            return literal([schema["const"]])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return literal(schema["enum"])
        for combinator in ("anyOf", "oneOf"):
            options = schema.get(combinator)
            if isinstance(options, list) and options:
                hints = [
                    self._hint(option, f"{name}Option{i}", where, depth + 1) for i, option in enumerate(options, 1)
                ]
                return " | ".join(dict.fromkeys(hints))
        kind = schema.get("type")
        if isinstance(kind, list):
            hints = [self._hint({**schema, "type": item}, name, where, depth + 1) for item in kind]
            return " | ".join(dict.fromkeys(hints)) or "Any"
        if kind in _PRIMITIVES:
            return _PRIMITIVES[kind]
        if kind == "array":
            return f"list[{self._hint(schema.get('items'), name + 'Item', where, depth + 1)}]"
        if _has_properties(schema):
            return self._typed_dict(schema, reserved or self._reserve(name), where, depth)
        if kind == "object":
            extra = schema.get("additionalProperties")
            value = self._hint(extra, name + "Value", where, depth + 1) if isinstance(extra, Mapping) else "Any"
            return f"dict[str, {value}]"
        return "Any"

    def _reference(self, reference: str, where: _Where, depth: int) -> str:
        """The hint for ``#/$defs/<key>`` (or ``#/definitions/<key>``): made once per root schema."""
        memo = (id(where.root), reference)
        if memo in self._defs:
            return self._defs[memo]
        for prefix in ("#/$defs/", "#/definitions/"):
            defs = where.root.get(prefix[2:-1])
            if reference.startswith(prefix) and isinstance(defs, Mapping):
                target = defs.get(reference.removeprefix(prefix))
                wanted = where.base + camel(reference.removeprefix(prefix))
                reserved = self._reserve(wanted) if _has_properties(target) else None
                self._defs[memo] = reserved or "Any"  # what a recursive reference sees while it is made
                hint = self._hint(target, wanted, where, depth + 1, reserved)
                self._defs[memo] = hint
                return hint
        return "Any"

    def _typed_dict(self, schema: Mapping[str, Any], name: str, where: _Where, depth: int) -> str:
        self._pending.add(name)
        required = set(schema.get("required") or ())
        fields: list[tuple[str, str, str]] = []
        for key, sub in schema["properties"].items():
            hint = self._hint(sub, name + camel(str(key)), where, depth + 1)
            if _WORD.findall(hint) and self._pending.intersection(_WORD.findall(hint)):
                hint = f'"{hint}"'  # names a class not defined yet (a recursive $ref)
            if key not in required:
                hint = f"NotRequired[{hint}]"
            description = sub.get("description") if isinstance(sub, Mapping) else None
            note = " ".join(description.split()) if isinstance(description, str) else ""
            fields.append((str(key), hint, note))
        self._pending.discard(name)
        if all(key.isidentifier() and not keyword.iskeyword(key) for key, _, _ in fields):
            body = "".join(f"    {key}: {hint}{'  # ' + note if note else ''}\n" for key, hint, note in fields)
            self._classes.append(f"class {name}(TypedDict):\n{body}\n")
        else:
            items = ", ".join(f"{key!r}: {hint}" for key, hint, _ in fields)
            self._classes.append(f"{name} = TypedDict({name!r}, {{{items}}})\n\n")
        return name


@dataclass(frozen=True)
class _Where:
    root: Mapping[str, Any]
    """The output schema, whose ``$defs`` references name."""
    base: str
    """The tool's part of every class name."""


def _has_properties(schema: Any) -> bool:
    return isinstance(schema, Mapping) and isinstance(schema.get("properties"), Mapping) and bool(schema["properties"])
