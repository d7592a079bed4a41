"""Config loading: files, substitution, .env, overrides, and errors that name the key."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conduit.config import load_config
from conduit.errors import ConfigError
from support import CONDUIT


def write(directory: Path, text: str, name: str = "conduit.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    loaded = load_config(None, {}, tmp_path)
    assert loaded.source is None
    assert loaded.config.port == 3000
    assert loaded.config.resource_limits.timeout_ms == 30_000
    assert loaded.config.max_concurrent == 10 and loaded.config.max_queue == 100
    assert loaded.base_dir == tmp_path


def test_reference_style_yaml_is_accepted(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
port: 4000
opsPort: 4001
logLevel: debug
transport: stdio
ipcBearerToken: abcdefghijklmnopqrstuvwxyz
maxConcurrent: 3
resourceLimits: {timeoutMs: 5000, memoryLimitMb: 128, maxOutputBytes: 1000, maxLogEntries: 10}
secretRedactionPatterns: ["sk-[a-z]+"]
upstreams:
  - id: github
    type: streamableHttp
    url: https://example.invalid/mcp
    credentials: {type: oauth2, clientId: c, clientSecret: s, tokenUrl: https://example.invalid/t,
                  refreshToken: r, scopes: [repo], tokenRequestFormat: json, tokenParams: {audience: x}}
  - id: local
    command: python
    args: [server.py]
    env: {A: b}
""",
    )
    config = load_config(None, {}, tmp_path).config
    assert config.transport == "stdio" and config.port == 4000 and config.max_concurrent == 3
    assert config.resource_limits.max_log_entries == 10
    assert config.upstreams[0].credentials is not None
    assert config.upstreams[0].credentials.token_request_format == "json"
    assert sorted(config.secret_values()) == ["abcdefghijklmnopqrstuvwxyz", "r", "s"]


def test_json_config_and_explicit_path(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"port": 5555}), "custom.json")
    loaded = load_config(str(path), {}, Path("/"))
    assert loaded.config.port == 5555
    assert loaded.source == path


def test_config_file_env_variable(tmp_path: Path) -> None:
    write(tmp_path, "port: 6001", "other.yaml")
    assert load_config(None, {"CONFIG_FILE": "other.yaml"}, tmp_path).config.port == 6001


