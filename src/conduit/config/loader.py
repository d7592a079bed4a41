"""Turn a config file, a ``.env`` file and environment overrides into a :class:`Config`.

Precedence, lowest first: model defaults, the file, ``.env``-backed overrides, process
environment overrides. ``${VAR}`` and ``${VAR:-default}`` in any string of the file are
substituted from the same environment (process env wins over ``.env``); ``$${`` is a
literal ``${``. Any problem is one :class:`ConfigError` listing every bad key path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from dotenv import dotenv_values
from pydantic import ValidationError

from conduit.config.schema import Config, UpstreamConfig
from conduit.errors import ConfigError

DEFAULT_FILENAMES: Final = ("conduit.yaml", "conduit.yml", "conduit.json")

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

ENV_OVERRIDES: Final[Mapping[str, str]] = {
    "TRANSPORT": "transport",
    "HOST": "host",
    "PORT": "port",
    "OPS_PORT": "opsPort",
    "LOG_FORMAT": "logFormat",
    "LOG_LEVEL": "logLevel",
    "IPC_BEARER_TOKEN": "ipcBearerToken",
    "MAX_CONCURRENT": "maxConcurrent",
    "MAX_QUEUE": "maxQueue",
    "DENO_PATH": "denoPath",
    "PYODIDE_PATH": "pyodidePath",
    "MONTY_PATH": "montyPath",
    "PYTHON_ENGINE": "pythonEngine",
}
"""Environment variable -> top-level config key it overrides."""


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    source: Path | None
    """The file the config came from, or None when only defaults and env were used."""
    base_dir: Path
    """Directory relative upstream paths start from: the config file's, else the working directory."""


def find_config_file(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The file to load: ``--config``, else ``CONFIG_FILE``, else a default name in ``cwd``.

    Raises:
        ConfigError: an explicitly named file does not exist.
    """
    named = explicit or env.get("CONFIG_FILE")
    if named:
        path = (cwd / named).resolve()
        if not path.is_file():
            raise ConfigError(f"config file {named!r} does not exist")
        return path
    for name in DEFAULT_FILENAMES:
        candidate = cwd / name
        if candidate.is_file():
            return candidate
    return None


def read_document(path: Path) -> dict[str, Any]:
    """Parse a YAML or JSON file into a mapping.

    Raises:
        ConfigError: the file cannot be read or parsed, or is not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


def substitute(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``value``.

    Raises:
        ConfigError: a referenced variable is unset and has no default.
    """
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found is not None and (found != "" or default is None):
                return found
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set (use ${{{name}:-default}})")

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {key: substitute(item, env, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, env, f"{path}[{index}]") for index, item in enumerate(value)]
    return value


def format_validation_error(exc: ValidationError) -> str:
    """One ``key.path: reason`` line per problem."""
    lines = []
    for error in exc.errors():
        loc = ""
        for part in error["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown key"
        lines.append(f"{loc or '<root>'}: {reason}")
    return "\n".join(lines)


def load_config(
    explicit_path: str | None,
    environ: Mapping[str, str],
    cwd: Path,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Build the config from a file, ``.env`` in ``cwd``, the environment and CLI overrides.

    Args:
        explicit_path: ``--config`` value, if any.
        environ: the process environment (passed in so nothing else reads ``os.environ``).
        cwd: directory holding the default config file names and ``.env``.
        overrides: top-level keys set on the command line (they win over everything).

    Raises:
        ConfigError: with every offending key path and the reason.
    """
    dotenv_path = cwd / ".env"
    dotenv = {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None} if dotenv_path.is_file() else {}
    env: dict[str, str] = {**dotenv, **environ}
    source = find_config_file(explicit_path, env, cwd)
    document = substitute(read_document(source), env) if source else {}
    for variable, key in ENV_OVERRIDES.items():
        if env.get(variable):
            document[key] = env[variable]
    document.update(overrides or {})
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        where = str(source) if source else "configuration"
        raise ConfigError(f"{where} is invalid:\n{format_validation_error(exc)}") from None
    return LoadedConfig(config=config, source=source, base_dir=source.parent if source else cwd)


def parse_upstream(raw: Any) -> UpstreamConfig:
    """An upstream definition given at run time (``mcp_register_upstream``), checked as the config would be.

    Raises:
        ConfigError: the definition is invalid (each bad key path and why).
    """
    try:
        return UpstreamConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid upstream:\n{format_validation_error(exc)}") from None
