"""Turning a client's TypeScript/JavaScript program into what its sandbox runs.

Programs may use top-level ``await`` and a top-level ``return`` (its value becomes ``result``),
which an ES module forbids, so the body runs inside an async function. Agents also write programs
as modules (``export {};`` on the first line is the usual way to make a TypeScript file one,
``export const x = ...``, ``import type { T } from "./t.ts"``). Those statements are rewritten in
place, every other character keeping its line and column, so error positions point at the
client's own code:

- ``import type ...`` and imports of types only (``import { type A } from ...``) are erased;
- ``export`` before a declaration is dropped and the declaration stays; ``export { a, b }``,
  ``export type { T }``, ``export {}`` and ``export as namespace`` are erased;
- ``export default <value>`` ends the program with that value, like ``return <value>``
  (``export default function f() {}`` and ``export default class C {}`` just declare);
- every other import (``import x from "./m.ts"``, ``import "m"``, ``export * from "m"``,
  ``import x = require("m")``) is an error before anything runs: a program is one file, and
  it reaches tools through the ``tools`` global.

A program with any of these statements runs in strict mode, as a module does. The program
is never the main module of a Deno sandbox, so anything it imports at run time
(``await import(...)``) is still checked against the sandbox's permissions.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from conduit.sandbox.base import ProgramFailure, RunOutcome

_OPEN: Final = "export default (async () => {"
_CLOSE: Final = "\n})();\n"

_SPACE = re.compile(r"(?:[ \t\r\n\f\v\u00a0\u2028\u2029\ufeff]+|//[^\n]*|/\*[\s\S]*?(?:\*/|$))+")
_IDENT = re.compile(r"#?[A-Za-z_$\u0080-\uffff][\w$\u0080-\uffff]*")
_NUMBER = re.compile(r"(?:0[xXoObB][\da-fA-F_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?)n?")
_STRING = re.compile(r""""(?:[^"\\\n]|\\[\s\S])*"?|'(?:[^'\\\n]|\\[\s\S])*'?""")
_TEMPLATE = re.compile(r"(?:[^`\\$]|\\[\s\S]|\$(?!\{))*(`|\$\{|$)")
_REGEX = re.compile(r"/(?:[^/\\\[\n]|\\.|\[(?:[^\]\\\n]|\\.)*\])+/[A-Za-z]*")
_BEFORE_REGEX = frozenset(
    "return typeof instanceof in of new delete void throw case do else yield await extends".split()
)
_DECLARATION_ONLY = frozenset({"function", "class", "interface", "abstract", "enum", "declare"})


@dataclass(frozen=True)
class Token:
    kind: str
    """``id``, ``num``, ``str``, ``template``, ``regex`` or ``punct``."""
    text: str
    start: int
    end: int
    depth: int
    """Bracket nesting at the token ((), [], {} and template substitutions): 0 is the top level."""


def tokens(code: str) -> Iterator[Token]:
    """The tokens of a JavaScript/TypeScript program, comments and white space left out.

    Just enough of the language to find top-level statements: strings, template literals with
    nested substitutions, regular-expression literals (told from division by what precedes them)
    and comments never yield a keyword.

    >>> [t.text for t in tokens("a = `x${ {b: '}'} }y` / 2; // import\\nexport")]
    ['a', '=', '`x${', '{', 'b', ':', "'}'", '}', '}y`', '/', '2', ';', 'export']
    """
    pos, size, depth = 0, len(code), 0
    templates: list[int] = []
    """The depth at which each open template substitution (``${``) started."""
    previous: Token | None = None
    while pos < size:
        space = _SPACE.match(code, pos)
        if space:
            pos = space.end()
            continue
        char = code[pos]
        kind, end = "punct", pos + 1
        if char in "\"'":
            kind, end = "str", _STRING.match(code, pos).end()  # type: ignore[union-attr]
        elif char == "`" or (char == "}" and templates and templates[-1] == depth - 1):
            if char == "}":
                templates.pop()
                depth -= 1
            match = _TEMPLATE.match(code, pos + 1)
            assert match is not None
            kind, end = "template", match.end()
            if match.group(1) == "${":
                templates.append(depth)
                depth += 1
        elif char == "/" and _regex_allowed(previous):
            match = _REGEX.match(code, pos)
            if match:
                kind, end = "regex", match.end()
        elif (ident := _IDENT.match(code, pos)) is not None:
            kind, end = "id", ident.end()
        elif (number := _NUMBER.match(code, pos)) is not None and number.end() > pos:
            kind, end = "num", number.end()
        if kind == "punct" and char in ")]}":
            depth = max(depth - 1, 0)
        token = Token(kind, code[pos:end], pos, end, depth)
        if kind == "punct" and char in "([{":
            depth += 1
        yield token
        previous = token
        pos = end


