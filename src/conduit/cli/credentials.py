"""``conduit credentials ls|rm --principal ID``: an operator lists and revokes the upstream credentials a
principal keeps in the credential store (``auth.credentialStore``), as ``conduit auth --principal`` stored them
or the principal connected them; values are never shown."""

from __future__ import annotations

import argparse
from typing import Any

from conduit.cli.common import add_command, add_state_actions
from conduit.cluster.store import SharedStore
from conduit.config.loader import LoadedConfig
from conduit.errors import ConfigError
from conduit.upstream.credential_store import store_for

EPILOG = """\
examples:
  conduit credentials ls --principal alice            each upstream alice keeps a credential for, and its type
  conduit credentials rm --principal alice github     forget it: alice's next call to github needs a new one
"""


def add_parser(commands: Any) -> None:
    parser = add_command(
        commands,
        "credentials",
        summary="list or revoke a principal's upstream credentials",
        description="List or revoke the upstream credentials a principal keeps (auth.credentialStore).",
        epilog=EPILOG,
    )
    add_state_actions(
        parser,
        [
            ("ls", "list the upstreams the principal keeps a credential for, with its type", []),
            ("rm", "forget the principal's credential for UPSTREAM", [("upstream", None, "UPSTREAM")]),
        ],
        _act,
    )


async def _act(loaded: LoadedConfig, principal: str, args: argparse.Namespace) -> int:
    config = loaded.config
    shared = SharedStore(config.cluster) if config.cluster.redis_url is not None else None
    store = store_for(config, loaded.base_dir, shared)
    if store is None:
        raise ConfigError("auth.credentialStore is not configured: no principal keeps credentials")
    if args.action == "ls":
        for upstream, kind in store.kinds_of(principal).items():
            print(f"{upstream}  {kind}")
        return 0
    if not store.remove(principal, args.upstream):
        raise ConfigError(f"principal {principal!r} keeps no credential for {args.upstream!r}")
    print(f"conduit: forgot {principal}'s credential for {args.upstream} ({store.where})")
    return 0
