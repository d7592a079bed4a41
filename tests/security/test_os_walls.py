"""OS walls around sandbox processes: memory and pids caps, Landlock, no-new-privileges, CPU limit.

Each test attempts the attack and checks it fails; where this machine lacks a layer, the test
says so (skip with the reason) instead of passing silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conduit.assembly import open_gateway
from conduit.config.schema import Config
from conduit.core.gateway import Gateway
from conduit.errors import MEMORY_LIMIT
from conduit.sandbox.base import BridgeAddress
from conduit.sandbox.deno.runtime import DenoLauncher, DenoSandbox, find_deno
from conduit.sandbox.host.pool import PooledRuntime
from conduit.sandbox.walls.cgroups import CgroupSupport, detect, launched_leaf, remove_parents
from conduit.sandbox.walls.confine import encode_spec
from conduit.sandbox.walls.launch import CONFINE, NATIVE_CONFINE, SYSTEM_READ_ONLY, WALL_NAMES, Walls, native_launcher
from support import MASTER, TOOLBOX, conduit, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.deno]

WALLS = Walls.detect(30_000)
WALLS.close()
ACTIVE = {wall.name: wall for wall in WALLS.report}


def need(*names: str) -> None:
    for name in names:
        if not ACTIVE[name].active:
            pytest.skip(f"{name} is unavailable on this machine: {ACTIVE[name].detail}")


@pytest.fixture(scope="module")
async def walled(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    config = Config.model_validate(
        {
            "upstreams": [{"id": "toolbox", "command": sys.executable, "args": [TOOLBOX]}],
            "resourceLimits": {"memoryLimitMb": 128, "timeoutMs": 20_000},
            "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 1, "max": 2}},
        }
    )
    base = tmp_path_factory.mktemp("walls")
    async with open_gateway(config, master_token=MASTER, base_dir=base, host_env=dict(os.environ)) as gateway:
        yield gateway


async def still_serves(gateway: Gateway, language: str) -> None:
    code = (
        "r = await tools.toolbox.add(a=1, b=2)\nr['structuredContent']['sum']"
        if language == "python"
        else ("return (await tools.toolbox.add({a: 1, b: 2})).structuredContent.sum;")
    )
    outcome = await gateway.execute(language, code)
    assert (outcome.error, outcome.result) == (None, 3)


BOMBS = [
    ("typescript", "const held = []; while (true) held.push(new Array(1 << 20).fill(Math.random()));"),
    ("typescript", "const held = []; while (true) { const a = new Uint8Array(16 << 20); a.fill(1); held.push(a); }"),
    ("typescript", "const h = []; while (true) h.push(new Float64Array(8 << 20).fill(1.5));"),
    ("python", "held = []\nwhile True:\n    held.append(bytearray(16 << 20))"),
    ("isolate", "const h = []; while (true) h.push('x'.repeat(1 << 20) + Math.random());"),
]


@pytest.mark.parametrize(("language", "code"), BOMBS)
async def test_memory_bombs_end_with_the_memory_error(walled: Gateway, language: str, code: str) -> None:
    need("cgroup-memory")
    outcome = await walled.execute(language, code)
    assert outcome.error is not None and outcome.error.code == MEMORY_LIMIT, outcome
    await still_serves(walled, language)  # how fast each bomb ends, under load: bench/limit_ends.py


async def test_a_small_object_heap_bomb_ends_with_the_memory_error(walled: Gateway) -> None:
    # Millions of small objects make V8 run last-resort collections before it gives up; how long that takes
    # (under load too) is measured in bench/limit_ends.py, not bounded here.
    code = "const held = []; while (true) held.push({text: 'x'.repeat(64) + Math.random(), n: [1, 2, 3]});"
    outcome = await walled.execute("typescript", code)
    assert outcome.error is not None and outcome.error.code == MEMORY_LIMIT, outcome
    await still_serves(walled, "typescript")


async def test_a_worker_flood_is_contained(walled: Gateway) -> None:
    need("cgroup-pids", "cgroup-memory")
    code = """
    const source = URL.createObjectURL(new Blob(["setInterval(() => {}, 1000)"], {type: "application/javascript"}));
    const workers = [];
    for (let i = 0; i < 2000; i++) workers.push(new Worker(source, {type: "module"}));
    await new Promise((resolve) => setTimeout(resolve, 3000));
    return workers.length;
    """
    outcome = await walled.execute("typescript", code)
    assert outcome.error is not None, "2000 workers started and ran"
    await still_serves(walled, "typescript")


async def test_sandbox_processes_run_in_their_cgroup_with_no_new_privileges(walled: Gateway) -> None:
    need("cgroup-memory", "no-new-privs")
    pool = walled.runtimes["typescript"]
    assert isinstance(pool, PooledRuntime)
    sandbox = await pool.launcher.prepare(128)
    assert isinstance(sandbox, DenoSandbox)
    try:
        await wait_until(lambda: read(f"/proc/{sandbox.pid}/comm").strip() == "deno")  # the launcher has exec'd
        status = read(f"/proc/{sandbox.pid}/status")
        assert "NoNewPrivs:\t1" in status
        walls = walled.walls
        assert walls is not None
        if walls.uid is not None and walls.uid_kinds.get("typescript"):
            assert f"Uid:\t{walls.uid}\t{walls.uid}" in status  # running as root, the sandbox is not
        memberships = read(f"/proc/{sandbox.pid}/cgroup")
        assert "/sandbox-" in memberships
        leaf = next(line.split(":", 2)[2] for line in memberships.splitlines() if ":memory:" in line)
        limit = int(read(f"/sys/fs/cgroup/memory{leaf}/memory.limit_in_bytes"))
        assert limit == (128 + 128) << 20
    finally:
        await sandbox.discard()


def read(path: str) -> str:
    return Path(path).read_text()


LAUNCHERS = ("python", "native")


def launcher_walls(launcher: str) -> Walls:
    """Walls that only build launcher commands, with the Python or the native launcher."""
    native = native_launcher() if launcher == "native" else None
    if launcher == "native" and native is None:
        pytest.skip("the native launcher is not built here (no C compiler at `make setup`)")
    return Walls(CgroupSupport(0, None, None, "not needed"), 0, 0, native=native)


def confined(
    profile_read_only: list[str], argv: list[str], read_write: list[str] | None = None, launcher: str = "python"
) -> subprocess.CompletedProcess[str]:
    spec = {"landlock": {"read_only": profile_read_only, "read_write": read_write or []}, "no_new_privs": True}
    return subprocess.run(
        launcher_walls(launcher).command(spec, argv), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_both_launchers_apply_every_wall_the_same_way(launcher: str) -> None:
    need("landlock")
    walls = launcher_walls(launcher)
    own = Path(tempfile.mkdtemp(prefix="conduit-launcher-"))  # under /tmp: reachable by the sandbox uid
    try:
        probe = (
            "grep -E '^(NoNewPrivs|Uid)' /proc/self/status; echo nice $(nice); echo cpu $(ulimit -t); env | sort; "
            "if head -c1 /etc/passwd | grep -q .; then echo READ-PASSWD; fi; "
            "if echo x > /tmp/conduit-probe-$$; then echo WROTE-TMP; fi; "
            f"if echo ok > {own}/mine; then echo WROTE-OWN; fi"
        )
        read_only = [*SYSTEM_READ_ONLY, "/bin", "/usr/bin", "/proc"]
        spec: dict[str, object] = {
            "cpu_seconds": 77,
            "niceness": 3,
            "no_new_privs": True,
            "landlock": {"read_only": read_only, "read_write": [str(own)]},
            "env": {"CONDUIT_PROBE": "yes", "PATH": "/usr/bin:/bin"},
        }
        root = os.geteuid() == 0
        if root:
            spec["uid"] = 65534
            os.chown(own, 65534, 65534)
        done = subprocess.run(walls.command(spec, ["/bin/sh", "-c", probe]), capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(own, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "NoNewPrivs:\t1" in lines
    if root:
        assert any(line.startswith("Uid:\t65534\t65534") for line in lines), lines
    assert "nice 3" in lines and "cpu 77" in lines
    assert "CONDUIT_PROBE=yes" in lines and not any(line.startswith("HOME=") for line in lines)
    assert "READ-PASSWD" not in lines and "WROTE-TMP" not in lines, lines
    assert "WROTE-OWN" in lines, (lines, done.stderr)


def test_the_native_launcher_refuses_what_it_cannot_apply(tmp_path: Path) -> None:
    native = launcher_walls("native").native
    assert native is not None
    cases = {
        ("--bogus", "--", "/bin/true"): "unknown option: --bogus",
        ("--cpu", "many", "--", "/bin/true"): "not a number: --cpu",
        ("--cgroup", str(tmp_path / "absent" / "cgroup.procs"), "--", "/bin/true"): "joining cgroup",
        ("--nnp",): "usage",
        ("--", str(tmp_path / "missing-binary")): "execve",
    }
    for args, message in cases.items():
        done = subprocess.run([native, *args], capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode == 121, (args, done)
        assert message in done.stderr, (args, done.stderr)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_both_launchers_make_and_join_a_cgroup_of_their_own(launcher: str) -> None:
    need("cgroup-pids")
    detected = Walls.detect(30_000)
    try:
        parents = [str(path) for path in detected.cgroups.parents]
        probe = ["/bin/sh", "-c", "echo $$; cat /proc/self/cgroup"]
        # As Monty's workers are launched: their own leaves, and the parent-death signal after them.
        command = launcher_walls(launcher).command({"new_cgroups": parents, "parent_death": True}, probe)
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        pid, *lines = done.stdout.splitlines()
        joined = [line for line in lines if line.endswith(f"/{launched_leaf(int(pid))}")]
        assert len(joined) == len(parents), done.stdout  # one leaf per hierarchy (v1: memory and pids)
    finally:
        detected.close()


def test_a_native_launcher_copy_reads_its_options_and_makes_its_own_cgroup(tmp_path: Path) -> None:
    """How Monty's pool starts walled workers: a copy of the launcher, its options in NAME.args."""
    native = launcher_walls("native").native
    assert native is not None
    need("cgroup-pids")
    walls = Walls.detect(30_000)
    try:
        parent = walls.cgroups.pids
        assert parent is not None
        copy = tmp_path / "worker"
        shutil.copyfile(native, copy)
        copy.chmod(0o755)
        options = ["--cgroup-new", str(parent), "--nnp", "--clear-env", "--", "/bin/sh", "-c"]
        (tmp_path / "worker.args").write_text("".join(f"{item}\n" for item in options))
        done = subprocess.run(
            [str(copy), 'echo "$$"; grep NoNewPrivs /proc/self/status; cat /proc/self/cgroup; env'],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        pid, nnp, *rest = done.stdout.splitlines()
        assert nnp.split() == ["NoNewPrivs:", "1"]
        assert any(line.endswith(f"/sandbox-pid-{pid}") for line in rest), done.stdout
        assert not any(line.startswith("HOME=") for line in rest)  # --clear-env from the file
    finally:
        walls.close()


def test_walls_use_the_native_launcher_when_it_is_built() -> None:
    walls = Walls.detect(30_000)
    try:
        if native_launcher() is None:
            pytest.skip("the native launcher is not built here (no C compiler at `make setup`)")
        assert walls.native == str(NATIVE_CONFINE)
        command = walls.command({"no_new_privs": True}, ["/bin/true"])
        assert command == [str(NATIVE_CONFINE), "--nnp", "--", "/bin/true"]
        assert subprocess.run(command, timeout=10, check=False).returncode == 0
    finally:
        walls.close()


def test_landlock_hides_the_host_even_from_a_deno_granted_read_everywhere(tmp_path: Path) -> None:
    need("landlock")
    runtime = DenoLauncher(deno_path=find_deno(None), bridge=BridgeAddress("127.0.0.1", 9), work_dir=tmp_path)
    home = runtime.homes.make()
    try:
        profile = runtime.profile()
        program = home / "steal.ts"
        program.write_text(
            'for (const path of ["/etc/passwd", "/root", "/proc/1/environ"]) {\n'
            "  try { Deno.readFileSync(path); console.log(`READ ${path}`); }\n"
            "  catch (e) { console.log(`${path}: ${e.name}`); }\n"
            "}\n"
            'try { Deno.writeTextFileSync("/tmp/conduit-landlock-probe", "x"); console.log("WROTE"); }\n'
            "catch (e) { console.log(`write: ${e.name}`); }\n"
        )
        argv = [runtime.deno_path, "run", "--allow-read", "--allow-write", "--no-config", "--no-lock", str(program)]
        env = {**runtime.env(home), "PATH": "/usr/bin:/bin"}
        spec = {"landlock": {"read_only": [*SYSTEM_READ_ONLY, *profile.read_only], "read_write": [str(home)]}}
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(CONFINE), encode_spec(spec), "--", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=str(home),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "READ" not in done.stdout and "WROTE" not in done.stdout, done.stdout
        assert "/etc/passwd: PermissionDenied" in done.stdout
        assert not Path("/tmp/conduit-landlock-probe").exists()
    finally:
        runtime.homes.close()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_landlock_allows_what_the_profile_names_and_nothing_else(launcher: str, tmp_path: Path) -> None:
    need("landlock")
    allowed = tmp_path / "allowed.txt"
    allowed.write_text("fine")
    python = [sys.executable, "-I", "-S", "-c"]
    probe = (
        "import sys\nfor p in sys.argv[1:]:\n"
        "    try: open(p).read(); print('read', p)\n"
        "    except OSError as e: print('denied', p, e.errno)"
    )
    roots = [sys.base_prefix, sys.prefix, os.path.realpath(sys.executable), "/lib", "/lib64", "/usr/lib"]
    argv = [*python, probe, str(allowed), "/etc/passwd", str(TOOLBOX)]
    done = confined([*roots, str(allowed)], argv, launcher=launcher)
    assert done.returncode == 0, done.stderr
    assert f"read {allowed}" in done.stdout
    assert "denied /etc/passwd 13" in done.stdout
    assert f"denied {TOOLBOX} 13" in done.stdout


def test_a_required_layer_that_is_missing_stops_conduit_at_start(tmp_path: Path) -> None:
    config = tmp_path / "conduit.yaml"
    config.write_text("transport: stdio\nisolation:\n  enabled: false\n  require: [landlock, cgroup-memory]\n")
    doctor = conduit("doctor", "--config", str(config))
    assert doctor.returncode == 1
    assert "FAIL  isolation landlock (required): disabled by isolation.enabled: false" in doctor.stderr
    served = conduit("serve", "--config", str(config), stdin="")
    assert served.returncode == 1
    assert "required isolation layers are unavailable: cgroup-memory" in served.stderr


def test_doctor_lists_every_layer(tmp_path: Path) -> None:
    done = conduit("doctor", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in WALL_NAMES:
        assert f"isolation {name}:" in done.stdout


async def test_every_runtime_runs_unprivileged_when_conduit_is_root(walled: Gateway) -> None:
    need("unprivileged-uid")
    walls = walled.walls
    assert walls is not None
    if walls.uid is None:
        pytest.skip("Conduit is not running as root here: there is no uid to drop")
    for name in ("typescript", "isolate"):
        runtime = walled.runtimes[name]
        sandbox = await (runtime.launcher if isinstance(runtime, PooledRuntime) else runtime).prepare(128)
        try:
            comm = "deno" if name == "typescript" else "python"
            await wait_until(lambda: read(f"/proc/{sandbox.pid}/comm").strip().startswith(comm))  # noqa: B023
            await wait_until(lambda: f"Uid:\t{walls.uid}\t" in read(f"/proc/{sandbox.pid}/status"))  # noqa: B023
        finally:
            await sandbox.discard()


def test_cgroups_left_by_a_killed_conduit_are_removed_at_the_next_start() -> None:
    need("cgroup-memory")
    first = detect()
    assert first.memory is not None
    stale = first.memory.parent / "conduit-999999999"
    (stale / "sandbox-1").mkdir(parents=True)
    remove_parents(first)
    again = detect()
    try:
        assert not stale.exists()
    finally:
        remove_parents(again)