def _regex_allowed(previous: Token | None) -> bool:
    if previous is None:
        return True
    if previous.kind == "punct":
        return previous.text not in ")]"
    return previous.kind == "id" and previous.text in _BEFORE_REGEX


@dataclass(frozen=True)
class Program:
    """A program with its module syntax handled: the body to wrap, and what the wrapper must add."""

    body: str
    """The source with module statements blanked or rewritten; same lines and columns as the original."""
    is_module: bool
    """It had top-level ``import``/``export``: it runs in strict mode."""
    error: str | None = None
    """Why it cannot run (a value import), to be thrown before anything else happens."""


def parse_program(code: str, filename: str = "program.ts") -> Program:
    """Handle ``code``'s top-level module statements (see the module docstring).

    >>> parse_program('export {};\\nexport const x = 2;\\nreturn x;').body
    '          \\n       const x = 2;\\nreturn x;'
    >>> print(parse_program('import { a } from "./a.ts";\\nreturn a;').error[:39])
    program.ts:1: cannot import "./a.ts": a
    """
    if "import" not in code and "export" not in code:
        return Program(code, is_module=False)
    chars = list(code)
    found = list(tokens(code))
    error: str | None = None
    is_module = False
    index = 0
    while index < len(found):
        token = found[index]
        previous = found[index - 1] if index else None
        if (
            token.kind != "id"
            or token.depth != 0
            or token.text not in ("import", "export")
            or (previous is not None and previous.text == ".")
        ):
            index += 1
            continue
        following = found[index + 1] if index + 1 < len(found) else None
        if token.text == "import" and (following is None or following.text in ("(", ".")):
            index += 1  # import(...) and import.meta are expressions
            continue
        is_module = True
        handle = _import if token.text == "import" else _export
        end, action, specifier = handle(found, index)
        stop = found[end - 1].end if end > index else token.end
        if action == "refuse":
            _blank(chars, token.start, stop)
            if error is None:
                line = code.count("\n", 0, token.start) + 1
                error = _refusal(filename, line, specifier)
        elif action in ("erase", "strip"):
            _blank(chars, token.start, stop)
        elif action == "return":
            _blank(chars, token.start, stop)
            chars[token.start : token.start + 6] = list("return")
        index = max(end, index + 1)
    return Program("".join(chars), is_module, error)


def _refusal(filename: str, line: int, specifier: str) -> str:
    what = f"import {specifier}" if specifier else "import a module"
    return (
        f"{filename}:{line}: cannot {what}: a program is one file (only type imports are allowed, and erased);"
        " it calls tools through the global `tools`"
    )


def _blank(chars: list[str], start: int, end: int) -> None:
    """Replace ``chars[start:end]`` with spaces, keeping line breaks (so every later position stays put)."""
    for position in range(start, end):
        if chars[position] not in "\n\r\u2028\u2029":
            chars[position] = " "


def _after(found: list[Token], index: int) -> Token | None:
    return found[index] if index < len(found) else None


def _past_braces(found: list[Token], opening: int) -> int:
    """The index just after the ``}`` that closes the top-level ``{`` at ``opening``."""
    cursor = opening + 1
    while cursor < len(found) and found[cursor].depth > 0:
        cursor += 1
    return cursor + 1


def _past_semicolon(found: list[Token], index: int) -> int:
    """``index``, or the index after it when the token there is a ``;`` that ends the statement."""
    token = _after(found, index)
    return index + 1 if token is not None and token.text == ";" else min(index, len(found))


def _module_end(found: list[Token], index: int) -> int:
    """The index after a module specifier at ``index``: its ``with {...}``/``assert {...}`` and ``;`` included."""
    end = index + 1
    attributes, brace = _after(found, end), _after(found, end + 1)
    if attributes is not None and attributes.text in ("with", "assert") and brace is not None and brace.text == "{":
        end = _past_braces(found, end + 1)
    return _past_semicolon(found, end)


def _specifier(token: Token) -> str:
    try:
        return json.dumps(json.loads(token.text)) if token.text.startswith('"') else f'"{token.text[1:-1]}"'
    except ValueError:
        return token.text


