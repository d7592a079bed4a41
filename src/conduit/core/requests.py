"""What callers ask of Conduit, checked once where it comes in: an execution request and a tool call.

An :class:`ExecutionRequest` is made from an execution tool's MCP arguments, a bridge method's params or
``conduit run``'s options alike (:meth:`ExecutionRequest.from_arguments`); a :class:`ToolCall` (or a
:class:`RefusedCall`) from a call's name and arguments, whichever path it came by (:func:`read_call`). Their
shape is checked here, with messages that name the argument; the core takes these typed values only. What
depends on the server (the code size limit, the ceilings, the caller's policy, which runtimes run) is the
gateway's to check (:meth:`~conduit.core.gateway.Gateway.plan`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from conduit.catalog import ToolId
from conduit.config.schema import PYTHON_ENGINES, Limits, PythonEngine
from conduit.core.languages import LANGUAGES, Language
from conduit.errors import ConduitError, InvalidParamsError, UnknownToolError
from conduit.security.allowlist import Allowlist, AllowlistError

ENGINE: Final = "engine"


def input_schema(language: Language) -> dict[str, Any]:
    """The JSON Schema of the arguments ``language``'s execution tool takes: what
    :meth:`ExecutionRequest.from_arguments` accepts (it names whatever is wrong)."""
    properties: dict[str, Any] = {
        "code": {"type": "string"},
        "allowedTools": {"type": "array", "items": {"type": "string"}},
        "limits": Limits.request_schema(),
        "background": {"type": "boolean"},
    }
    if language.engines:
        properties[ENGINE] = {"enum": list(PYTHON_ENGINES)}
    return {"type": "object", "properties": properties, "required": ["code"]}


def listed_schema(language: Language) -> dict[str, Any]:
    """The execution tool's input schema as listed to clients. The first tool listed (TypeScript's) spells out
    every argument; the others list theirs only (their descriptions say the rest are as for TypeScript), so
    that the code-mode surface stays within its budget (bench/surface.py)."""
    schema = input_schema(language)
    if language is LANGUAGES[0]:
        return schema
    shared = input_schema(LANGUAGES[0])["properties"]
    own = {name: value for name, value in schema["properties"].items() if name == "code" or name not in shared}
    return {**schema, "properties": own}


class ExecutionRequest(BaseModel):
    """One program to run, as asked: checked in shape, not yet against the server's policy."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    language: Language
    code: str
    allowed_tools: Allowlist | None = None
    """The allowlist the request names, its patterns as written (None: the configured default)."""
    limits: Mapping[str, int] = {}
    """Limits to lower, by wire name (``timeoutMs``...): each known and a positive integer."""
    engine: PythonEngine | None = None
    """For a language with engines: which one (None: the configured one)."""
    background: bool = False

    @classmethod
    def from_arguments(
        cls, language: Language, arguments: Mapping[str, object], *, known_only: bool = True
    ) -> ExecutionRequest:
        """A request from a tool's arguments (wire names: ``allowedTools``...).

        ``known_only``: refuse names the tool does not take (MCP, whose clients were shown the schema);
        a bridge request's other params are ignored.

        Raises:
            InvalidParamsError: an unknown argument, no ``code``, or an argument of the wrong type or value.
        """
        if known_only:
            unknown = sorted(set(arguments) - set(input_schema(language)["properties"]))
            if unknown:
                raise InvalidParamsError(f"unknown argument(s): {', '.join(unknown)}")
            if "code" not in arguments:
                raise InvalidParamsError("missing required argument 'code'")
        background = arguments.get("background", False)
        if not isinstance(background, bool):
            raise InvalidParamsError("background must be a boolean")
        limits = arguments.get("limits")
        return cls.model_validate(  # each argument checked by its validator below, with its own message
            {
                "language": language,
                "code": arguments.get("code"),
                "allowed_tools": arguments.get("allowedTools"),
                "limits": {} if limits is None else limits,
                "engine": arguments.get(ENGINE),
                "background": background,
            }
        )

    @field_validator("code", mode="before")
    @classmethod
    def _code_is_text(cls, code: object) -> str:
        if not isinstance(code, str):
            raise InvalidParamsError("code must be a string")
        return code

    @field_validator("allowed_tools", mode="before")
    @classmethod
    def _patterns_parse(cls, patterns: object) -> Allowlist | None:
        if patterns is None or isinstance(patterns, Allowlist):
            return patterns
        if not isinstance(patterns, list):
            raise InvalidParamsError("allowedTools must be an array of strings")
        return parse_allowlist(patterns)

    @field_validator("limits", mode="before")
    @classmethod
    def _limits_known(cls, limits: object) -> Mapping[str, int]:
        if not isinstance(limits, Mapping):
            raise InvalidParamsError("limits must be an object")
        Limits().lowered(limits)  # raises, naming the limit, for an unknown one or a value that is not one
        return dict(limits)

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_known(cls, engine: object) -> object:
        if engine is not None and engine not in PYTHON_ENGINES:
            raise InvalidParamsError(f"engine must be one of {', '.join(PYTHON_ENGINES)}")
        return engine

    @model_validator(mode="after")
    def _engine_applies(self) -> ExecutionRequest:
        if self.engine is not None and not self.language.engines:
            raise InvalidParamsError("engine applies to Python programs only")
        return self


def parse_allowlist(patterns: Sequence[object]) -> Allowlist:
    """An allowlist from a request's patterns.

    Raises:
        InvalidParamsError: a pattern is not a string or not a valid pattern.
    """
    if not all(isinstance(pattern, str) for pattern in patterns):
        raise InvalidParamsError("allowedTools must be an array of strings")
    try:
        return Allowlist.parse([str(pattern) for pattern in patterns])
    except AllowlistError as exc:
        raise InvalidParamsError(f"allowedTools: {exc}") from None


@dataclass(frozen=True)
class ToolCall:
    """A call of one upstream tool: its name parsed once, its arguments an object."""

    name: str
    """The name as the caller wrote it (``ns__tool`` or ``ns.tool``), for the audit log."""
    tool: ToolId
    arguments: dict[str, Any]

    @property
    def qualified(self) -> str:
        return self.tool.qualified

    @property
    def upstream(self) -> str:
        assert self.tool.upstream is not None  # parse() refuses a bare name
        return self.tool.upstream

    @classmethod
    def parse(cls, name: object, arguments: object) -> ToolCall:
        """A call from its name (``ns__tool`` or ``ns.tool``) and arguments (None: none).

        Raises:
            InvalidParamsError: the name is not a non-empty string, or the arguments not an object.
            UnknownToolError: the name names no upstream.
        """
        if not isinstance(name, str) or not name:
            raise InvalidParamsError("name must be a non-empty string")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidParamsError("arguments must be an object")
        tool = ToolId.parse(name)
        if tool.upstream is None:
            raise UnknownToolError(f"unknown tool {name!r}: use '<upstream>__<tool>' or '<upstream>.<tool>'")
        return cls(name, tool, arguments)


@dataclass(frozen=True)
class RefusedCall:
    """A call whose name or arguments could not be read: refused, but counted and audited like any call."""

    name: str
    """The name as given (``?`` when it was not a string)."""
    error: ConduitError


def read_call(name: object, arguments: object) -> ToolCall | RefusedCall:
    """A tool call from a request's name and arguments, read once where the request comes in (a program's
    bridge request, a proxied MCP call); what cannot be read is a :class:`RefusedCall`, refused on its way
    through the core."""
    try:
        return ToolCall.parse(name, arguments)
    except ConduitError as exc:
        return RefusedCall(name if isinstance(name, str) else "?", exc)
