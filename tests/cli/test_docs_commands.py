"""The README's tour and every example of ``conduit --help`` and its commands' help, run as written.

What a reader would change is all that is changed: ports (the tour's 3000 and 3001 are taken by the test's own
free ones), and the example hosts of ``conduit auth`` (``mcp.example.com``, ``auth.example.com``), which are
this test's authorization server on loopback. Where the docs show output, what the command printed is compared
with it.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx2
import pytest

from conduit.upstream.credential_store import new_key
from servers.oauth_server import AuthServer
from support import CONDUIT, ConduitHttp, authorization_url, free_port, marked_blocks, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
TOKEN = "docs-token-0123456789abcdef"
COMMANDS = ("", "serve", "run", "tools", "auth", "doctor", "completion")


async def bash(script: str, env: Mapping[str, str], cwd: Path = ROOT, stdin: bytes | None = None) -> tuple[int, str]:
    """Run ``script`` in bash (stopping at the first failure); its exit code and stdout (stderr shown on failure)."""
    with anyio.fail_after(300):
        done = await anyio.run_process(
            ["bash", "-e", "-o", "pipefail", "-c", script], env=dict(env), cwd=cwd, input=stdin, check=False
        )
    assert done.returncode == 0, f"{script}\n{done.stderr.decode()}"
    return done.returncode, done.stdout.decode()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".config" / "fish" / "completions").mkdir(parents=True)  # where fish keeps them
    return {
        **os.environ,
        "HOME": str(home),
        "IPC_BEARER_TOKEN": TOKEN,
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "BROWSER": "true",  # `conduit auth` opens the URL with it (a command that opens nothing)
    }


# -- the README's tour ------------------------------------------------------------------------------------------


async def test_the_tour_runs_as_written_and_prints_what_it_shows(env: dict[str, str]) -> None:
    blocks = marked_blocks(README)
    tour = "\n".join(line for line in blocks["snippet", "tour"].splitlines() if not line.startswith("make "))
    await bash(tour, env)  # every line, as written (`make setup` is what this suite's own set-up ran)
    shown = blocks["output", "tour"].splitlines()
    command = shown[0].removeprefix("$ ")
    _, printed = await bash(command, env, cwd=ROOT / "examples")
    assert printed.splitlines() == shown[1:]


async def test_the_tour_server_serves_what_the_operator_sees(env: dict[str, str]) -> None:
    blocks = marked_blocks(README)
    port, ops_port = free_port(), free_port()
    server_lines = blocks["snippet", "tour-server"].splitlines()
    assert server_lines[1].split()[:2] == ["make", "run"]  # `make run` serves examples/demo.yaml over HTTP
    exported = dict(line.split("#")[0].split(None, 1)[1].strip().split("=", 1) for line in server_lines[:1])
    served = {**env, **exported, "PORT": str(port), "OPS_PORT": str(ops_port)}
    async with serving([CONDUIT, "serve", "--config", "examples/demo.yaml"], served):
        operator = blocks["snippet", "tour-operator"].replace(":3000/", f":{port}/").replace(":3001/", f":{ops_port}/")
        _, printed = await bash(operator, env)
    lines = printed.splitlines()
    health, *metrics = blocks["output", "tour-operator"].splitlines()
    assert any(line.startswith(health.removesuffix("...")) for line in lines), printed
    assert [line for line in lines if line.startswith("conduit_")] == metrics, printed


@asynccontextmanager
async def serving(command: list[str], env: Mapping[str, str]) -> AsyncIterator[anyio.abc.Process]:
    """``command`` (a ``conduit serve``) running until its MCP listener is up; stopped with SIGTERM after."""
    process = await anyio.open_process(command, env=dict(env), cwd=ROOT)
    try:
        assert process.stderr is not None
        seen = b""
        with anyio.fail_after(60):
            while b"Conduit listening on" not in seen:
                seen += await process.stderr.receive()
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            returncode = await process.wait()
        assert returncode == 0


# -- every example of the help texts ------------------------------------------------------------------------------


def help_examples() -> list[str]:
    """The example commands of ``conduit --help`` and of each command's ``--help``, as printed."""
    import subprocess

    examples = []
    for command in COMMANDS:
        text = subprocess.run(
            [CONDUIT, *command.split(), "--help"], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
        section = text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]
        for line in section.splitlines():
            example = re.split(r"\s{2,}", line.strip())[0]  # what follows two spaces says what it does
            if example.split()[0] in ("conduit", "echo", "source"):
                examples.append(example)
    return list(dict.fromkeys(examples))  # `conduit --help` repeats some of its commands' examples


EXAMPLES = help_examples()