def _import(found: list[Token], index: int) -> tuple[int, str, str]:
    """``(end, action, specifier)`` for the import statement at ``index``: erase (types only) or refuse."""
    clause: list[Token] = []
    cursor = index + 1
    while cursor < len(found):
        token = found[cursor]
        if token.kind == "str" and token.depth == 0:
            end = _module_end(found, cursor)
            return end, "erase" if _types_only(clause) else "refuse", _specifier(token)
        if token.depth == 0 and token.text == "=":  # TypeScript: import x = require("m") / import x = N.y
            target = _after(found, cursor + 1)
            if target is not None and target.text == "require":
                module = _after(found, cursor + 3)
                specifier = _specifier(module) if module is not None and module.kind == "str" else ""
                return _past_semicolon(found, cursor + 5 if module is not None else cursor + 1), "refuse", specifier
            return cursor, "keep", ""
        if token.depth == 0 and token.text == ";":
            return cursor + 1, "refuse", ""
        clause.append(token)
        cursor += 1
    return cursor, "refuse", ""


def _types_only(clause: list[Token]) -> bool:
    """Whether an import clause (the tokens between ``import`` and the specifier) names types only."""
    names = [token.text for token in clause]
    if names and names[-1] == "from":
        names = names[:-1]
    if not names:
        return False  # import "m": a value import for its side effects
    if names[0] == "type" and len(names) > 1 and names[1] not in (",", "from"):
        return True  # import type X / import type { A } / import type * as ns
    if names[0] == "type" and names[1:2] == ["from"]:
        return True  # import type from from "m"
    if names[0] != "{" or names[-1] != "}":
        return False
    specifiers: list[list[str]] = [[]]
    for name in names[1:-1]:
        if name == ",":
            specifiers.append([])
        else:
            specifiers[-1].append(name)
    specifiers = [spec for spec in specifiers if spec]
    return bool(specifiers) and all(spec[0] == "type" and len(spec) > 1 for spec in specifiers)


def _export(found: list[Token], index: int) -> tuple[int, str, str]:
    """``(end, action, specifier)`` for the export statement at ``index``: strip, erase, return or refuse."""
    following = _after(found, index + 1)
    if following is None:
        return index + 1, "erase", ""
    after = _after(found, index + 2)
    if following.text == "*":  # export * from "m" / export * as ns from "m"
        return _reexport(found, index + 2, types=False)
    if following.text == "{" or (following.text == "type" and after is not None and after.text == "{"):
        cursor = _past_braces(found, index + 1 if following.text == "{" else index + 2)
        source = _after(found, cursor)
        if source is not None and source.text == "from":
            return _reexport(found, cursor, types=following.text == "type")
        return _past_semicolon(found, cursor), "erase", ""
    if following.text == "=":  # TypeScript's export = x
        return index + 2, "refuse", ""
    if following.text == "as":  # export as namespace X;
        return _past_semicolon(found, index + 4), "erase", ""
    if following.text == "default":
        declared = after is not None and (
            after.text in _DECLARATION_ONLY
            or (after.text == "async" and (found[index + 3].text if index + 3 < len(found) else "") == "function")
        )
        if declared and _named_declaration(found, index + 2):
            return index + 2, "strip", ""
        return index + 2, "return", ""
    return index + 1, "strip", ""


def _named_declaration(found: list[Token], index: int) -> bool:
    """Whether the declaration starting at ``index`` (function, class...) has a name."""
    cursor = index
    while cursor < len(found) and found[cursor].text in ("async", "function", "*", "class", "abstract"):
        cursor += 1
    name = _after(found, cursor)
    return name is not None and name.kind == "id" and name.text not in ("extends", "implements")


def _reexport(found: list[Token], cursor: int, *, types: bool) -> tuple[int, str, str]:
    """From just after ``*`` or ``}`` of an export: to the end of ``[as ns] from "m"``."""
    while cursor < len(found) and found[cursor].kind != "str":
        cursor += 1
    if cursor >= len(found):
        return cursor, "refuse", ""
    return _module_end(found, cursor), "erase" if types else "refuse", _specifier(found[cursor])


def _throw(error: str | None) -> str:
    return f"throw new SyntaxError({json.dumps(error)});" if error else ""


def typescript_module(code: str) -> str:
    """The module a Deno harness imports for ``code``: its body in an async default export.

    >>> typescript_module('export {};\\nreturn 1;')
    'export default (async () => {          \\nreturn 1;\\n})();\\n'
    """
    program = parse_program(code, "program.ts")
    return f"{_OPEN}{_throw(program.error)}{program.body}{_CLOSE}"


def isolate_body(code: str) -> str:
    """The body the isolate worker runs inside its async function (strict for module-style programs)."""
    program = parse_program(code, "program.js")
    directive = '"use strict";' if program.is_module else ""
    return f"{directive}{_throw(program.error)}{program.body}"


