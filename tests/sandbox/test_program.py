"""Programs written as modules: what is erased, stripped, refused, and what keeps its place."""

from __future__ import annotations

import pytest

from conduit.sandbox.host.program import isolate_body, parse_program, tokens, typescript_module


def same_shape(original: str, rewritten: str) -> None:
    """Every line keeps its length and every character that was not module syntax keeps its column."""
    assert [len(line) for line in original.split("\n")] == [len(line) for line in rewritten.split("\n")]


def test_a_program_without_module_syntax_is_untouched() -> None:
    code = "const a = await tools.x.y({});\nreturn a;"
    program = parse_program(code)
    assert (program.body, program.is_module, program.error) == (code, False, None)
    assert typescript_module(code) == f"export default (async () => {{{code}\n}})();\n"


@pytest.mark.parametrize(
    ("code", "kept"),
    [
        ("export {};\nreturn 1;", "\nreturn 1;"),
        ("export { a, b as c };", ""),
        ('export type { T } from "./t.ts";', ""),
        ('import type { T } from "./t.ts";\nconst a: T = 1;', "\nconst a: T = 1;"),
        ('import type T from "./t.ts";', ""),
        ('import type * as ns from "./t.ts";', ""),
        ('import { type A, type B } from "./ab.ts";', ""),
        ("export as namespace Lib;", ""),
    ],
)
def test_type_imports_and_bare_export_lists_are_erased(code: str, kept: str) -> None:
    program = parse_program(code)
    assert program.error is None and program.is_module
    same_shape(code, program.body)
    assert [line.strip() for line in program.body.split("\n")] == [line.strip() for line in kept.split("\n")]


@pytest.mark.parametrize(
    "declaration",
    [
        "const x = 2;",
        "let y;",
        "function f() {}",
        "async function g() {}",
        "function* h() {}",
        "class C {}",
        "abstract class D {}",
        "interface I { a: number }",
        "type U = 1 | 2;",
        "enum E { A }",
        "declare const z: number;",
    ],
)
def test_export_before_a_declaration_is_dropped_and_the_declaration_stays(declaration: str) -> None:
    code = f"export {declaration}\nreturn 1;"
    program = parse_program(code)
    assert program.error is None
    assert program.body == f"       {declaration}\nreturn 1;"


def test_export_default_is_the_result_and_named_default_declarations_stay() -> None:
    assert parse_program("export default 6 * 7;").body == "return         6 * 7;"
    assert parse_program("export default async function () {}").body == "return         async function () {}"
    named = parse_program("export default function main() { return 1; }\nreturn main();").body
    assert named == "               function main() { return 1; }\nreturn main();"
    assert parse_program("export default class Box {}").body == "               class Box {}"


@pytest.mark.parametrize(
    ("code", "line", "specifier"),
    [
        ('import x from "./m.ts";', 1, '"./m.ts"'),
        ("console.log(1);\nimport { readFileSync } from 'node:fs';", 2, '"node:fs"'),
        ('export {};\nimport t from "/etc/passwd" with { type: "text" };\nreturn t;', 2, '"/etc/passwd"'),
        ('import "./side-effect.ts";', 1, '"./side-effect.ts"'),
        ('import * as all from "npm:lodash";', 1, '"npm:lodash"'),
        ('import def, { type T } from "./m.ts";', 1, '"./m.ts"'),
        ('import { type T, value } from "./m.ts";', 1, '"./m.ts"'),
        ('export * from "./m.ts";', 1, '"./m.ts"'),
        ('export { a } from "./m.ts";', 1, '"./m.ts"'),
        ('import fs = require("fs");', 1, '"fs"'),
        ('import type from "./m.ts";', 1, '"./m.ts"'),  # a default import named `type`
    ],
)
def test_value_imports_are_refused_before_anything_runs(code: str, line: int, specifier: str) -> None:
    program = parse_program(code)
    assert program.error is not None
    assert program.error.startswith(f"program.ts:{line}: cannot import {specifier}:")
    assert "tools" in program.error
    same_shape(code, program.body)
    module = typescript_module(code)
    assert module.startswith("export default (async () => {throw new SyntaxError(")  # before the first line's code
    assert "import" not in program.body.replace("import.meta", "")


def test_only_the_first_refusal_is_reported() -> None:
    error = parse_program('import a from "./a.ts";\nimport b from "./b.ts";').error
    assert error is not None and '"./a.ts"' in error and '"./b.ts"' not in error


@pytest.mark.parametrize(
    "code",
    [
        'const s = `import x from "y"`;\nreturn s;',
        '// import x from "y"\nreturn 1;',
        "/* export {} */\nreturn 1;",
        "const re = /import x from 'y'/;\nreturn re.test('');",
        'const t = `${"}"} import x from "y"`;',
        "const o = {import: 1, export: 2};\nreturn o.import + o.export;",
        'const m = await import("./m.ts");\nreturn import.meta.url;',
        "if (ok) { export const x = 1; }",
        'const s = "export {}";',
    ],
)
def test_module_words_in_strings_comments_regexes_and_expressions_are_left_alone(code: str) -> None:
    program = parse_program(code)
    assert (program.body, program.error) == (code, None)


def test_division_is_not_taken_for_a_regex() -> None:
    texts = [token.text for token in tokens("const a = b / c / d; export {};")]
    assert texts[-4:] == ["export", "{", "}", ";"]


def test_isolate_programs_with_module_syntax_run_in_strict_mode() -> None:
    assert isolate_body("export {};\nreturn 1;") == '"use strict";          \nreturn 1;'
    assert isolate_body("return 1;") == "return 1;"
    refused = isolate_body('import x from "./x.js";')
    assert refused.startswith('"use strict";throw new SyntaxError("program.js:1: cannot import \\"./x.js\\":')
