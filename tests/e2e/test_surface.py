"""The code-mode surface stays small and flat: what a model reads for one task, with real upstreams.

Through a real Conduit over stdio with ``codeModeOnly: true``: the four reference upstreams (PyPI
``mcp-server-time``, npm ``@modelcontextprotocol/server-everything``, ``-memory``, ``-filesystem``),
then the same four and a server with 500 generated tools. For a task needing any one package, its
``tools/list`` + one search + the package's first page of stubs + its largest declaration stays within
6 KB; adding 500 tools leaves ``tools/list``, those packages' stubs and declarations unchanged, and a
search stays within its limit of lines (it may rank other matches).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
import surface  # bench/surface.py: the same measurement the bench prints

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture(scope="module")
def installed() -> None:
    if shutil.which("node") is None or not surface.REFERENCE.is_dir():
        pytest.fail("the reference upstreams are not installed: run `make test` (it installs them)")


async def test_the_surface_for_any_one_package_is_within_6_kb_and_flat_as_tools_grow(
    installed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = await surface.surfaces(with_many=False)
    grown = await surface.surfaces(with_many=True)
    skilled = await surface.surfaces(with_many=False, skills=200)
    with capsys.disabled():
        print("\n" + surface.table("four reference upstreams", reference))
        print(surface.table("the four and 500 generated tools", grown))
        print(surface.table("the four and 200 saved skills", skilled))
    assert set(reference) == {"time", "everything", "memory", "filesystem"}
    assert reference["everything"].upstream_tools >= 10 and reference["filesystem"].upstream_tools >= 10
    assert grown["many"].upstream_tools == reference["time"].upstream_tools + 500  # every tool, counted once
    assert set(skilled) == {*reference, "skills"} and skilled["skills"].upstream_tools >= 200
    for measured in (reference, grown, skilled):
        for package, size in measured.items():
            assert size.total <= surface.BUDGET, (package, size)
    for package, size in reference.items():
        after = grown[package]
        assert (after.tools_list, after.stubs, after.schema) == (size.tools_list, size.stubs, size.schema), package
        assert after.search <= surface.BUDGET // 6  # a search answers at most its limit of lines, however many match
    assert grown["time"].direct > 10 * reference["time"].direct  # exposing the tools directly grows with them