_FRAME: Final = re.compile(r"^(\s*at (?:.*?\()?)(program\.(?:ts|js)):(\d+):(\d+)(\)?)\s*$")
_POSITION: Final = re.compile(r"program\.(ts|js):(\d+):(\d+)")
_CODE_LINE: Final = re.compile(r"^(\d+) \| ")
_CARET: Final = re.compile(r"^(\s*\| )(.*)$")


def point_at_program(text: str, code: str, wrapped: str) -> str:
    """``text`` (a TypeScript/JavaScript error or stack) with positions in ``code``, the program as written,
    rather than in ``wrapped``, what the sandbox ran: the wrapper's own frames dropped, columns on the
    first line moved back past the wrapper's opening, the wrapper cut from code frames, and Deno's
    ``TypeError: SyntaxError:`` said once.

    >>> code = "const x = {;"
    >>> wrapped = typescript_module(code)
    >>> print(point_at_program("TypeError: SyntaxError: Unexpected token `;`\\n  |\\n1 | " + wrapped.split("\\n")[0]
    ...     + "\\n  |" + " " * 41 + "~\\n    at program.ts:1:41", code, wrapped))
    SyntaxError: Unexpected token `;`
      |
    1 | const x = {;
      |            ~
        at program.ts:1:12
    >>> stack = "Error: boom\\n    at f (program.js:2:9)\\n    at program.js:4:3"
    >>> print(point_at_program(stack, "f()\\nthrow 1", "x" + code))
    Error: boom
        at f (program.js:2:9)
    """
    first = code.split("\n", 1)[0]
    offset = max(0, len(wrapped.split("\n", 1)[0]) - len(first))
    lines = code.count("\n") + 1
    out: list[str] = []
    strip_caret = False
    for line in text.replace("TypeError: SyntaxError: ", "SyntaxError: ").split("\n"):
        if frame := _FRAME.match(line):
            row, column = int(frame[3]), int(frame[4])
            if row > lines or (row == 1 and column <= offset):
                continue  # the wrapper's own frame
            if row == 1:
                line = f"{frame[1]}{frame[2]}:1:{column - offset}{frame[5]}"
            out.append(line)
            continue
        if strip_caret and (caret := _CARET.match(line)):
            line = caret[1] + caret[2][offset:]
        strip_caret = False
        if (
            (number := _CODE_LINE.match(line))
            and number[1] == "1"
            and offset
            and line[len(number[0]) :].startswith(wrapped[:offset])
        ):
            line = number[0] + line[len(number[0]) + offset :]
            strip_caret = True
        out.append(_POSITION.sub(lambda m: _moved(m, offset), line))
    return "\n".join(out)


def _moved(match: re.Match[str], offset: int) -> str:
    row, column = int(match[2]), int(match[3])
    return f"program.{match[1]}:{row}:{column - offset if row == 1 and column > offset else column}"


def position_fixer(wrap: Callable[[str], str] | None, code: str) -> Callable[[str], str] | None:
    """What turns a run's errors and stderr into positions in ``code`` as written (:func:`point_at_program`),
    for a runtime that runs it as ``wrap`` makes it (TypeScript's module, the isolate's script); None for a
    runtime that runs it as written."""
    if wrap is None:
        return None
    wrapped = wrap(code)
    return lambda text: point_at_program(text, code, wrapped)


def with_program_positions(outcome: RunOutcome, code: str, fix: Callable[[str], str] | None) -> RunOutcome:
    """``outcome`` with its stderr and error message passed through ``fix`` (:func:`position_fixer`), and
    the error saying where in ``code`` it was thrown, with that line's text.

    >>> from conduit.sandbox.isolate.runtime import isolate_script
    >>> fix = position_fixer(isolate_script, "const a = 1;\\nnope();")
    >>> failed = RunOutcome("", "Uncaught ReferenceError: nope is not defined\\n    at program.js:2:1\\n", 1,
    ...     ProgramFailure(-32001, "ReferenceError: nope is not defined"))
    >>> with_program_positions(failed, "const a = 1;\\nnope();", fix).error.message
    'ReferenceError: nope is not defined (at program.js:2:1: nope();)'
    """
    if fix is None:
        return outcome
    error = outcome.error
    stderr = fix(outcome.stderr)
    if error is None:
        return dataclasses.replace(outcome, stderr=stderr)
    message = fix(error.message)
    if "program." not in message and (where := _POSITION.search(stderr)):  # say where, and the line there
        row = int(where[2])
        lines = code.split("\n")
        text = lines[row - 1].strip() if 0 < row <= len(lines) else ""
        message += f" (at {where[0]}{': ' + text if text else ''})"
    return dataclasses.replace(outcome, stderr=stderr, error=ProgramFailure(error.code, message))
