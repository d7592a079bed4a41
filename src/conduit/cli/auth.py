"""``conduit auth``: OAuth credentials for an HTTP upstream, printed or kept for one principal.

``conduit auth URL`` prints a ready ``credentials`` block. ``conduit auth --principal ID --upstream
UPSTREAM`` keeps the credential in the encrypted credential store instead, as that principal's own
for an upstream marked ``credentials: perPrincipal`` (``--bearer-token`` / ``--api-key`` store a
static one without an OAuth flow). Authorization code with PKCE: discovery from the MCP URL, a
client (given, or registered dynamically), the user's consent in a browser through a loopback
redirect, the code exchange. Nothing secret is logged or, in store mode, printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import webbrowser
from typing import Any

import anyio
import httpx2
from pydantic import SecretStr

from conduit.cli.common import add_command, add_config_option, load
from conduit.cluster.store import SharedStore
from conduit.config.schema import Credentials
from conduit.errors import ConduitError, ConfigError, StoreUnavailableError
from conduit.oauth.authorize import Grant, LoginOptions, credentials_document, login
from conduit.security.callers import RESERVED_CALLER_IDS
from conduit.upstream.credential_store import new_key, store_for

EPILOG = """\
The authorization URL is printed on stderr (and opened in a browser unless --no-browser); the redirect
comes back to a one-shot listener on 127.0.0.1. Paste the printed block under the upstream in your
config, or keep the secret values in environment variables and write ${VAR} in their place.

examples:
  conduit auth https://mcp.example.com/mcp
  conduit auth https://mcp.example.com/mcp --client-id conduit-prod --scope repo --scope read:org
  conduit auth https://mcp.example.com/mcp --issuer https://auth.example.com --no-browser
  conduit auth --principal alice --upstream github         alice's own token, kept in the credential store
  conduit auth --principal bob --upstream search --api-key "$BOBS_KEY"
  conduit auth --principal oauth:u-123 --upstream github   the token of the OAuth caller whose claim is u-123
  conduit auth --new-store-key                             a key for auth.credentialStore.key
"""


def add_parser(commands: Any) -> None:
    parser = add_command(
        commands,
        "auth",
        summary="get OAuth credentials for an HTTP upstream",
        description="Authorize Conduit against an OAuth-protected MCP server (authorization code with PKCE) "
        "and print a ready 'credentials' block.",
        epilog=EPILOG,
    )
    parser.add_argument("url", metavar="MCP_URL", nargs="?", help="the upstream's MCP endpoint")
    parser.add_argument("--principal", metavar="ID", help="keep the credential in the store, as this principal's")
    parser.add_argument("--upstream", metavar="ID", help="with --principal: the upstream (its URL is the config's)")
    parser.add_argument("--bearer-token", metavar="TOKEN", help="with --principal: store this bearer token, no flow")
    parser.add_argument("--api-key", metavar="KEY", help="with --principal: store this API key, no flow")
    parser.add_argument("--new-store-key", action="store_true", help="print a fresh credential-store key and exit")
    add_config_option(parser)
    parser.add_argument("--issuer", metavar="URL", help="the authorization server (skips protected-resource discovery)")
    parser.add_argument("--client-id", metavar="ID", help="a pre-registered client (default: register dynamically)")
    parser.add_argument("--client-secret", metavar="SECRET", help="its secret, for a confidential client")
    parser.add_argument("--scope", action="append", metavar="SCOPE", help="a scope to request (repeatable)")
    parser.add_argument("--port", type=int, default=0, metavar="N", help="callback port on 127.0.0.1 (default: free)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds to wait for consent")
    parser.add_argument("--no-browser", action="store_true", help="only print the authorization URL")
    parser.add_argument("--header", metavar="NAME", help="with --api-key: the header carrying it (X-API-Key)")
    parser.set_defaults(handler=auth)


def auth(args: argparse.Namespace) -> int:
    if args.new_store_key:
        print(new_key())
        return 0
    if args.principal is not None or args.upstream is not None:
        return _store_mode(args)
    if args.url is None:
        print("conduit: name the upstream's MCP URL (or --principal ID --upstream ID)", file=sys.stderr)
        return 2
    grant = _login(args, args.url)
    if grant is None:
        return 1
    print(credentials_block(grant, args.url))
    print("conduit: authorized; the credentials block above holds secrets, keep it private", file=sys.stderr)
    return 0


def _store_mode(args: argparse.Namespace) -> int:
    """Keep a principal's credential for an upstream in the store (an OAuth flow unless one is given)."""
    if args.principal is None or args.upstream is None:
        raise ConfigError("--principal and --upstream go together")
    loaded = load(args)
    config = loaded.config
    if args.principal in RESERVED_CALLER_IDS or not config.auth.is_caller_id(args.principal):
        oauth = " (an OAuth caller is oauth:<its principal claim>)" if config.auth.oauth is not None else ""
        raise ConfigError(f"no principal {args.principal!r} in auth.principals{oauth}")
    upstream = next((entry for entry in config.upstreams if entry.id == args.upstream), None)
    if upstream is None or upstream.url is None:
        raise ConfigError(f"no HTTP upstream {args.upstream!r} in the config")
    if upstream.credentials != "perPrincipal":  # (a tokenExchange upstream takes each caller's own token: none kept)
        raise ConfigError(
            f"upstream {args.upstream!r} does not take per-principal credentials (credentials: perPrincipal)"
        )
    shared = SharedStore(config.cluster) if config.cluster.redis_url is not None else None
    store = store_for(config, loaded.base_dir, shared)
    if store is None:
        raise ConfigError("auth.credentialStore is not configured")
    if args.bearer_token is not None:
        credentials = Credentials(type="bearer", bearer_token=SecretStr(args.bearer_token))
    elif args.api_key is not None:
        credentials = Credentials(
            type="apiKey", api_key=SecretStr(args.api_key), header_name=args.header or "X-API-Key"
        )
    else:
        grant = _login(args, upstream.url)
        if grant is None:
            return 1
        credentials = Credentials.model_validate(credentials_document(grant))
    try:
        store.put(args.principal, args.upstream, credentials)
    except StoreUnavailableError as exc:
        print(f"conduit: {exc.message}", file=sys.stderr)
        return 1
    print(
        f"conduit: stored {args.principal}'s {credentials.type} credential for {args.upstream} in {store.where}",
        file=sys.stderr,
    )
    return 0


