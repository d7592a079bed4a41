"""A skill's definition, checked: from a save request (``conduit__mcp_save_skill``, ``conduit skills save``)
or a curated file (``skills.dir``), and back to a file (``conduit skills show``).

A skill file is the program with a YAML front-matter header::

    ---
    name: weekly_report
    description: Summarise a week of orders.
    inputSchema: {type: object, properties: {week: {type: string}}, required: [week]}
    allowedTools: [shop.*]
    ---
    const orders = await tools.shop.orders({ week: args.week });
    return { count: orders.length };

Its language is the file's extension's (``.ts``, ``.js``, ``.py``) unless the header says ``language``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import anyio
import yaml
from jsonschema import SchemaError
from jsonschema.validators import validator_for

from conduit.core.languages import BY_ALIAS, BY_EXTENSION, Language
from conduit.core.packages import parse_python
from conduit.errors import InvalidParamsError
from conduit.security.allowlist import Allowlist, AllowlistError
from conduit.state.skills import SkillDefinition

NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
FIELDS: Final = ("name", "description", "language", "code", "inputSchema", "outputSchema", "allowedTools")
MAX_DESCRIPTION: Final = 2000
PARSE_TIMEOUT_S: Final = 10.0


def definition_from(raw: Mapping[str, Any]) -> SkillDefinition:
    """The definition a save request gives, its fields checked (not its code: :func:`check_code`).

    >>> definition_from({"name": "add", "description": "Add.", "language": "py", "code": "args['a']"}).language
    'python'

    Raises:
        InvalidParamsError: a field is missing, unknown or invalid (the message names it).
    """
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InvalidParamsError(f"unknown skill field(s): {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidParamsError(
            "name must be an identifier: a letter, then letters, digits or '_', at most 64 (e.g. weekly_report)"
        )
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise InvalidParamsError("description must be a non-empty string (it is how callers find the skill)")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidParamsError(f"description is {len(description)} characters; at most {MAX_DESCRIPTION}")
    language = BY_ALIAS.get(str(raw.get("language", "")).lower())
    if language is None:
        raise InvalidParamsError(f"language must be one of {', '.join(sorted(BY_ALIAS))}")
    code = raw.get("code")
    if not isinstance(code, str) or not code.strip():
        raise InvalidParamsError("code must be a non-empty string")
    allowed = raw.get("allowedTools")
    if allowed is not None:
        if not isinstance(allowed, list) or not all(isinstance(pattern, str) for pattern in allowed):
            raise InvalidParamsError("allowedTools must be a list of allowlist patterns")
        try:
            Allowlist.parse(allowed)
        except AllowlistError as exc:
            raise InvalidParamsError(f"allowedTools: {exc}") from None
    return SkillDefinition(
        name=name,
        description=description.strip(),
        language=language.name,
        code=code,
        input_schema=_schema(raw.get("inputSchema"), "inputSchema", must_be_object=True),
        output_schema=_schema(raw.get("outputSchema"), "outputSchema", must_be_object=False),
        allowed_tools=tuple(allowed) if allowed is not None else None,
    )


def _schema(value: Any, name: str, *, must_be_object: bool) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParamsError(f"{name} must be a JSON Schema object")
    try:
        validator_for(value).check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "(top)"
        raise InvalidParamsError(f"{name} is not a valid JSON Schema at {where}: {exc.message}") from None
    if must_be_object and value.get("type") != "object":
        raise InvalidParamsError(f'{name} must describe an object ("type": "object"): a skill\'s args are named')
    return value


async def check_code(definition: SkillDefinition, deno: str) -> None:
    """Check that the skill's code parses in its language: Python with CPython's parser (top-level ``await``
    allowed), TypeScript and JavaScript with Deno's (``deno fmt``, which runs nothing).

    Raises:
        InvalidParamsError: it does not parse (the message says where).
    """
    if definition.language == "python":
        try:
            parse_python(definition.code)
        except SyntaxError as exc:
            raise InvalidParamsError(
                f"skill {definition.name!r} does not parse as Python: {exc.msg} (line {exc.lineno})"
            ) from None
        return
    extension = "ts" if definition.language == "typescript" else "js"
    with tempfile.TemporaryDirectory(prefix="conduit-skill-") as scratch:
        env = {"PATH": os.environ.get("PATH", ""), "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1", "HOME": scratch}
        with anyio.fail_after(PARSE_TIMEOUT_S):
            done = await anyio.run_process(
                [deno, "fmt", f"--ext={extension}", "-"],
                input=definition.code.encode("utf-8"),
                cwd=scratch,
                env=env,
                check=False,
            )
    if done.returncode != 0:
        text = done.stderr.decode("utf-8", "replace")
        message = next((line.strip() for line in text.splitlines() if line.strip().startswith("error")), text.strip())
        where = re.search(r"_stdin\.\w+:(\d+):(\d+)", text)
        position = f" (line {where[1]}, column {where[2]})" if where else ""
        raise InvalidParamsError(
            f"skill {definition.name!r} does not parse as {extension == 'ts' and 'TypeScript' or 'JavaScript'}: "
            f"{message.removeprefix('error: ')}{position}"
        )


def read_skill_file(path: Path) -> SkillDefinition:
    """The definition in a skill file (front matter and code).

    Raises:
        InvalidParamsError: no front matter, invalid YAML, or an invalid field (the message names the file).
    """
    text = path.read_text(encoding="utf-8")
    match = re.match(r"\A---[ \t]*\n(.*?)\n---[ \t]*\n", text, re.S)
    if match is None:
        raise InvalidParamsError(f"{path}: a skill file starts with a '---' front-matter header (name, description)")
    try:
        header = yaml.safe_load(match[1]) or {}
    except yaml.YAMLError as exc:
        raise InvalidParamsError(f"{path}: the front matter is not valid YAML: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidParamsError(f"{path}: the front matter must be a mapping of fields")
    language: Language | None = BY_EXTENSION.get(path.suffix.lower())
    fields = {"language": language.name if language else None, **header, "code": text[match.end() :]}
    try:
        return definition_from(fields)
    except InvalidParamsError as exc:
        raise InvalidParamsError(f"{path}: {exc.message}") from None


def skill_file(definition: SkillDefinition) -> str:
    """A definition as a skill file (what :func:`read_skill_file` reads back)."""
    optional = {
        "inputSchema": definition.input_schema,
        "outputSchema": definition.output_schema,
        "allowedTools": list(definition.allowed_tools) if definition.allowed_tools is not None else None,
    }
    header: dict[str, Any] = {
        "name": definition.name,
        "description": definition.description,
        "language": definition.language,
        **{key: value for key, value in optional.items() if value is not None},
    }
    front = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=120)
    return f"---\n{front}---\n{definition.code}"
