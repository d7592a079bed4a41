"""`conduit tools`: upstreams and their tools, one tool's schema, the SDK stubs, and failures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from support import TOOLBOX, conduit, write_config

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> str:
    upstreams = [{"id": "toolbox", "command": sys.executable, "args": [TOOLBOX]}]
    return str(write_config(tmp_path_factory.mktemp("tools"), {"upstreams": upstreams}))


def test_the_listing_names_each_upstream_and_its_tools(config: str) -> None:
    done = conduit("tools", "--config", config)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("toolbox  (") and "tools.toolbox.*" in lines[0]
    names = [line.split()[0] for line in lines[1:]]
    assert {"echo", "add", "sleep", "fail", "crash", "env", "protocol-error"} <= set(names)


def test_json_is_what_discovery_returns(config: str) -> None:
    done = conduit("tools", "--config", config, "--json")
    assert done.returncode == 0, done.stderr
    tools = {tool["name"]: tool for tool in json.loads(done.stdout)}
    assert tools["toolbox__add"]["upstream"] == "toolbox"
    assert tools["toolbox__add"]["tool"] == "add"
    assert tools["toolbox__add"]["inputSchema"]["required"] == ["a", "b"]


@pytest.mark.parametrize("name", ["toolbox.add", "toolbox__add"])
def test_one_tool_shows_its_call_forms_and_schema(config: str, name: str) -> None:
    done = conduit("tools", name, "--config", config)
    assert done.returncode == 0, done.stderr
    assert "await tools.toolbox.add(args: { a: number; b: number })" in done.stdout
    assert "await tools.toolbox.add(a=..., b=...)" in done.stdout
    schema = json.loads(done.stdout.split("input schema:\n", 1)[1])
    assert schema["properties"]["a"] == {"type": "number"}
    one = json.loads(conduit("tools", name, "--config", config, "--json").stdout)
    assert one["name"] == "toolbox__add"


def test_an_unknown_tool_is_an_error(config: str) -> None:
    done = conduit("tools", "toolbox.nope", "--config", config)
    assert done.returncode == 1
    assert "no tool 'toolbox.nope'" in done.stderr


@pytest.mark.parametrize(
    ("sdk", "expected"),
    [
        ("ts", 'add: (args: { a: number; b: number }): Promise<CallToolResult> => invoke("toolbox__add", args)'),
        ("py", "async def add(self, args: dict[str, Any] | None = None, /, *, a: float = _MISSING"),
        ("js", 'add: (args) => invoke("toolbox__add", args)'),
    ],
)
def test_sdk_stubs_are_the_generated_sdk(config: str, sdk: str, expected: str) -> None:
    done = conduit("tools", "--config", config, "--sdk", sdk)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


def with_a_dead_upstream(tmp_path: Path) -> Path:
    """A config with the toolbox and an upstream whose command does not exist."""
    upstreams = [
        {"id": "toolbox", "command": sys.executable, "args": [TOOLBOX]},
        {"id": "ghost", "command": str(tmp_path / "no-such-server")},
    ]
    return write_config(tmp_path, {"upstreams": upstreams})


def test_an_unreachable_upstream_is_reported_and_the_rest_still_listed(tmp_path: Path) -> None:
    done = conduit("tools", "--config", str(with_a_dead_upstream(tmp_path)))
    assert done.returncode == 1
    assert "upstream 'ghost' could not be listed" in done.stderr
    assert "ghost  (unavailable)" in done.stdout
    assert "  echo" in done.stdout


def test_no_upstreams_says_how_to_add_them(tmp_path: Path) -> None:
    done = conduit("tools", "--config", str(write_config(tmp_path, {})))
    assert done.returncode == 0
    assert "no upstreams are configured" in done.stdout


@pytest.mark.parametrize("command", ["serve", "run", "tools", "auth", "doctor"])
def test_every_command_has_help_with_examples(command: str) -> None:
    done = conduit(command, "--help")
    assert done.returncode == 0
    assert "examples:" in done.stdout
    assert f"conduit {command}" in done.stdout


def test_version() -> None:
    done = conduit("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("conduit ")


def test_doctor_checks_that_each_upstream_is_reachable(tmp_path: Path) -> None:
    done = conduit("doctor", "--config", str(with_a_dead_upstream(tmp_path)))
    assert done.returncode == 1
    assert "ok    upstream toolbox: reachable, " in done.stdout
    assert "FAIL  upstream ghost: " in done.stderr
    assert "no-such-server" in done.stderr  # the cause, not just "unavailable"
