"""``conduit auth URL``: OAuth credentials for an HTTP upstream, printed as a ready ``credentials`` block.

Authorization code with PKCE: discovery from the MCP URL, a client (given, or registered
dynamically), the user's consent in a browser through a loopback redirect, the code
exchange. The block goes to standard output; nothing secret is logged.
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

from conduit.errors import ConduitError
from conduit.oauth.authorize import Grant, LoginOptions, login

EPILOG = """\
The authorization URL is printed on stderr (and opened in a browser unless --no-browser); the redirect
comes back to a one-shot listener on 127.0.0.1. Paste the printed block under the upstream in your
config, or keep the secret values in environment variables and write ${VAR} in their place.

examples:
  conduit auth https://mcp.example.com/mcp
  conduit auth https://mcp.example.com/mcp --client-id conduit-prod --scope repo --scope read:org
  conduit auth https://mcp.example.com/mcp --issuer https://auth.example.com --no-browser
"""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "auth",
        help="get OAuth credentials for an HTTP upstream",
        description="Authorize Conduit against an OAuth-protected MCP server (authorization code with PKCE) "
        "and print a ready 'credentials' block.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="MCP_URL", help="the upstream's MCP endpoint")
    parser.add_argument("--issuer", metavar="URL", help="the authorization server (skips protected-resource discovery)")
    parser.add_argument("--client-id", metavar="ID", help="a pre-registered client (default: register dynamically)")
    parser.add_argument("--client-secret", metavar="SECRET", help="its secret, for a confidential client")
    parser.add_argument("--scope", action="append", metavar="SCOPE", help="a scope to request (repeatable)")
    parser.add_argument("--port", type=int, default=0, metavar="N", help="callback port on 127.0.0.1 (default: free)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds to wait for consent")
    parser.add_argument("--no-browser", action="store_true", help="only print the authorization URL")
    parser.set_defaults(handler=auth)


def auth(args: argparse.Namespace) -> int:
    options = LoginOptions(
        mcp_url=args.url,
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
        grant = anyio.run(flow)
    except ConduitError as exc:
        print(f"conduit: {exc.message}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"conduit: no authorization arrived within {args.timeout:.0f} s", file=sys.stderr)
        return 1
    except httpx2.HTTPError as exc:
        print(f"conduit: cannot reach the server: {exc}", file=sys.stderr)
        return 1
    print(credentials_block(grant, args.url))
    print("conduit: authorized; the credentials block above holds secrets, keep it private", file=sys.stderr)
    return 0


def credentials_block(grant: Grant, mcp_url: str) -> str:
    """YAML for the upstream's ``credentials`` key: refreshable oauth2 when possible, else a bearer token."""
    quote = json.dumps  # a JSON string is a valid YAML scalar, whatever it holds
    today = datetime.date.today().isoformat()
    lines = [f"# credentials for {mcp_url}, obtained {today} by `conduit auth`"]
    if grant.refresh_token is None:
        expiry = f" (expires in {grant.expires_in} s)" if grant.expires_in else ""
        lines += [
            f"# the server issued no refresh token: this access token cannot be renewed{expiry}",
            "credentials:",
            "  type: bearer",
            f"  bearerToken: {quote(grant.access_token)}",
        ]
        return "\n".join(lines)
    lines += ["credentials:", "  type: oauth2", f"  tokenUrl: {quote(str(grant.server.token_endpoint))}"]
    lines.append(f"  clientId: {quote(grant.client.client_id)}")
    if grant.client.client_secret:
        lines.append(f"  clientSecret: {quote(grant.client.client_secret)}")
    lines.append(f"  refreshToken: {quote(grant.refresh_token)}")
    if grant.scopes:
        lines.append(f"  scopes: [{', '.join(quote(scope) for scope in grant.scopes)}]")
    lines += ["  tokenParams:", f"    resource: {quote(grant.resource)}"]
    return "\n".join(lines)
