"""The state database: SQLAlchemy over SQLite (embedded: the standard driver in worker threads) or PostgreSQL
(replicas: asyncpg), its schema brought to the newest migration before first use, and the seal its contents
are stored under.

``state.url`` is ``sqlite:///PATH`` or ``postgresql://...``; unset, a SQLite file beside the config file,
created on first use. Migrations (Alembic, ``migrations/versions``) run at start when the store is there
(a store from an older version is migrated, never dropped) and otherwise on first use; several replicas
starting at once migrate one at a time (a PostgreSQL advisory lock). A database that cannot be reached is
a :class:`~conduit.errors.StateUnavailableError` naming it, for the work that needs it only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conduit.config.schema import Config
from conduit.errors import ConfigError, StateUnavailableError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

logger = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-connection chatter; migrations are logged here

DEFAULT_FILE: Final = "conduit-state.db"
KEY_FILE: Final = "conduit-state.key"
"""Beside the database file: the generated seal key when the config has no Fernet key of its own."""
MIGRATION_LOCK: Final = 0x636F6E64756974
"""The PostgreSQL advisory lock replicas take while they migrate (``conduit`` in ASCII)."""
CONNECT_TIMEOUT_S: Final = 5.0
SQLITE_THREADS: Final = 4
"""Worker threads SQLite transactions run in at once (each takes the write lock in turn)."""
T = TypeVar("T")


class Sealer:
    """Seals contents at rest (Fernet: AES-128-CBC with HMAC-SHA256): nobody reading the database file or
    tables sees a file's content or a skill's code. The key is a configured one, or one kept in a file that
    is generated on first use (beside a SQLite store)."""

    def __init__(self, key: str | Path) -> None:
        self._key = key
        self._made: Fernet | None = None

    @property
    def _fernet(self) -> Fernet:
        if self._made is None:
            key = self._key if isinstance(self._key, str) else _key_file(self._key)
            self._made = Fernet(key.encode("ascii"))
        return self._made

    def seal(self, content: bytes) -> bytes:
        return self._fernet.encrypt(content)

    def open(self, sealed: bytes) -> bytes:
        """Raises:
        StateUnavailableError: the content was sealed with another key (the store and the key do not match).
        """
        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken:
            raise StateUnavailableError(
                "the state store's contents were sealed with another key (cluster.key / auth.credentialStore.key)"
            ) from None


def database_url(config: Config, base_dir: Path) -> URL:
    """The async driver's URL of ``state.url`` (a relative SQLite path is relative to ``base_dir``).

    >>> from conduit.config.schema import Config
    >>> database_url(Config(), Path("/etc/conduit")).render_as_string()
    'sqlite+pysqlite:////etc/conduit/conduit-state.db'
    >>> database_url(Config.model_validate({"state": {"url": "postgresql://u:pw@db:5433/c"}}), Path(".")).drivername
    'postgresql+asyncpg'
    """
    raw = config.state.url.get_secret_value() if config.state.url is not None else f"sqlite:///{DEFAULT_FILE}"
    url = make_url(raw)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or DEFAULT_FILE)
        return url.set(drivername="sqlite+pysqlite", database=str(base_dir / path))
    return url.set(drivername="postgresql+asyncpg")


def seal_key(config: Config, url: URL) -> str | Path:
    """The Fernet key contents are sealed with: ``cluster.key``, else ``auth.credentialStore.key``, else the
    file beside a SQLite database that keeps a key generated on first use (mode 0600).

    Raises:
        ConfigError: PostgreSQL without any configured key (a generated one would differ per replica).
    """
    for secret in (config.cluster.key, config.auth.credential_store.key if config.auth.credential_store else None):
        if secret is not None:
            return secret.get_secret_value()
    if url.get_backend_name() != "sqlite" or not url.database:
        raise ConfigError(
            "state.url on PostgreSQL needs a Fernet key to seal contents: set cluster.key or auth.credentialStore.key"
        )
    return Path(url.database).with_name(KEY_FILE)


def _key_file(path: Path) -> str:
    """The key kept in ``path``, generated into it first if there is none (mode 0600; a race is settled by
    whoever creates the file)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(key)
    for _ in range(100):  # a file another process has just made may not hold its key yet
        key_text = path.read_text(encoding="ascii").strip()
        if key_text:
            return key_text
        time.sleep(0.01)
    raise ConfigError(f"{path} holds no key: remove it to have one generated (the store's contents need the old one)")


