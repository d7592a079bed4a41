"""The state database on real SQLite and a real PostgreSQL server: workspaces and skills, their limits,
atomic writes, sealing at rest, migrations from an older store, and a database that goes away."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from conduit.config.schema import Config
from conduit.errors import InvalidParamsError, StateUnavailableError, WorkspaceLimitError
from conduit.state.database import StateDatabase, migrate, revision_of
from conduit.state.skills import KEPT_VERSIONS, SkillDefinition, SkillStore
from conduit.state.workspace import WorkspaceStore, normalise_path
from postgres_server import PostgresServer, postgres_server

pytestmark = pytest.mark.anyio

KEY = "x4Zb0pW0Yq2bHnKkF9a3cJ8m5vS7tR1uE6iO2lD4gQw="


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def config_for(url: str, **workspace: Any) -> Config:
    return Config.model_validate(
        {"state": {"url": url}, "workspace": workspace, "auth": {"credentialStore": {"key": KEY}}}
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    if request.param == "sqlite":
        return config_for(f"sqlite:///{tmp_path}/state.db", quotaBytes=1000, maxFiles=3, maxFileBytes=600)
    server: PostgresServer = request.getfixturevalue("postgres")
    return config_for(server.create_database(), quotaBytes=1000, maxFiles=3, maxFileBytes=600)


@pytest.fixture
async def database(config: Config, tmp_path: Path) -> AsyncIterator[StateDatabase]:
    state = StateDatabase.for_config(config, tmp_path)
    yield state
    await state.aclose()


@pytest.fixture
def workspace(database: StateDatabase, config: Config) -> WorkspaceStore:
    return WorkspaceStore(database, config.workspace)


@pytest.mark.parametrize(
    ("spelling", "same_as"),
    [("a/b.md", "a/b.md"), ("a//b.md", "a/b.md"), ("./a/./b.md/", "a/b.md"), ("caf\u0065\u0301", "caf\u00e9")],
)
def test_every_spelling_of_a_path_is_one_file(spelling: str, same_as: str) -> None:
    assert normalise_path(spelling) == same_as


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("", "empty"),
        ("./", "empty"),
        ("/".join(["d"] * 17), "17 segments"),
        ("x" * 256, "256 bytes"),
        (7, "a string"),
    ],
)
def test_a_path_that_escapes_or_is_malformed_is_refused(path: Any, says: str) -> None:
    with pytest.raises(InvalidParamsError, match=says):
        normalise_path(path)


async def test_files_are_written_read_listed_and_deleted_per_principal(workspace: WorkspaceStore) -> None:
    await workspace.write("alice", "notes/a.md", b"hello", "text")
    await workspace.write("alice", "notes/b.bin", b"\x00\xff", "base64")
    await workspace.write("bob", "notes/a.md", b"bob's", "text")
    info, content = await workspace.read("alice", "notes//a.md")
    assert (info.path, info.size, info.encoding, content) == ("notes/a.md", 5, "text", b"hello")
    assert [f.path for f in await workspace.list("alice")] == ["notes/a.md", "notes/b.bin"]
    assert [f.path for f in await workspace.list("alice", "notes/b")] == ["notes/b.bin"]
    assert (await workspace.read("bob", "notes/a.md"))[1] == b"bob's"
    assert await workspace.delete("alice", "notes/a.md") is True
    assert await workspace.delete("alice", "notes/a.md") is False
    with pytest.raises(InvalidParamsError, match="no file 'notes/a.md'"):
        await workspace.read("alice", "notes/a.md")
    assert (await workspace.usage())["alice"].bytes == 2


async def test_each_limit_refuses_a_write_whole_and_names_itself(workspace: WorkspaceStore) -> None:
    with pytest.raises(WorkspaceLimitError, match="maxFileBytes is 600"):
        await workspace.write("carol", "big", b"x" * 601, "text")
    await workspace.write("carol", "a", b"x" * 500, "text")
    await workspace.write("carol", "b", b"x" * 400, "text")
    with pytest.raises(WorkspaceLimitError, match="quotaBytes is 1000") as refused:
        await workspace.write("carol", "c", b"x" * 200, "text")
    assert refused.value.code == -32016
    await workspace.write("carol", "a", b"x" * 100, "text")  # replacing a file frees its old size
    await workspace.write("carol", "c", b"x" * 200, "text")
    with pytest.raises(WorkspaceLimitError, match="maxFiles is 3"):
        await workspace.write("carol", "d", b"x", "text")
    assert sorted((f.path, f.size) for f in await workspace.list("carol")) == [("a", 100), ("b", 400), ("c", 200)]
    assert (await workspace.usage())["carol"].bytes == 700


async def test_concurrent_writes_of_one_path_leave_one_whole_and_concurrent_writes_keep_the_quota(
    workspace: WorkspaceStore,
) -> None:
    contents = [bytes([65 + i]) * 500 for i in range(8)]
    async with anyio.create_task_group() as tg:
        for content in contents:
            tg.start_soon(workspace.write, "dave", "same.txt", content, "text")
    _, kept = await workspace.read("dave", "same.txt")
    assert kept in contents
    refused: list[str] = []

    async def write(name: str) -> None:
        try:
            await workspace.write("erin", name, b"y" * 400, "text")
        except WorkspaceLimitError:
            refused.append(name)

    async with anyio.create_task_group() as tg:
        for index in range(6):
            tg.start_soon(write, f"f{index}")
    usage = (await workspace.usage())["erin"]
    assert usage.bytes == 800 and usage.files == 2 and len(refused) == 4  # 1000-byte quota: two fit, never three


async def test_contents_are_sealed_at_rest(database: StateDatabase, workspace: WorkspaceStore, tmp_path: Path) -> None:
    secret = b"the launch code is 0000-SWORDFISH"
    await workspace.write("alice", "secret.txt", secret, "text")
    skills = SkillStore(database)
    await skills.save("alice", SkillDefinition("leak", "d", "python", "'SWORDFISH-IN-CODE'"))
    stored = await database.transact(
        lambda connection: [row.content for row in connection.execute(text("SELECT content FROM workspace_files"))]
    )
    code = await database.transact(
        lambda connection: [row.code for row in connection.execute(text("SELECT code FROM skills"))]
    )
    assert stored and all(b"SWORDFISH" not in bytes(blob) for blob in stored + code)
    if database.is_sqlite:
        raw = b"".join(path.read_bytes() for path in sorted(tmp_path.iterdir()) if path.name.startswith("state.db"))  # noqa: ASYNC240
        assert b"SWORDFISH" not in raw and b"launch code" not in raw


async def test_skills_keep_their_last_ten_versions(database: StateDatabase) -> None:
    skills = SkillStore(database)
    for version in range(1, 13):
        saved = await skills.save("alice", SkillDefinition("count", f"v{version}", "python", f"{version}"))
        assert saved.version == version
    assert [v for v, _ in await skills.versions("alice", "count")] == list(range(12, 12 - KEPT_VERSIONS, -1))
    newest = await skills.get("alice", "count")
    assert newest is not None and newest.definition.code == "12" and newest.version == 12
    older = await skills.get("alice", "count", 5)
    assert older is not None and older.definition.description == "v5"
    assert await skills.get("alice", "count", 2) is None
    assert await skills.get("bob", "count") is None and await skills.latest("bob") == []
    assert [s.name for s in await skills.latest("alice")] == ["count"]
    assert await skills.remove("alice", "count") == KEPT_VERSIONS


async def test_concurrent_saves_of_one_name_take_distinct_versions(database: StateDatabase) -> None:
    skills = SkillStore(database)
    async with anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(skills.save, "alice", SkillDefinition("race", f"d{index}", "python", "1"))
    assert sorted(v for v, _ in await skills.versions("alice", "race")) == [1, 2, 3, 4, 5]


async def test_a_store_of_an_older_version_is_migrated_and_keeps_its_files(config: Config, tmp_path: Path) -> None:
    old = StateDatabase.for_config(config, tmp_path)
    if old.is_sqlite:
        engine = create_engine(old.url)
        with engine.begin() as connection:
            migrate(connection, "0001")  # the store as the first version left it: workspaces, no skills
        engine.dispose()
    else:
        async_engine = create_async_engine(old.url)
        async with async_engine.begin() as connection:
            await connection.run_sync(migrate, "0001")
        await async_engine.dispose()
    await WorkspaceStore(old, config.workspace).write("alice", "kept.md", b"from v1", "text")  # migrates: 0001 -> head
    await old.aclose()
    fresh = StateDatabase.for_config(config, tmp_path)
    assert await fresh.transact(revision_of) == "0002"
    assert (await WorkspaceStore(fresh, config.workspace).read("alice", "kept.md"))[1] == b"from v1"
    assert (await SkillStore(fresh).save("alice", SkillDefinition("s", "d", "python", "1"))).version == 1
    await fresh.aclose()


async def test_a_store_sealed_with_another_key_says_so(config: Config, tmp_path: Path) -> None:
    first = StateDatabase.for_config(config, tmp_path)
    await WorkspaceStore(first, config.workspace).write("alice", "a", b"x", "text")
    await first.aclose()
    from cryptography.fernet import Fernet

    another = Config.model_validate({"auth": {"credentialStore": {"key": Fernet.generate_key().decode()}}}).auth
    other = StateDatabase.for_config(config.model_copy(update={"auth": another}), tmp_path)
    try:
        with pytest.raises(StateUnavailableError, match="sealed with another key"):
            await WorkspaceStore(other, config.workspace).read("alice", "a")
    finally:
        await other.aclose()


def test_postgresql_without_a_key_is_refused_at_load() -> None:
    from conduit.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a Fernet key"):
        StateDatabase.for_config(Config.model_validate({"state": {"url": "postgresql://x@127.0.0.1:1/db"}}), Path("."))


async def test_a_database_that_goes_away_is_a_clear_error_and_comes_back(tmp_path: Path) -> None:
    with postgres_server() as server:
        config = config_for(server.create_database())
        database = StateDatabase.for_config(config, tmp_path)
        store = WorkspaceStore(database, config.workspace)
        await store.write("alice", "a", b"before", "text")
        server.stop("immediate")
        with pytest.raises(
            StateUnavailableError,
            match=r"state store \(state.url: postgresql://127\.0\.0\.1:\d+/t_\w+\) is unavailable",
        ):
            await store.read("alice", "a")
        with pytest.raises(StateUnavailableError):
            await store.write("alice", "b", b"lost?", "text")
        server.start()
        for _ in range(50):  # the pool's connections died with the server: pre-ping replaces them
            try:
                assert (await store.read("alice", "a"))[1] == b"before"
                break
            except StateUnavailableError:
                await anyio.sleep(0.1)
        else:
            pytest.fail("the store did not come back")
        assert [f.path for f in await store.list("alice")] == ["a"]  # the write that met the outage wrote nothing
        await database.aclose()


async def test_an_unreachable_database_at_first_use_names_it(tmp_path: Path) -> None:
    from support import free_port

    config = config_for(f"postgresql://conduit:pw-123@127.0.0.1:{free_port()}/db")
    database = StateDatabase.for_config(config, tmp_path)
    with pytest.raises(StateUnavailableError) as raised:
        await WorkspaceStore(database, config.workspace).write("alice", "a", b"x", "text")
    assert raised.value.code == -32000
    assert "postgresql://127.0.0.1:" in raised.value.message and "pw-123" not in raised.value.message
    await database.aclose()


async def test_files_past_their_ttl_are_removed(tmp_path: Path) -> None:
    config = config_for(f"sqlite:///{tmp_path}/ttl.db", ttlDays=1)
    database = StateDatabase.for_config(config, tmp_path)
    store = WorkspaceStore(database, config.workspace)
    await store.write("alice", "old.md", b"x" * 10, "text")
    await store.write("alice", "new.md", b"y", "text")
    two_days_ago = "modified_ms - 2 * 86400000"
    await database.transact(
        lambda connection: connection.execute(
            text(f"UPDATE workspace_files SET modified_ms = {two_days_ago} WHERE path = 'old.md'")
        )
    )
    assert await store.expire() == 1
    assert [f.path for f in await store.list("alice")] == ["new.md"]
    assert (await store.usage())["alice"].bytes == 1
    await database.aclose()


def test_base64_content_round_trips() -> None:
    from conduit.packages.workspace import content_of

    raw = bytes(range(256))
    assert content_of({"base64": base64.b64encode(raw).decode()}, 1000) == (raw, "base64")
    with pytest.raises(InvalidParamsError, match="exactly one"):
        content_of({"text": "a", "base64": "YQ=="}, 1000)
    with pytest.raises(InvalidParamsError, match="not valid base64"):
        content_of({"base64": "@@@"}, 1000)
    with pytest.raises(WorkspaceLimitError):
        content_of({"base64": "A" * 4000}, 1000)


async def test_a_listing_shows_a_save_made_through_another_connection_at_once(
    config: Config, database: StateDatabase, tmp_path: Path
) -> None:
    mine = SkillStore(database)
    await mine.save("alice", SkillDefinition("first", "d", "python", "1"))
    assert [s.name for s in await mine.latest("alice")] == ["first"]
    assert [s.name for s in await mine.latest("alice")] == ["first"]  # listed again: kept, unchanged
    other_database = StateDatabase.for_config(config, tmp_path)  # another replica, or `conduit skills save`
    try:
        await SkillStore(other_database).save("alice", SkillDefinition("second", "d", "python", "2"))
    finally:
        await other_database.aclose()
    assert [s.name for s in await mine.latest("alice")] == ["first", "second"]
