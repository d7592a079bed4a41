"""``conduit tools``: what programs can call, as an agent's SDK will present it.

Lists the configured upstreams ("packages" in the SDK: ``tools.<upstream>``) and their tools,
shows one tool's description and input schema, or prints the generated SDK stubs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import anyio

from conduit.catalog import Catalog, ToolEntry, qualify
from conduit.cli.common import add_command, add_config_option, load, say_which_config, setup_logging
from conduit.config.loader import LoadedConfig
from conduit.core.languages import BY_ALIAS
from conduit.sdk.naming import identifier
from conduit.sdk.typescript import result_type, schema_type
from conduit.upstream import stderr as upstream_stderr
from conduit.upstream.network import policy_for
from conduit.upstream.registry import UpstreamRegistry

EPILOG = """\
Exit status 1 when an upstream could not be listed (what the others offer is still shown).

examples:
  conduit tools --config examples/demo.yaml     every upstream and its tools
  conduit tools catalog.get_stock               one tool: description, call forms, input schema
  conduit tools --json                          the same as discovery returns it, for scripts
  conduit tools --sdk ts                        the TypeScript stubs sandboxed programs load
"""


def add_parser(commands: Any) -> None:
    parser = add_command(
        commands,
        "tools",
        summary="list the upstream tools programs can call",
        description="List the configured upstreams' tools, show one tool's schema, or print the SDK stubs.",
        epilog=EPILOG,
    )
    parser.add_argument("name", nargs="?", metavar="TOOL", help="one tool, as 'upstream.tool' or 'upstream__tool'")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--sdk", choices=sorted(BY_ALIAS), help="print the generated SDK stubs for this language")
    add_config_option(parser)
    parser.set_defaults(handler=tools)


def tools(args: argparse.Namespace) -> int:
    loaded = load(args)
    say_which_config(loaded)
    setup_logging(loaded.config, level="warning")
    upstream_stderr.logger.setLevel(logging.INFO)  # what the upstreams print, each line under its id
    catalog, causes = anyio.run(catalog_of, loaded)
    for upstream, reason in causes.items():
        print(f"conduit: upstream {upstream!r} could not be listed: {reason}", file=sys.stderr)
    failed = 1 if catalog.failures else 0
    if args.sdk:
        print(BY_ALIAS[args.sdk].stubs(catalog.tools), end="")
        return failed
    if args.name:
        qualified = qualify(args.name)
        entry = catalog.find(qualified)
        if entry is None:
            print(f"conduit: no tool {args.name!r} (try `conduit tools` for the list)", file=sys.stderr)
            return 1
        print(json.dumps(entry.describe(), indent=2) if args.json else _one(entry))
        return failed
    if args.json:
        print(json.dumps([entry.describe() for entry in catalog.tools], indent=2))
    else:
        print(_listing(catalog, loaded))
    return failed


async def catalog_of(loaded: LoadedConfig) -> tuple[Catalog, dict[str, str]]:
    """Every configured upstream's tools (connected, listed and closed again), and why each failure failed."""
    async with anyio.create_task_group() as tg:
        network = policy_for(loaded.config.network)
        registry = UpstreamRegistry(base_dir=loaded.base_dir, host_env=dict(os.environ), tg=tg, network=network)
        for upstream in loaded.config.upstreams:
            registry.add(upstream)
        try:
            catalog = await registry.catalog()
            causes = {
                upstream_id: registry.connections[upstream_id].last_error or reason
                for upstream_id, reason in catalog.failures.items()
            }
        finally:
            with anyio.CancelScope(shield=True):
                await registry.aclose()
            tg.cancel_scope.cancel()
    return catalog, causes


def _listing(catalog: Catalog, loaded: LoadedConfig) -> str:
    if not loaded.config.upstreams:
        return "no upstreams are configured (add some under 'upstreams:' in the config)"
    lines: list[str] = []
    width = max((len(entry.name) for entry in catalog.tools), default=0)
    for upstream in loaded.config.upstreams:
        entries = [entry for entry in catalog.tools if entry.upstream == upstream.id]
        if upstream.id in catalog.failures:
            lines.append(f"{upstream.id}  (unavailable)")
            continue
        lines.append(f"{upstream.id}  ({len(entries)} tool{'s' if len(entries) != 1 else ''}; tools.{upstream.id}.*)")
        for entry in entries:
            summary = entry.description.strip().splitlines()[0] if entry.description.strip() else ""
            lines.append(f"  {entry.name:<{width}}  {summary}".rstrip())
    return "\n".join(lines)


def _one(entry: ToolEntry) -> str:
    upstream, method = identifier(entry.upstream), identifier(entry.name)
    schema = entry.input_schema or {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    keywords = ", ".join(f"{name}=..." for name in properties or {} if name.isidentifier())
    return "\n".join(
        [
            entry.qualified,
            "",
            entry.description.strip() or "(no description)",
            "",
            f"TypeScript / JavaScript:  await tools.{upstream}.{method}(args: {schema_type(schema)})",
            f"Python:                   await tools.{upstream}.{method}({keywords})",
            f'By name:                  await tools.$raw("{entry.qualified}", {{...}})  (the whole result)',
            f"Returns:                  {result_type(entry)}",
            "",
            "input schema:",
            json.dumps(schema, indent=2),
        ]
    )
