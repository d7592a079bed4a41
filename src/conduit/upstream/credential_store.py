"""Per-principal upstream credentials, kept in one file encrypted at rest.

An upstream marked ``credentials: perPrincipal`` sends each principal's calls with that principal's
own credential (a bearer token, an API key, or OAuth2 with a refresh token), written here by
``conduit auth --principal ID --upstream UPSTREAM``. The file is one Fernet token (AES-128-CBC with
HMAC-SHA256, from the ``cryptography`` library) over a JSON document, written atomically with mode
0600; the key comes from the config (``auth.credentialStore.key``, best from an environment variable).
A rotated refresh token is written back at once, so a restart never reuses a revoked one. The file
is read again when it changes, so credentials added while Conduit runs are used without a restart.

With ``cluster.redisUrl`` the same sealed document lives in Redis instead (:class:`RedisVault`),
shared by every replica and by ``conduit auth``; a replica looks for a newer version at most once a
second. (A rotated refresh token then lives with its tokens: :mod:`conduit.upstream.token_state`.)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr, ValidationError

from conduit.cluster.store import SharedStore
from conduit.config.schema import Config, Credentials
from conduit.errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT: Final = 1
RECHECK_S: Final = 1.0
"""How often a replica asks Redis whether the store changed."""


def new_key() -> str:
    """A fresh store key."""
    return Fernet.generate_key().decode("ascii")


def _plain(credentials: Credentials) -> dict[str, Any]:
    return {
        key: value.get_secret_value() if isinstance(value, SecretStr) else value
        for key, value in credentials.model_dump(by_alias=True, exclude_none=True).items()
    }


def store_for(config: Config, base_dir: Path, shared: SharedStore | None = None) -> CredentialStore | None:
    """The store ``auth.credentialStore`` configures (its path relative to ``base_dir``; in Redis with
    ``shared``), if any.

    Raises:
        ConfigError: the key is not a Fernet key.
    """
    configured = config.auth.credential_store
    if configured is None:
        return None
    location: Path | Vault = RedisVault(shared) if shared is not None else base_dir / configured.path
    return CredentialStore(location, configured.key.get_secret_value())


class Vault(Protocol):
    """Where the sealed document lives."""

    where: str

    def stamp(self) -> Hashable | None:
        """Changes whenever the document does; None when there is none."""

    def read(self) -> bytes: ...

    def write(self, sealed: bytes) -> Hashable:
        """Store the document; returns its new stamp."""


class FileVault:
    """A file, replaced atomically, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def stamp(self) -> Hashable | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def read(self) -> bytes:
        return self.path.read_bytes()

    def write(self, sealed: bytes) -> Hashable:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(handle, "wb") as sink:
                os.fchmod(sink.fileno(), 0o600)
                sink.write(sealed)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return self.stamp()


class RedisVault:
    """A Redis hash (the document and its version), asked for a new version at most every :data:`RECHECK_S`.

    While Redis is away the last document read stays in use (``onStoreError: local``) or reading it
    fails (``refuse``); writing always needs Redis.
    """

    def __init__(self, shared: SharedStore) -> None:
        self._shared = shared
        self._key = shared.key("credentials")
        self.where = f"Redis ({self._key})"
        self._checked_at = -RECHECK_S
        self._version: Hashable | None = None

    def stamp(self) -> Hashable | None:
        if time.monotonic() - self._checked_at < RECHECK_S:
            return self._version
        version = self._shared.with_fallback_sync(
            lambda: self._shared.sync_client.hget(self._key, "version"), self._kept
        )
        self._checked_at = time.monotonic()
        self._version = version
        return version

    def read(self) -> bytes:
        sealed = self._shared.with_fallback_sync(lambda: self._shared.sync_client.hget(self._key, "document"), None)
        if not isinstance(sealed, bytes):
            raise OSError("the document vanished while it was read")
        return sealed

    def write(self, sealed: bytes) -> Hashable:
        def store() -> Any:
            pipeline = self._shared.sync_client.pipeline(transaction=True)
            pipeline.hset(self._key, "document", sealed)
            pipeline.hincrby(self._key, "version", 1)
            return pipeline.execute()[1]

        self._version = str(self._shared.with_fallback_sync(store, None)).encode()
        self._checked_at = time.monotonic()
        return self._version

    def _kept(self) -> Hashable | None:
        return self._version


