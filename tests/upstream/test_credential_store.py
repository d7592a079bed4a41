"""The per-principal credential store: encrypted at rest, private, refused when the key or the file is wrong."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from conduit.config.schema import Credentials
from conduit.errors import ConfigError
from conduit.upstream.credential_store import CredentialStore, new_key

SECRET = "user-alice-very-secret-token"


def bearer(token: str) -> Credentials:
    return Credentials(type="bearer", bearer_token=SecretStr(token))


def test_a_stored_credential_comes_back_and_the_file_holds_no_secret(tmp_path: Path) -> None:
    key = new_key()
    store = CredentialStore(tmp_path / "store.enc", key)
    store.put("alice", "github", bearer(SECRET))
    again = CredentialStore(tmp_path / "store.enc", key)  # another process, the same file and key
    found = again.get("alice", "github")
    assert found is not None
    credentials, generation = found
    assert credentials.bearer_token is not None and credentials.bearer_token.get_secret_value() == SECRET
    assert generation == 1
    assert again.get("bob", "github") is None and again.get("alice", "other") is None
    raw = (tmp_path / "store.enc").read_bytes()
    assert SECRET.encode() not in raw and b"alice" not in raw and b"github" not in raw
    assert stat.S_IMODE((tmp_path / "store.enc").stat().st_mode) == 0o600
    assert again.principals_for("github") == ["alice"]


def test_a_new_credential_is_a_new_generation_and_a_rotated_refresh_token_is_not(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "store.enc", new_key())
    oauth = Credentials(
        type="oauth2", token_url="https://a.example/token", client_id="c", refresh_token=SecretStr("r1")
    )
    store.put("alice", "github", oauth)
    store.rotate_refresh_token("alice", "github", "r2")
    found = store.get("alice", "github")
    assert found is not None
    assert found[0].refresh_token is not None and found[0].refresh_token.get_secret_value() == "r2"
    assert found[1] == 1  # the connection built from generation 1 goes on with the rotated token
    store.put("alice", "github", bearer("t"))
    assert store.get("alice", "github") is not None and store.get("alice", "github")[1] == 2  # type: ignore[index]


def test_a_credential_written_by_another_process_is_seen_without_a_restart(tmp_path: Path) -> None:
    key = new_key()
    serving = CredentialStore(tmp_path / "store.enc", key)
    assert serving.get("bob", "github") is None
    CredentialStore(tmp_path / "store.enc", key).put("bob", "github", bearer("user-bob"))  # `conduit auth`
    assert serving.get("bob", "github") is not None


def test_a_wrong_key_a_tampered_file_and_a_bad_key_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "store.enc"
    CredentialStore(path, new_key()).put("alice", "github", bearer(SECRET))
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        CredentialStore(path, new_key()).get("alice", "github")
    with pytest.raises(ConfigError, match="cannot be decrypted"):  # nor is the store overwritten with another key
        CredentialStore(path, new_key()).put("mallory", "github", bearer("x"))
    path.unlink()
    key = new_key()
    CredentialStore(path, key).put("alice", "github", bearer(SECRET))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        CredentialStore(path, key).get("alice", "github")
    with pytest.raises(ConfigError, match="not a Fernet key"):
        CredentialStore(path, "too-short")


def test_removing_a_credential(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "store.enc", new_key())
    store.put("alice", "github", bearer(SECRET))
    assert store.remove("alice", "github")
    assert not store.remove("alice", "github")
    assert store.get("alice", "github") is None and store.principals_for("github") == []
