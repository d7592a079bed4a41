"""The host's half of the Monty decision: what CPython's parser rules out, and the never-called wrapper."""

from __future__ import annotations

import ast

import pytest

from conduit.sandbox.monty.check import host_gate, wrapped


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("x = (", "not parsed here"),
        ("try:\n    pass\nexcept ToolError as e:\n    e.code", "ToolError"),
        ("import sys\nsys.exit(2)", "exit"),
        ("raise SystemExit(1)", "SystemExit"),
        ("def g():\n    yield 1", "yield"),
        ("def g():\n    yield from [1]", "yield"),
        ("class A(dict):\n    pass", "bases"),
        ("class A(metaclass=type):\n    pass", "bases"),
        ("from json import *", "import *"),
        ("def f():\n    global X\n    X = 1", "global"),
    ],
)
def test_what_cpython_sees_rules_monty_out(program: str, reason: str) -> None:
    found = host_gate(program)
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "program",
    [
        "1 + 1",
        "r = await tools.toolbox.add(a=1, b=2)\nr['structuredContent']",
        "from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\nP(1)",
        "text = '''\nnot indented\n'''\ntext",
    ],
)
def test_plain_programs_pass_the_host_gate(program: str) -> None:
    assert host_gate(program) is None


@pytest.mark.parametrize(
    "program",
    [
        "1 + 1",
        "@decorator\ndef f(x=side_effect()):\n    pass",
        "x: annotation_with_effect() = 1",
        "text = '''\n\\\nclose'''",
        "# only a comment",
        "value = 1 \\\n    + 2",
    ],
)
def test_the_wrapper_is_one_function_whose_definition_evaluates_nothing(program: str) -> None:
    source = wrapped(program, "__check__")
    assert source is not None
    (definition,) = ast.parse(source).body
    assert isinstance(definition, ast.AsyncFunctionDef) and definition.name == "__check__"
    assert not definition.decorator_list and definition.returns is None and not definition.args.args
    assert all(line.startswith("    ") or not line.strip() for line in source.splitlines()[1:])
