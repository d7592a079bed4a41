"""`conduit run`: the examples through the real sandboxes and demo upstreams, live output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from support import CONDUIT, ConduitHttp, conduit, write_config

pytestmark = [pytest.mark.deno, pytest.mark.e2e]

EXAMPLES = Path(__file__).parents[2] / "examples"
DEMO = str(EXAMPLES / "demo.yaml")


def split_output(stdout: str, lines: int) -> tuple[list[str], object]:
    """The program's first ``lines`` output lines, and the JSON result printed after them."""
    all_lines = stdout.splitlines()
    return all_lines[:lines], json.loads("\n".join(all_lines[lines:]))


@pytest.mark.parametrize(
    ("example", "lines", "result"),
    [
        (
            "cheapest_in_stock.ts",
            [
                "MS-02  Vertical mouse       $39.90  (3 in stock)",
                "MS-01  Trackball mouse      $45.50  (7 in stock)",
                "KB-01  Mechanical keyboard  $89.00  (12 in stock)",
            ],
            ["MS-02", "MS-01", "KB-01"],
        ),
        (
            "stock_report.py",
            [
                "peripherals  4 products    22 units  1 sold out",
                "displays     2 products     4 units  1 sold out",
                "cables       2 products   184 units  0 sold out",
            ],
            {
                "peripherals": {"products": 4, "units": 22, "sold_out": 1},
                "displays": {"products": 2, "units": 4, "sold_out": 1},
                "cables": {"products": 2, "units": 184, "sold_out": 0},
            },
        ),
        (
            "restock_notice.js",
            ["Sold out: Low-profile keyboard, 34in ultrawide", "Restock at 16:30 UTC is 01:30 in Tokyo."],
            {"soldOut": ["Low-profile keyboard", "34in ultrawide"], "tokyo": "01:30"},
        ),
    ],
)
def test_each_example_prints_its_output_and_result_and_exits_0(example: str, lines: list[str], result: object) -> None:
    done = conduit("run", str(EXAMPLES / example), "--config", DEMO)
    assert done.returncode == 0, done.stderr
    assert split_output(done.stdout, len(lines)) == (lines, result)
    assert done.stderr == ""  # no log noise around a successful run


def test_a_throwing_program_exits_1_with_its_output_and_the_error(tmp_path: Path) -> None:
    program = tmp_path / "boom.ts"
    program.write_text('console.log("before");\nthrow new Error("boom");\n')
    done = conduit("run", str(program), "--config", DEMO)
    assert done.returncode == 1
    assert done.stdout == "before\n"
    assert "Error: boom" in done.stderr
    assert "(error -32001)" in done.stderr


@pytest.mark.parametrize(
    ("lang", "code"), [("ts", "while (true) {}"), ("js", "while (true) {}"), ("py", "while True: pass")]
)
def test_a_program_over_its_time_limit_is_killed_with_a_non_zero_exit(lang: str, code: str) -> None:
    started = time.monotonic()
    done = conduit("run", "-", "--lang", lang, "--timeout-ms", "1500", stdin=code)
    assert done.returncode == 137
    assert "timed out after 1500 ms (error -32008)" in done.stderr
    assert time.monotonic() - started < 30


def test_the_allowlist_applies_to_local_runs() -> None:
    done = conduit("run", str(EXAMPLES / "cheapest_in_stock.ts"), "--config", DEMO, "--allow", "time.*")
    assert done.returncode == 1
    # The catalog is outside the allowlist, so the program's SDK has no `tools.catalog` at all.
    assert "Cannot read properties of undefined (reading 'search_products')" in done.stderr
    assert done.stdout == ""


def test_bad_invocations_exit_2_with_a_reason(tmp_path: Path) -> None:
    missing = conduit("run", str(tmp_path / "nosuch.ts"))
    assert missing.returncode == 2
    assert "No such file" in missing.stderr
    unknown = tmp_path / "program.rb"
    unknown.write_text("puts 1")
    guessed = conduit("run", str(unknown))
    assert guessed.returncode == 2
    assert "use --lang ts|py|js" in guessed.stderr
    bad_allow = conduit("run", "-", "--lang", "ts", "--allow", "bad pattern!", stdin="return 1")
    assert bad_allow.returncode == 2
    assert "allowedTools" in bad_allow.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("resourceLimits:\n  timeoutMs: -5\n")
    config = conduit("run", "-", "--lang", "ts", "--config", str(broken), stdin="return 1")
    assert config.returncode == 2
    assert "resourceLimits.timeoutMs" in config.stderr


@pytest.mark.anyio
async def test_output_streams_while_the_program_runs(anyio_backend: str) -> None:
    code = 'console.log("first");\nawait new Promise((r) => setTimeout(r, 2000));\nconsole.log("second");\n'
    async with await anyio.open_process([CONDUIT, "run", "-", "--lang", "ts"]) as process:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send(code.encode())
        await process.stdin.aclose()
        received = b""
        with anyio.fail_after(60):
            while b"first\n" not in received:
                received += await process.stdout.receive()
        first_at = time.monotonic()
        with anyio.fail_after(60):
            await process.wait()
        assert time.monotonic() - first_at > 1.0, "'first' arrived only when the program ended"
        async for chunk in process.stdout:
            received += chunk
    assert received == b"first\nsecond\n"
    assert process.returncode == 0


@pytest.fixture(scope="module")
async def demo_server(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConduitHttp]:
    upstreams = [
        {"id": "catalog", "command": sys.executable, "args": [str(EXAMPLES / "servers" / "catalog.py")]},
        {"id": "time", "command": "mcp-server-time", "args": ["--local-timezone", "Etc/UTC"]},
    ]
    config = write_config(tmp_path_factory.mktemp("remote"), {"upstreams": upstreams})
    async with ConduitHttp.start(config) as server:
        yield server


async def remote(server: ConduitHttp, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(
        lambda: conduit("run", *args, "--url", server.url, "--token", server.token, stdin=stdin)
    )


@pytest.mark.anyio
async def test_run_against_a_running_server_gives_the_same_output_and_exit_code(demo_server: ConduitHttp) -> None:
    done = await remote(demo_server, str(EXAMPLES / "restock_notice.js"))
    assert done.returncode == 0, done.stderr
    assert split_output(done.stdout, 2) == (
        ["Sold out: Low-profile keyboard, 34in ultrawide", "Restock at 16:30 UTC is 01:30 in Tokyo."],
        {"soldOut": ["Low-profile keyboard", "34in ultrawide"], "tokyo": "01:30"},
    )
    failed = await remote(demo_server, "-", "--lang", "py", stdin="print('partial')\nraise ValueError('nope')")
    assert failed.returncode == 1
    assert failed.stdout == "partial\n"
    assert "ValueError: nope" in failed.stderr


@pytest.mark.anyio
async def test_run_against_a_server_reports_refusals(demo_server: ConduitHttp) -> None:
    invalid = await remote(demo_server, "-", "--lang", "ts", "--allow", "bad!", stdin="return 1")
    assert invalid.returncode == 2
    assert "invalid allowlist pattern" in invalid.stderr
    wrong = await anyio.to_thread.run_sync(
        lambda: conduit("run", "-", "--lang", "ts", "--url", demo_server.url, "--token", "wrong", stdin="return 1")
    )
    assert wrong.returncode == 1
    assert "refused the token" in wrong.stderr
