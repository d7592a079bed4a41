"""Personal values out, tokens in: what Conduit does with ``privacy`` at its boundary.

**Out**: whatever leaves for the client (so for the model) passes :class:`Privacy` once: an execution's
outcome (stdout, stderr, result, error), its output as it streams (:mod:`conduit.privacy.stream`), a
proxied call's result and failure, an approval form. Each value of a configured kind becomes its token for
the caller (:mod:`conduit.privacy.token_map`). Inside a sandbox a program handles the real values: only what it
sends out is tokenised.

**In**: a token in a tool call's arguments, on its way to an upstream, becomes its value again, when it is
the caller's own and still remembered; any other token (another principal's, expired, never issued, of a
kind no longer configured) passes through as the text it is, and is counted. Arguments of ``privacy.exempt``
tools are never restored.

This protects against a program *accidentally* showing the model data it handles. A program written to leak
a value (encoding it so no pattern sees it) is not stopped here: the allowlist and approvals are that wall.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import mcp_types as types

from conduit.catalog import ToolEntry
from conduit.config.schema import PrivacyConfig
from conduit.errors import ConduitError
from conduit.privacy.token_map import TokenMap
from conduit.sandbox.base import ProgramFailure, RunOutcome
from conduit.security.allowlist import Allowlist
from conduit.security.callers import Caller
from conduit.security.personal import BUILT_IN, Finder, Kind

MAX_NUMBER_DIGITS: Final = 12


@dataclass
class Tally:
    """What one execution (or one proxied call) tokenised and restored, for its audit record: counts, never
    values."""

    tokenized: dict[str, set[str]] = field(default_factory=dict)
    """Per kind label, the distinct tokens that went out."""
    restored: Counter[str] = field(default_factory=Counter)
    """Per kind label, tokens turned back into values on the way to an upstream."""
    unrestored: int = 0
    """Tokens in arguments that restored nothing (another principal's, expired, never issued)."""

    def out(self, token: str, label: str) -> None:
        self.tokenized.setdefault(label, set()).add(token)

    def add(self, other: Tally) -> None:
        for label, tokens in other.tokenized.items():
            self.tokenized.setdefault(label, set()).update(tokens)
        self.restored.update(other.restored)
        self.unrestored += other.unrestored

    def record(self) -> dict[str, Any] | None:
        """The audit record's ``privacy`` field (None: nothing was tokenised or restored)."""
        if not self.tokenized and not self.restored and not self.unrestored:
            return None
        return {
            "tokenized": {label: len(tokens) for label, tokens in sorted(self.tokenized.items())},
            "restored": dict(sorted(self.restored.items())),
            "unrestored": self.unrestored,
        }


def kinds_of(config: PrivacyConfig) -> list[Kind]:
    """The configured kinds, in their order."""
    return [BUILT_IN[kind] if isinstance(kind, str) else Kind(kind.name, kind.pattern) for kind in config.tokenize]


class Privacy:
    """Tokenising out and restoring in, for the callers ``privacy.principals`` covers."""

    def __init__(self, config: PrivacyConfig, tokens: TokenMap) -> None:
        self.config = config
        self.map = tokens
        kinds = kinds_of(config)
        self.finder = Finder(kinds)
        labels = sorted({kind.label for kind in kinds}, key=len, reverse=True)
        self._token = re.compile(rf"\[({'|'.join(map(re.escape, labels))})_([1-9]\d{{0,{MAX_NUMBER_DIGITS - 1}}})\]")
        self._principals = frozenset(config.principals) if config.principals is not None else None
        self._exempt = Allowlist.parse(config.exempt) if config.exempt else None

    def applies(self, caller: Caller) -> bool:
        return self._principals is None or caller.id in self._principals

    # -- out ------------------------------------------------------------------------------------------------

    async def texts(self, caller: Caller, texts: list[str], tally: Tally) -> list[str]:
        """Each text with its values replaced by their tokens (one round to the token map for all of them)."""
        found = self.finder.find_each(texts)
        keys = list(dict.fromkeys((item.kind.label, item.value) for items in found for item in items))
        if not keys:
            return texts
        tokens = dict(zip(keys, await self.map.tokens(caller.id, keys), strict=True))
        for (label, _), token in tokens.items():
            tally.out(token, label)
        answer = []
        for text, items in zip(texts, found, strict=True):
            if not items:
                answer.append(text)
                continue
            pieces = []
            last = 0
            for item in items:
                pieces.append(text[last : item.start])
                pieces.append(tokens[item.kind.label, item.value])
                last = item.end
            pieces.append(text[last:])
            answer.append("".join(pieces))
        return answer

    async def text(self, caller: Caller, text: str, tally: Tally) -> str:
        return (await self.texts(caller, [text], tally))[0]

    async def value(self, caller: Caller, value: Any, tally: Tally, *, owned: bool = False) -> Any:
        """A JSON value with its strings (object keys too) tokenised; ``owned``: a value nothing else holds (one
        just parsed), changed in place rather than copied."""
        strings = list(dict.fromkeys(_strings(value)))
        if not strings:
            return value
        replaced = await self.texts(caller, strings, tally)
        changed = {old: new for old, new in zip(strings, replaced, strict=True) if old is not new and old != new}
        if not changed:
            return value
        return _changed(value if owned else copy.deepcopy(value), changed.get)

    async def outcome(self, caller: Caller, outcome: RunOutcome, tally: Tally) -> RunOutcome:
        """An execution's outcome as the client gets it: output, result and error tokenised."""
        message = outcome.error.message if outcome.error is not None else ""
        stdout, stderr, message = await self.texts(caller, [outcome.stdout, outcome.stderr, message], tally)
        changes: dict[str, Any] = {"stdout": stdout, "stderr": stderr}
        if outcome.error is not None:
            changes["error"] = ProgramFailure(outcome.error.code, message)
        if outcome.has_result:
            changes["result"] = await self.value(caller, outcome.result, tally, owned=True)
        return replace(outcome, **changes)

    async def result(self, caller: Caller, result: types.CallToolResult, tally: Tally) -> types.CallToolResult:
        """A proxied call's result as the client gets it: its text content and ``structuredContent`` tokenised."""
        content = []
        for item in result.content:
            if isinstance(item, types.TextContent):
                item = item.model_copy(update={"text": await self.text(caller, item.text, tally)})
            elif isinstance(item, types.EmbeddedResource) and isinstance(item.resource, types.TextResourceContents):
                text = await self.text(caller, item.resource.text, tally)
                item = item.model_copy(update={"resource": item.resource.model_copy(update={"text": text})})
            content.append(item)
        structured = result.structured_content
        if structured is not None:
            structured = await self.value(caller, structured, tally, owned=True)
        return result.model_copy(update={"content": content, "structured_content": structured})

    async def failure(self, caller: Caller, exc: ConduitError, tally: Tally) -> None:
        """A failure that reaches the client (a proxied call's): its message and data tokenised, in place."""
        exc.message = await self.text(caller, exc.message, tally)
        exc.args = (exc.message,)
        if exc.data is not None:
            exc.data = await self.value(caller, exc.data, tally)

    # -- in -------------------------------------------------------------------------------------------------

    def exempt(self, entry: ToolEntry) -> bool:
        return self._exempt is not None and self._exempt.permits(entry.upstream, entry.name)

    async def restore(self, caller: Caller, arguments: Mapping[str, Any], tally: Tally | None) -> dict[str, Any]:
        """``arguments`` with the caller's tokens replaced by their values (counted in ``tally``); other tokens
        stay as they are (counted as unrestored)."""
        arguments = dict(arguments)
        tokens = list(dict.fromkeys(match.group() for text in _strings(arguments) for match in self._matches(text)))
        if not tokens:
            return arguments
        values = dict(zip(tokens, await self.map.values(caller.id, tokens), strict=True))
        if tally is not None:
            for token, value in values.items():
                if value is None:
                    tally.unrestored += 1
                else:
                    tally.restored[token[1 : token.rindex("_")]] += 1

        def restored(text: str) -> str | None:
            if "[" not in text:
                return None
            new = self._token.sub(lambda match: values.get(match.group()) or match.group(), text)
            return new if new != text else None

        return dict(_changed(copy.deepcopy(arguments), restored))

    async def reveal(self, caller: Caller, value: Any) -> Any:
        """``value`` with the caller's tokens shown as their values (an approval form in ``values`` mode);
        counts nothing: nothing leaves."""
        return (await self.restore(caller, {"": value}, None))[""]

    def _matches(self, text: str) -> list[re.Match[str]]:
        return list(self._token.finditer(text)) if "[" in text else []


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value, object keys included, in document order (the first value seen gets the
    first number)."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            for key, inner in reversed(item.items()):
                if not isinstance(inner, int | float | bool) and inner is not None:
                    stack.append(inner)
                if isinstance(key, str):
                    stack.append(key)
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))
    return found


def _changed(value: Any, change: Callable[[str], str | None]) -> Any:
    """``value`` with each string ``change`` answers for replaced (None: kept), its lists and objects changed in
    place (an object with a replaced key is rebuilt, its order kept; a tuple becomes a list). Callers hand it a
    copy of a value another part still holds."""
    if isinstance(value, str):
        new = change(value)
        return value if new is None else new
    if isinstance(value, dict):
        renamed = False
        for key, inner in value.items():
            if isinstance(inner, str):
                new = change(inner)
                if new is not None:
                    value[key] = new
            elif isinstance(inner, dict | list | tuple):
                value[key] = _changed(inner, change)
            renamed = renamed or (isinstance(key, str) and change(key) is not None)
        if renamed:
            return {(change(key) or key) if isinstance(key, str) else key: inner for key, inner in value.items()}
        return value
    if isinstance(value, list):
        for index, inner in enumerate(value):
            if isinstance(inner, str | dict | list | tuple):
                value[index] = _changed(inner, change)
        return value
    if isinstance(value, tuple):
        return [_changed(inner, change) for inner in value]
    return value