class CredentialStore:
    """``(principal, upstream) -> credentials``, sealed in a file or in Redis."""

    def __init__(self, location: Path | Vault, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(
                "auth.credentialStore.key is not a Fernet key (32 url-safe base64 bytes; "
                "`conduit auth --new-store-key` prints one)"
            ) from None
        self._vault: Vault = FileVault(location) if isinstance(location, Path) else location
        self._stamp: Hashable | None = None
        self._entries: dict[str, dict[str, dict[str, Any]]] = {}

    @property
    def where(self) -> str:
        """The file or Redis key, for messages."""
        return self._vault.where

    def get(self, principal: str, upstream: str) -> tuple[Credentials, int] | None:
        """The principal's credential for the upstream and its generation (changed by each :meth:`put`).

        Raises:
            ConfigError: the file cannot be read or decrypted.
        """
        entry = self._load().get(principal, {}).get(upstream)
        if entry is None:
            return None
        try:
            return Credentials.model_validate(entry["credentials"]), int(entry["generation"])
        except (ValidationError, KeyError, TypeError, ValueError):
            raise ConfigError(f"the credential store's entry for {principal}/{upstream} is invalid") from None

    def principals_for(self, upstream: str) -> list[str]:
        """The principals with a credential for ``upstream``, by id."""
        return sorted(principal for principal, upstreams in self._load().items() if upstream in upstreams)

    def kinds_of(self, principal: str) -> dict[str, str]:
        """The upstreams ``principal`` keeps a credential for, each with the credential's type (never a value)."""
        entries = self._load().get(principal, {})
        return {
            upstream: str(entry.get("credentials", {}).get("type", "?")) for upstream, entry in sorted(entries.items())
        }

    def put(self, principal: str, upstream: str, credentials: Credentials) -> None:
        """Store (or replace) a principal's credential for an upstream."""
        entries = self._load()
        previous = entries.get(principal, {}).get(upstream, {}).get("generation", 0)
        entries.setdefault(principal, {})[upstream] = {
            "credentials": _plain(credentials),
            "generation": int(previous) + 1,
        }
        self._save(entries)

    def rotate_refresh_token(self, principal: str, upstream: str, refresh_token: str) -> None:
        """Keep a refresh token the token endpoint rotated (the generation stays: the connection goes on)."""
        entries = self._load()
        entry = entries.get(principal, {}).get(upstream)
        if entry is None:
            return
        entry["credentials"]["refreshToken"] = refresh_token
        self._save(entries)

    def remove(self, principal: str, upstream: str) -> bool:
        entries = self._load()
        found = entries.get(principal, {}).pop(upstream, None) is not None
        if found:
            self._save({principal: upstreams for principal, upstreams in entries.items() if upstreams})
        return found

    def _load(self) -> dict[str, dict[str, dict[str, Any]]]:
        where = self._vault.where
        try:
            stamp = self._vault.stamp()
            if stamp is None:
                self._stamp, self._entries = None, {}
                return self._entries
            if stamp == self._stamp:
                return self._entries
            sealed = self._vault.read()
        except OSError as exc:
            raise ConfigError(f"the credential store {where} cannot be read: {exc}") from None
        try:
            document = json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise ConfigError(
                f"the credential store {where} cannot be decrypted: wrong auth.credentialStore.key, or it was altered"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"the credential store {where} cannot be read: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ConfigError(f"the credential store {where} has an unknown format")
        entries = document.get("credentials")
        self._entries = entries if isinstance(entries, dict) else {}
        self._stamp = stamp
        return self._entries

    def _save(self, entries: dict[str, dict[str, dict[str, Any]]]) -> None:
        sealed = self._fernet.encrypt(json.dumps({"format": FORMAT, "credentials": entries}).encode())
        self._stamp = self._vault.write(sealed)
        self._entries = entries
