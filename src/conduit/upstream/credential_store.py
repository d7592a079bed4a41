"""Per-principal upstream credentials, kept in one file encrypted at rest.

An upstream marked ``credentials: perPrincipal`` sends each principal's calls with that principal's
own credential (a bearer token, an API key, or OAuth2 with a refresh token), written here by
``conduit auth --principal ID --upstream UPSTREAM``. The file is one Fernet token (AES-128-CBC with
HMAC-SHA256, from the ``cryptography`` library) over a JSON document, written atomically with mode
0600; the key comes from the config (``auth.credentialStore.key``, best from an environment variable).
A rotated refresh token is written back at once, so a restart never reuses a revoked one. The file
is read again when it changes, so credentials added while Conduit runs are used without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Final

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr, ValidationError

from conduit.config.schema import Config, Credentials
from conduit.errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT: Final = 1


def new_key() -> str:
    """A fresh store key."""
    return Fernet.generate_key().decode("ascii")


def _plain(credentials: Credentials) -> dict[str, Any]:
    return {
        key: value.get_secret_value() if isinstance(value, SecretStr) else value
        for key, value in credentials.model_dump(by_alias=True, exclude_none=True).items()
    }


def store_for(config: Config, base_dir: Path) -> CredentialStore | None:
    """The store ``auth.credentialStore`` configures (its path relative to ``base_dir``), if any.

    Raises:
        ConfigError: the key is not a Fernet key.
    """
    configured = config.auth.credential_store
    if configured is None:
        return None
    return CredentialStore(base_dir / configured.path, configured.key.get_secret_value())


class CredentialStore:
    """``(principal, upstream) -> credentials``, in an encrypted file."""

    def __init__(self, path: Path, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(
                "auth.credentialStore.key is not a Fernet key (32 url-safe base64 bytes; "
                "`conduit auth --new-store-key` prints one)"
            ) from None
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, dict[str, dict[str, Any]]] = {}

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
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, {}
            return self._entries
        except OSError as exc:
            raise ConfigError(f"the credential store {self.path} cannot be read: {exc}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return self._entries
        try:
            document = json.loads(self._fernet.decrypt(self.path.read_bytes()))
        except InvalidToken:
            raise ConfigError(
                f"the credential store {self.path} cannot be decrypted: wrong auth.credentialStore.key, or the file "
                "was altered"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the credential store {self.path} cannot be read: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ConfigError(f"the credential store {self.path} has an unknown format")
        entries = document.get("credentials")
        self._entries = entries if isinstance(entries, dict) else {}
        self._stamp = stamp
        return self._entries

    def _save(self, entries: dict[str, dict[str, dict[str, Any]]]) -> None:
        data = self._fernet.encrypt(json.dumps({"format": FORMAT, "credentials": entries}).encode())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(handle, "wb") as sink:
                os.fchmod(sink.fileno(), 0o600)
                sink.write(data)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._entries = entries
        stat = self.path.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size)
