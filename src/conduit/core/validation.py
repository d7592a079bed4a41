"""Checking tool arguments against the tool's JSON Schema before the upstream sees them.

``permissive`` (the default) validates wherever a tool has a usable schema; ``strict`` also
refuses tools whose schema is missing or unusable. Every problem names the argument's path
and the rule it broke, so a program (or an agent) can fix its call.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

_MAX_PROBLEMS: Final = 10
_CACHED_SCHEMAS: Final = 1024


@dataclass(frozen=True)
class Problem:
    path: str
    """Where in the arguments: ``args``, ``args.items[2].name``..."""
    rule: str
    """The JSON Schema keyword that failed (``required``, ``type``, ``enum``...)."""
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} ({self.rule})"


def usable_schema(schema: Mapping[str, Any] | None) -> bool:
    """Whether ``schema`` says anything a validator can check (an empty or broken one does not)."""
    return _validator(schema) is not None


def check_arguments(schema: Mapping[str, Any] | None, arguments: Any, root: str = "args") -> list[Problem]:
    """The problems of ``arguments`` (or of another object, named ``root`` in the paths: a tool's ``result``)
    under ``schema`` (empty when valid or when there is nothing to check).

    >>> schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n", "s"]}
    >>> [str(p) for p in check_arguments(schema, {"n": "1"})]
    ["args: 's' is a required property (required)", "args.n: '1' is not of type 'integer' (type)"]
    """
    validator = _validator(schema)
    if validator is None:
        return []
    instance = dict(arguments) if isinstance(arguments, Mapping) else arguments
    errors = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [Problem(_path(error.absolute_path, root), str(error.validator), error.message) for error in errors][
        :_MAX_PROBLEMS
    ]


_BY_OBJECT: OrderedDict[int, tuple[Mapping[str, Any], Draft202012Validator | None]] = OrderedDict()
"""Validators by the schema object they were made for: a tool's schema is the same object on every call
while its upstream's tool list is cached, so a call costs a dict lookup, not a canonical dump."""


def _validator(schema: Mapping[str, Any] | None) -> Draft202012Validator | None:
    """The compiled validator for ``schema`` (None: nothing to check), built once per distinct schema.

    Every tool call is validated, so checking the schema itself and compiling it must not happen per call.
    """
    if not schema:
        return None
    known = _BY_OBJECT.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    validator = _compiled(json.dumps(schema, sort_keys=True, default=str))
    _BY_OBJECT[id(schema)] = (schema, validator)  # the schema is kept alive, so its id cannot be reused
    if len(_BY_OBJECT) > _CACHED_SCHEMAS:
        _BY_OBJECT.popitem(last=False)
    return validator


@functools.lru_cache(maxsize=_CACHED_SCHEMAS)
def _compiled(canonical: str) -> Draft202012Validator | None:
    schema = json.loads(canonical)
    if not isinstance(schema, dict) or set(schema) <= {"type", "$schema"} and schema.get("type") in (None, "object"):
        return None
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        return None
    return Draft202012Validator(schema)


def _path(parts: Any, root: str) -> str:
    text = root
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