def test_substitution_with_defaults_and_escapes(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
port: ${PORT_FROM_ENV:-7000}
upstreams:
  - id: x
    command: ${CMD}
    env: {TOKEN: "${SECRET}", LITERAL: "$${NOT_A_VAR}", EMPTY: "${UNSET_EMPTY:-}"}
""",
    )
    config = load_config(None, {"CMD": "/bin/server", "SECRET": "s3"}, tmp_path).config
    assert config.port == 7000
    assert config.upstreams[0].command == "/bin/server"
    assert config.upstreams[0].env == {"TOKEN": "s3", "LITERAL": "${NOT_A_VAR}", "EMPTY": ""}


def test_unset_variable_names_the_key_path(tmp_path: Path) -> None:
    write(tmp_path, "upstreams:\n  - id: x\n    command: run\n    env: {TOKEN: '${MISSING_TOKEN}'}\n")
    with pytest.raises(ConfigError, match=r"upstreams\[0\]\.env\.TOKEN: environment variable MISSING_TOKEN"):
        load_config(None, {}, tmp_path)


def test_dotenv_feeds_substitution_and_overrides_but_process_env_wins(tmp_path: Path) -> None:
    write(tmp_path, "upstreams: [{id: x, command: '${CMD}'}]")
    (tmp_path / ".env").write_text("CMD=from-dotenv\nPORT=8100\nLOG_LEVEL=debug\n")
    config = load_config(None, {"LOG_LEVEL": "error"}, tmp_path).config
    assert config.upstreams[0].command == "from-dotenv"
    assert config.port == 8100
    assert config.log_level == "error"


def test_env_overrides_beat_the_file_and_cli_overrides_beat_env(tmp_path: Path) -> None:
    write(tmp_path, "port: 1000\nmaxConcurrent: 2")
    config = load_config(None, {"PORT": "2000", "MAX_CONCURRENT": "4"}, tmp_path, {"port": 3000}).config
    assert (config.port, config.max_concurrent) == (3000, 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus: 1", "bogus: unknown key"),
        ("resourceLimits: {timeoutMs: 0}", "resourceLimits.timeoutMs: Input should be greater than 0"),
        ("resourceLimits: {timeout: 5}", "resourceLimits.timeout: unknown key"),
        ("port: nope", "port: Input should be a valid integer"),
        ("upstreams: [{id: a}]", "upstreams[0]: a 'stdio' upstream needs 'command'"),
        ("upstreams: [{id: a, type: sse}]", "upstreams[0]: a 'sse' upstream needs 'url'"),
        ("upstreams: [{id: a__b, command: x}]", "must not contain '__'"),
        ("upstreams: [{id: a, command: x}, {id: a, command: y}]", "upstream id 'a' is used twice"),
        ("upstreams: [{id: a, command: x, credentials: {type: bearer}}]", "need 'bearerToken'"),
        ("secretRedactionPatterns: ['(']", "pattern 0 is not a valid regular expression"),
        ("transport: carrier-pigeon", "transport: Input should be 'http' or 'stdio'"),
        ("- just\n- a list", "the top level must be a mapping"),
        ("port: [unclosed", "invalid YAML"),
        ("approvals: [{principals: [a]}]", "matches on exactly one of 'tools' and 'annotations'"),
        ("approvals: [{tools: [a], annotations: {destructiveHint: true}}]", "exactly one of 'tools' and"),
        ("approvals: [{annotations: {dangerous: true}}]", "annotations takes readOnlyHint"),
        ("approvals: [{tools: ['a.b.*.c']}]", "approvals[0]: tools: invalid allowlist pattern 'a.b.*.c'"),
        ("approvals: [{tools: [a], timeoutMs: 10}]", "approvals[0].timeoutMs: Input should be greater than or equal"),
        ("background: {keepMs: 5}", "background.keepMs: Input should be greater than or equal to 1000"),
        ("background: {maxTimeoutMs: 0}", "background.maxTimeoutMs: Input should be greater than 0"),
    ],
)
def test_broken_config_fails_with_key_path_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(None, {}, tmp_path)
    assert expected in str(caught.value)


def test_invalid_json_reports_the_position(tmp_path: Path) -> None:
    write(tmp_path, '{"port": 1,}', "conduit.json")
    with pytest.raises(ConfigError, match="invalid JSON at line 1"):
        load_config(None, {}, tmp_path)


def test_missing_explicit_file_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml", {}, tmp_path)


def test_serve_with_a_broken_file_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "resourceLimits:\n  memoryLimitMb: lots\n")
    done = subprocess.run(
        [CONDUIT, "serve", "--stdio", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "resourceLimits.memoryLimitMb: Input should be a valid integer" in done.stderr
    assert done.stdout == ""


def test_example_config_documents_a_valid_configuration() -> None:
    example = Path(__file__).parents[2] / "conduit.example.yaml"
    env = {"GITHUB_CLIENT_ID": "id", "GITHUB_CLIENT_SECRET": "s", "GITHUB_REFRESH_TOKEN": "r", "SEARCH_API_KEY": "k"}
    loaded = load_config(str(example), env, example.parent)
    assert loaded.config.upstreams


def _aliases(model: type, prefix: str = "") -> set[str]:
    from pydantic import BaseModel

    found: set[str] = set()
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        alias = field.validation_alias or name
        found.add(str(alias))
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found |= _aliases(candidate)
            for inner in getattr(candidate, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    found |= _aliases(inner)
    return found


def test_example_config_mentions_every_key() -> None:
    from conduit.config.schema import Config

    text = (Path(__file__).parents[2] / "conduit.example.yaml").read_text()
    missing = sorted(alias for alias in _aliases(Config) if f"{alias}:" not in text)
    assert missing == []


def test_empty_master_token_means_generate_one_and_short_ones_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "ipcBearerToken: ${IPC_BEARER_TOKEN:-}")
    assert load_config(None, {}, tmp_path).config.ipc_bearer_token is None
    with pytest.raises(ConfigError, match="ipcBearerToken: must be at least 16 characters"):
        load_config(None, {"IPC_BEARER_TOKEN": "short"}, tmp_path)


def test_doctor_reports_each_piece_and_fails_without_pyodide(tmp_path: Path) -> None:
    ok = subprocess.run([CONDUIT, "doctor"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    for piece in ("deno:", "harness:", "pyodide:", "monty: pydantic-monty", "mini-racer: V8", "config:"):
        assert piece in ok.stdout
    assert f"ok    state: sqlite:///{tmp_path}/conduit-state.db (made on the first write)" in ok.stdout
    assert not (tmp_path / "conduit-state.db").exists() and not (tmp_path / "conduit-state.key").exists()
    env = {**os.environ, "PYODIDE_PATH": str(tmp_path / "missing")}
    broken = subprocess.run([CONDUIT, "doctor"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert broken.returncode == 1
    assert "FAIL  python runtime: Pyodide files missing" in broken.stderr
    assert "make setup" in broken.stderr


def test_config_reference_documents_every_key() -> None:
    from conduit.config.schema import Config

    text = (Path(__file__).parents[2] / "docs" / "CONFIG.md").read_text()
    missing = sorted(alias for alias in _aliases(Config) if f"`{alias}`" not in text and f".{alias}`" not in text)
    assert missing == []


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"auth": {"principals": [{"id": "a"}]}}, "needs exactly one of 'apiKey' and 'apiKeySha256'"),
        ({"auth": {"principals": [{"id": "a", "apiKey": "short"}]}}, "at least 16 characters"),
        (
            {"auth": {"principals": [{"id": "a", "apiKey": "k" * 16}, {"id": "a", "apiKeySha256": "0" * 64}]}},
            "principal id 'a' is used twice",
        ),
        ({"auth": {"principals": [{"id": "a", "apiKey": "k" * 16, "allowedTools": ["git*"]}]}}, "invalid allowlist"),
        ({"auth": {"principals": [{"id": "a", "apiKey": "k" * 16, "limits": {"cpu": 1}}]}}, "limits.cpu: unknown"),
        ({"auth": {"principals": [{"id": "a", "apiKey": "k" * 16, "rateLimit": "lots"}]}}, "not a rate limit"),
        (
            {"auth": {"oauth": {"issuer": "https://i.example", "audience": "conduit"}}},
            "resource must be an http(s) URL",
        ),
        (
            {
                "auth": {
                    "oauth": {
                        "issuer": "https://i.example",
                        "audience": "https://c.example/mcp",
                        "algorithms": ["HS256"],
                    }
                }
            },
            "auth.oauth.algorithms[0]",
        ),
        (
            {"auth": {"oauth": {"issuer": "https://i.example", "audience": "https://c.example/mcp", "policies": [{}]}}},
            "exactly one of 'scope' and 'claim'",
        ),
        (
            {
                "upstreams": [
                    {"id": "r", "type": "streamableHttp", "url": "https://r.example/mcp", "credentials": "perPrincipal"}
                ]
            },
            "needs 'auth.credentialStore'",
        ),
        ({"upstreams": [{"id": "s", "command": "x", "credentials": "perPrincipal"}]}, "needs an HTTP upstream"),
        (
            {"upstreams": [{"id": "s", "type": "streamableHttp", "url": "https://s.example/mcp", "authorization": {}}]},
            "'authorization' connects principals' own accounts: it needs 'credentials: perPrincipal'",
        ),
        ({"http": {"publicUrl": "conduit.example.com"}}, "must be an http(s) base URL"),
        (
            {
                "upstreams": [
                    {
                        "id": "x",
                        "type": "streamableHttp",
                        "url": "https://x.example/mcp",
                        "credentials": {"type": "tokenExchange", "tokenUrl": "https://a.example/t", "clientId": "c"},
                    }
                ]
            },
            "exchange OAuth callers' access tokens: configure auth.oauth",
        ),
        (
            {
                "upstreams": [
                    {
                        "id": "x",
                        "type": "streamableHttp",
                        "url": "https://x.example/mcp",
                        "credentials": {"type": "tokenExchange", "clientId": "c"},
                    }
                ]
            },
            "credentials of type 'tokenExchange' need 'tokenUrl' and 'clientId'",
        ),
        ({"http": {"trustedProxies": ["10.0.0.0/8", "proxy.example"]}}, "http.trustedProxies: entry 1"),
        ({"auth": {"principals": [{"id": "master", "apiKey": "k" * 16}]}}, "principal id 'master' is reserved"),
        ({"auth": {"principals": [{"id": "Local", "apiKey": "k" * 16}]}}, "principal id 'Local' is reserved"),
        (
            {"auth": {"principals": [{"id": "alice", "apiKey": "k" * 16}, {"id": "ALICE", "apiKey": "j" * 16}]}},
            "principal id 'alice' is used twice",
        ),
        ({"auth": {"principals": [{"id": "oauth:bob", "apiKey": "k" * 16}]}}, "auth.principals[0].id"),
        (
            {
                "auth": {
                    "oauth": {
                        "issuer": "https://i.example",
                        "audience": "https://c.example/mcp",
                        "policies": [{"scope": "staff", "principal": "alice"}],
                    },
                    "principals": [{"id": "alice", "apiKey": "k" * 16}],
                }
            },
            "needs a 'claim' naming 'sub'",
        ),
        (
            {
                "auth": {
                    "oauth": {
                        "issuer": "https://i.example",
                        "audience": "https://c.example/mcp",
                        "policies": [{"claim": {"sub": "alice@idp"}, "principal": "carol"}],
                    },
                    "principals": [{"id": "alice", "apiKey": "k" * 16}],
                }
            },
            "no principal 'carol' in principals",
        ),
        (
            {
                "auth": {
                    "oauth": {
                        "issuer": "https://i.example",
                        "audience": "https://c.example/mcp",
                        "policies": [{"claim": {"sub": "alice@idp"}, "principal": "alice", "maxConcurrent": 3}],
                    },
                    "principals": [{"id": "alice", "apiKey": "k" * 16}],
                }
            },
            "takes 'alice''s own policy; remove maxConcurrent",
        ),
        (
            {"approvals": [{"tools": ["up.refund"], "principals": ["mallory"]}]},
            "approvals[0].principals: 'mallory' is no caller here",
        ),
        ({"http": {"maxBodyBytes": 65536}, "maxCodeBytes": 65536}, "must be below http.maxBodyBytes"),
        ({"http": {"maxBodyBytes": 100}}, "http.maxBodyBytes"),
        ({"toolCallRateLimit": "often"}, "not a rate limit"),
        ({"resourceLimits": {"maxToolCalls": 0}}, "resourceLimits.maxToolCalls"),
    ],
)
def test_bad_auth_configs_are_refused_with_the_reason(tmp_path: Path, document: dict[str, Any], reason: str) -> None:
    (tmp_path / "conduit.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError) as refused:
        load_config(None, {}, tmp_path)
    assert reason in str(refused.value)


def test_approval_rules_may_name_every_kind_of_caller(tmp_path: Path) -> None:
    document = {
        "auth": {
            "principals": [{"id": "alice", "apiKey": "k" * 16}],
            "oauth": {"issuer": "https://i.example", "audience": "https://c.example/mcp"},
        },
        "approvals": [{"tools": ["up.refund"], "principals": ["alice", "master", "local", "oauth:dora"]}],
    }
    (tmp_path / "conduit.json").write_text(json.dumps(document))
    assert load_config(None, {}, tmp_path).config.approvals[0].principals == ["alice", "master", "local", "oauth:dora"]


CLUSTER = {"redisUrl": "redis://127.0.0.1:1/0", "key": "x4Zb0pW0Yq2bHnKkF9a3cJ8m5vS7tR1uE6iO2lD4gQw="}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            {"upstreams": [{"id": "workspace", "command": "x"}]},
            r"upstreams\[0\]: upstream id 'workspace' is Conduit's own package",
        ),
        ({"upstreams": [{"id": "skills", "command": "x"}]}, "'skills' is Conduit's own package"),
        ({"cluster": CLUSTER}, "cluster mode keeps workspaces and skills in a database every replica reaches"),
        ({"cluster": CLUSTER, "state": {"url": "sqlite:///shared.db"}}, "set state.url to a postgresql:// URL"),
        ({"state": {"url": "mysql://db/conduit"}}, "state.url.*must start with sqlite:/// or postgresql://"),
        ({"workspace": {"quotaBytes": 0}}, "workspace.quotaBytes"),
        ({"workspace": {"ttlDays": 0}}, "workspace.ttlDays"),
        ({"skills": {"folder": "x"}}, "skills.folder"),
    ],
)
def test_bad_state_configs_are_refused_with_the_reason(tmp_path: Path, document: dict[str, Any], reason: str) -> None:
    path = tmp_path / "conduit.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=reason):
        load_config(str(path), {}, tmp_path)


@pytest.mark.parametrize(
    "document",
    [
        {"cluster": CLUSTER, "state": {"url": "postgresql://conduit:pw@db:5432/conduit"}},
        {"cluster": CLUSTER, "workspace": {"enabled": False}, "skills": {"enabled": False}},
    ],
)
def test_replicas_keep_state_in_postgresql_or_keep_none(tmp_path: Path, document: dict[str, Any]) -> None:
    path = tmp_path / "conduit.json"
    path.write_text(json.dumps(document))
    config = load_config(str(path), {}, tmp_path).config
    assert config.keeps_state == ("state" in document)
    assert "pw" in config.secret_values() or "state" not in document  # the password is scrubbed from logs


def test_a_run_time_upstream_may_not_take_a_packages_id() -> None:
    from conduit.config.loader import parse_upstream

    with pytest.raises(ConfigError, match="Conduit's own package"):
        parse_upstream({"id": "workspace", "command": "x"})