def auth_config(directory: Path, server: AuthServer) -> Path:
    """What the ``--principal`` examples name: principals alice and bob, OAuth callers, and per-principal
    upstreams github (OAuth, this test's authorization server) and search (an API key)."""
    return write_config(
        directory,
        {
            "auth": {
                "principals": [
                    {"id": "alice", "apiKey": "alice-key-0123456789abcdef"},
                    {"id": "bob", "apiKey": "bob-key-0123456789abcdefgh"},
                ],
                "oauth": {"issuer": f"{server.url}/tenant", "audience": "http://127.0.0.1:3000/mcp"},
                "credentialStore": {"path": "store.enc", "key": new_key()},
            },
            "upstreams": [
                {"id": "github", "type": "streamableHttp", "url": f"{server.url}/mcp", "credentials": "perPrincipal"},
                {"id": "search", "type": "streamableHttp", "url": f"{server.url}/mcp", "credentials": "perPrincipal"},
            ],
        },
    )


async def authorize(command: str, env: Mapping[str, str], cwd: Path) -> int:
    """Run a ``conduit auth`` that sends a person to the authorization server, and be that person."""
    async with await anyio.open_process(["bash", "-c", command], env=dict(env), cwd=cwd) as process:
        url = await authorization_url(process)
        async with httpx2.AsyncClient(follow_redirects=True, timeout=30) as browser:
            page = await browser.get(url)  # consent, then the redirect to Conduit's loopback listener
        assert "Conduit is authorized" in page.text, page.text
        with anyio.fail_after(60):
            return await process.wait()


@pytest.mark.parametrize("example", EXAMPLES)
async def test_each_help_example_runs_as_written(
    example: str, env: dict[str, str], tmp_path: Path, auth_server: AuthServer
) -> None:
    env = {**env, "CONFIG_FILE": str(ROOT / "examples" / "demo.yaml"), "PORT": "0", "OPS_PORT": "0"}
    words = example.split()
    if words[:2] == ["conduit", "serve"]:
        if "--stdio" in words:  # a client that connects and leaves at once: the server stops, exit 0
            await bash(example, env, stdin=b"")
        else:
            async with serving(["bash", "-c", f"exec {example}"], env):
                pass
        return
    if words[:2] == ["conduit", "auth"] and "--new-store-key" not in words:
        host = f"http://127.0.0.1:{urlsplit(auth_server.url).port}"
        command = example.replace("https://mcp.example.com", host).replace("https://auth.example.com", f"{host}/tenant")
        auth_server.state.loopback_clients.add("conduit-prod")  # a client registered beforehand (--client-id)
        env = {**env, "CONFIG_FILE": str(auth_config(tmp_path, auth_server)), "BOBS_KEY": "bobs-search-key-0123"}
        if "--api-key" in words:
            await bash(command, env, cwd=tmp_path)
        else:
            assert await authorize(command, env, tmp_path) == 0
        return
    if "--url" in words:  # a running server, as `make run` starts it
        port = free_port()
        served = {**env, "PORT": str(port)}
        async with serving([CONDUIT, "serve", "--config", "examples/demo.yaml"], served):
            _, printed = await bash(example.replace(":3000/", f":{port}/"), env)
        assert printed.strip()
        return
    _, printed = await bash(example, env)
    if example.startswith("echo 'return 6 * 7'"):
        assert printed.strip() == "42"


# -- docs/ARCHITECTURE.md: adding an upstream at run time ---------------------------------------------------------


async def test_registering_an_upstream_through_the_bridge_works_as_documented(
    env: dict[str, str], tmp_path: Path
) -> None:
    blocks = marked_blocks(ROOT / "docs" / "ARCHITECTURE.md")
    async with ConduitHttp.start(write_config(tmp_path, {"upstreams": []}), token=TOKEN) as server:
        logged = re.search(r"sandbox bridge on (127\.0\.0\.1:\d+)", server.log.read_text())
        assert logged is not None
        snippet = blocks["snippet", "register-upstream"].replace("127.0.0.1:41234", logged[1], 1)
        _, printed = await bash(snippet, env, cwd=tmp_path)
        assert printed.strip() == blocks["output", "register-upstream"]
        async with server.client() as client:
            listed = await client.call_tool("conduit__mcp_list_tool_packages", {})
        assert listed.structured_content is not None
        assert "weather" in [package["packageId"] for package in listed.structured_content["packages"]]


async def test_the_config_error_shown_in_config_md_is_what_conduit_says(env: dict[str, str], tmp_path: Path) -> None:
    blocks = marked_blocks(ROOT / "docs" / "CONFIG.md")
    (tmp_path / "conduit.yaml").write_text(blocks["snippet", "config-error"] + "\n")
    for command in ("serve", "tools"):
        with anyio.fail_after(60):
            done = await anyio.run_process([CONDUIT, command], env=env, cwd=tmp_path, check=False)
        assert done.returncode == 2
        said = done.stderr.decode().strip().replace(str(tmp_path), "/home/you/project")  # the file, by its full path
        assert said == blocks["output", "config-error"], said