class StateDatabase:
    """The engine, migrated before first use; :meth:`transact` is every query's way in.

    Queries are plain synchronous SQLAlchemy code run in one transaction: on SQLite in a worker thread (one
    hop per transaction, not one per statement), on PostgreSQL through the async engine (asyncpg)."""

    def __init__(self, url: URL, sealer: Sealer) -> None:
        self.url = url
        self.sealer = sealer
        plain = URL.create(url.get_backend_name(), host=url.host, port=url.port, database=url.database)
        self.name = plain.render_as_string()
        """How messages name the store (no user, no password)."""
        self._engine: Engine | None = None
        self._async_engine: AsyncEngine | None = None
        self._ready = False
        self._lock = anyio.Lock()
        self._threads = anyio.CapacityLimiter(SQLITE_THREADS)
        self._first_use = threading.Lock()

    @classmethod
    def for_config(cls, config: Config, base_dir: Path) -> StateDatabase:
        """Raises:
        ConfigError: no key to seal contents with (see :func:`seal_key`).
        """
        url = database_url(config, base_dir)
        return cls(url, Sealer(seal_key(config, url)))

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def exists(self) -> bool:
        """Whether the store is there already (a PostgreSQL database always is: it is made by its operator). A
        SQLite store is made by the first write: reading one that is not there finds nothing."""
        return not self.is_sqlite or Path(self.url.database or "").exists()

    def change_stamp(self) -> Hashable | None:
        """Changes whenever anything is written to a SQLite store, by this process or another (``conduit skills
        save``): the size and modification time of its file and write-ahead log, read without a query. None for
        PostgreSQL, which replicas write: what it holds is read anew each time."""
        if not self.is_sqlite:
            return None
        path = Path(self.url.database or DEFAULT_FILE)
        stamp: list[tuple[int, int, int] | None] = []
        for file in (path, path.with_name(path.name + "-wal")):
            try:
                status = file.stat()
            except FileNotFoundError:
                stamp.append(None)
            else:
                stamp.append((status.st_mtime_ns, status.st_size, status.st_ino))
        return tuple(stamp)

    async def open_if_present(self) -> None:
        """At start: migrate an existing store now (a SQLite file is made on first use only); a store that cannot
        be reached is logged, not raised (runs that do not need it are unaffected; first use tries again)."""
        if not self.exists:
            return
        try:
            await self.transact(lambda connection: None)
        except StateUnavailableError as exc:
            logger.warning("%s; workspaces and skills fail until it answers", exc.message)

    async def transact(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one transaction (committed when it returns), the schema migrated first (once
        per process).

        Raises:
            StateUnavailableError: the database cannot be reached, or went away mid-transaction.
        """
        try:
            if self.is_sqlite:
                return await anyio.to_thread.run_sync(self._in_thread, work, limiter=self._threads)
            engine = await self._postgresql()
            async with engine.begin() as connection:
                return await connection.run_sync(work)
        except (OSError, OperationalError, TimeoutError) as exc:
            raise self.unavailable(exc) from None
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise self.unavailable(exc) from None
            raise

    def _in_thread(self, work: Callable[[Connection], T]) -> T:
        """SQLite, in a worker thread: the engine made and the schema migrated on first use, then ``work``."""
        if not self._ready:
            with self._first_use:  # one thread makes the engine and migrates; the others wait for it
                if self._engine is None:
                    self._engine = self._sqlite_engine()
                if not self._ready:
                    with self._engine.begin() as connection:
                        migrate(connection)
                    self._ready = True
        assert self._engine is not None
        with self._engine.begin() as connection:
            return work(connection)

    async def _postgresql(self) -> AsyncEngine:
        if self._ready and self._async_engine is not None:
            return self._async_engine
        async with self._lock:
            if self._async_engine is None:
                self._async_engine = create_async_engine(
                    self.url,
                    pool_pre_ping=True,
                    pool_size=5,
                    max_overflow=10,
                    connect_args={"timeout": CONNECT_TIMEOUT_S, "command_timeout": 30},
                )
            if not self._ready:
                async with self._async_engine.begin() as connection:
                    await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                    await connection.run_sync(migrate)
                self._ready = True
        return self._async_engine

    def unavailable(self, exc: BaseException) -> StateUnavailableError:
        text_ = str(getattr(exc, "orig", None) or exc).strip()
        reason = text_.splitlines()[0] if text_ else type(exc).__name__
        return StateUnavailableError(f"the state store (state.url: {self.name}) is unavailable: {reason}")

    def _sqlite_engine(self) -> Engine:
        path = Path(self.url.database or DEFAULT_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # sealed contents, and still nobody else's
        engine = create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connection)
        event.listen(engine, "begin", _sqlite_begin)
        return engine

    async def aclose(self) -> None:
        if self._engine is not None:
            await anyio.to_thread.run_sync(self._engine.dispose)
        if self._async_engine is not None:
            await self._async_engine.dispose()


def _sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    """Write-ahead logging (readers never wait for a writer), waits instead of failing on a locked file,
    and transactions begun by :func:`_sqlite_begin` only."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    """Every transaction takes the write lock at once: two writers queue (busy_timeout) instead of one failing
    when both upgrade from reading."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config(connection: Connection) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig  # imported when a store is opened, not by every command

    config = AlembicConfig()
    config.set_main_option("script_location", "conduit.state:migrations")
    config.attributes["connection"] = connection
    return config


def migrate(connection: Connection, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default); a migration that runs is logged."""
    from alembic import command

    before = revision_of(connection)
    command.upgrade(_alembic_config(connection), revision)
    after = revision_of(connection)
    if after != before:
        logger.info("state store migrated from %s to %s", before or "empty", after)


def revision_of(connection: Connection) -> str | None:
    """The migration the schema is at (None: a store no migration has run on)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()
