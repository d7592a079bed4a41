"""``conduit skills save|ls|show|rm``: an operator manages the skills saved in the state database (a
principal's own) and sees the curated ones (``skills.dir``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from conduit.cli.common import add_command, add_state_actions, open_state
from conduit.config.loader import LoadedConfig

EPILOG = """\
A skill file is the program with a YAML front-matter header (name, description, and optionally inputSchema,
outputSchema, allowedTools, language); its extension gives the language (.ts, .js, .py). See docs/STATE.md.

examples:
  conduit skills save --principal alice weekly_report.ts    save (a new version each time)
  conduit skills ls --principal alice                        alice's skills and the curated ones
  conduit skills show --principal alice weekly_report        the newest version as a skill file
  conduit skills rm --principal alice weekly_report          every version
"""


def add_parser(commands: Any) -> None:
    parser = add_command(
        commands,
        "skills",
        summary="save, list, show or remove skills",
        description="Manage a principal's saved skills; list and show the curated ones (skills.dir).",
        epilog=EPILOG,
    )
    made = add_state_actions(
        parser,
        [
            ("save", "save a skill file (a new version each time)", [("target", None, "FILE")]),
            ("ls", "list the principal's skills and the curated ones", []),
            ("show", "print a skill as a skill file", [("target", None, "NAME")]),
            ("rm", "remove every version of a skill", [("target", None, "NAME")]),
        ],
        _act,
    )
    made["show"].add_argument("--version", type=int, metavar="N", help="this version (default: the newest)")


async def _act(loaded: LoadedConfig, principal: str, args: argparse.Namespace) -> int:
    # Imported here: every other command starts without SQLAlchemy.
    from conduit.packages.skill_definition import read_skill_file, skill_file
    from conduit.packages.skills import CURATED, SkillsPackage, load_curated
    from conduit.sandbox.deno.runtime import find_deno
    from conduit.security.callers import Caller
    from conduit.state.skills import SkillStore

    config = loaded.config
    curated = load_curated(loaded.base_dir / config.skills.dir) if config.skills.dir else {}
    caller = Caller(principal, "principal")
    async with open_state(loaded) as database:
        package = SkillsPackage(SkillStore(database), curated, find_deno(config.deno_path))
        if args.action == "save":
            saved = await package.save(caller, read_skill_file(Path(args.target)))
            print(f"saved {saved.name} v{saved.version} for {principal}", file=sys.stderr)
        elif args.action == "ls":
            for skill in [*curated.values(), *await package.store.latest(principal)]:
                whose = CURATED
                if skill.owner != CURATED:
                    kept = [version for version, _ in await package.store.versions(principal, skill.name)]
                    whose = f"v{skill.version}" + (f" (v{kept[-1]}-v{kept[0]} kept)" if len(kept) > 1 else "")
                print(f"{skill.name:<32} {whose:<20} {skill.definition.language:<10} {skill.definition.description}")
        elif args.action == "show":
            found = await package.find(caller, args.target, args.version)
            if found is None:
                print(f"conduit: {principal} has no skill {args.target!r}", file=sys.stderr)
                return 1
            print(skill_file(found.definition), end="" if found.definition.code.endswith("\n") else "\n")
        elif args.target in curated:
            print(f"conduit: {args.target!r} is curated: remove its file from skills.dir", file=sys.stderr)
            return 1
        elif not await package.store.remove(principal, args.target):
            print(f"conduit: {principal} has no skill {args.target!r}", file=sys.stderr)
            return 1
    return 0
