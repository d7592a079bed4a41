"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a fresh cluster in a temporary
directory, listening on a free loopback port, stopped and removed afterwards.

``initdb`` refuses to run as root: as root, the cluster belongs to ``nobody`` and every server program runs
as that user (``setpriv``). Without the binaries (``make cluster-deps`` installs them where it can) the tests
that need the server skip, saying so.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import free_port


def binaries() -> Path | None:
    """The directory of ``postgres`` and ``initdb`` (Debian keeps them off PATH), newest version first."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "postgres").is_file():
            return Path(directory)
    return None


def require_binaries() -> Path:
    directory = binaries()
    if directory is None:
        pytest.skip("PostgreSQL is not installed (Debian's 'postgresql'; `make cluster-deps` installs it as root)")
    return directory


@dataclass
class PostgresServer:
    port: int
    bindir: Path
    data: Path
    as_user: list[str]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://conduit@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh database's URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def _sql(self, statement: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "conduit",
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", statement],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            check=False,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off -c full_page_writes=off"
        log = self.data / "server.log"
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w",
             "-t", "60", "start"],
            check=True,
            capture_output=True,
        )  # fmt: skip


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running server with a superuser ``conduit`` (trust authentication on loopback)."""
    bindir = require_binaries()
    root = Path(tempfile.mkdtemp(prefix="conduit-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        os.chmod(root, 0o755)
        as_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
        data.mkdir()
        shutil.chown(data, "nobody", "nogroup")
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "conduit", "--auth=trust", "-E", "UTF8",
         "--no-sync", "--locale=C"],
        check=True,
        capture_output=True,
        cwd=root,
    )  # fmt: skip
    server = PostgresServer(free_port(), bindir, data, as_user)
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