def _login(args: argparse.Namespace, mcp_url: str) -> Grant | None:
    """The grant of one authorization-code flow; None (after saying why) when it fails."""
    options = LoginOptions(
        mcp_url=mcp_url,
        issuer=args.issuer,
        client_id=args.client_id,
        client_secret=args.client_secret,
        scopes=tuple(args.scope) if args.scope else None,
        callback_port=args.port,
        timeout_s=args.timeout,
    )

    def show(url: str) -> None:
        print(f"Open this URL to authorize Conduit (waiting up to {args.timeout:.0f} s):\n  {url}", file=sys.stderr)
        sys.stderr.flush()
        if not args.no_browser:
            webbrowser.open(url)

    async def flow() -> Grant:
        async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as http:
            return await login(options, show, http)

    try:
        return anyio.run(flow)
    except ConduitError as exc:
        print(f"conduit: {exc.message}", file=sys.stderr)
    except TimeoutError:
        print(f"conduit: no authorization arrived within {args.timeout:.0f} s", file=sys.stderr)
    except httpx2.HTTPError as exc:
        print(f"conduit: cannot reach the server: {exc}", file=sys.stderr)
    return None


def credentials_block(grant: Grant, mcp_url: str) -> str:
    """YAML for the upstream's ``credentials`` key (see :func:`credentials_document`), with comments."""
    quote = json.dumps  # a JSON string is a valid YAML scalar, whatever it holds
    today = datetime.date.today().isoformat()
    lines = [f"# credentials for {mcp_url}, obtained {today} by `conduit auth`"]
    if grant.refresh_token is None:
        expiry = f" (expires in {grant.expires_in} s)" if grant.expires_in else ""
        lines.append(f"# the server issued no refresh token: this access token cannot be renewed{expiry}")
    lines.append("credentials:")
    for key, value in credentials_document(grant).items():
        if isinstance(value, dict):
            lines += [f"  {key}:", *(f"    {name}: {quote(item)}" for name, item in value.items())]
        elif isinstance(value, list):
            lines.append(f"  {key}: [{', '.join(quote(item) for item in value)}]")
        else:
            lines.append(f"  {key}: {value if key == 'type' else quote(value)}")
    return "\n".join(lines)
