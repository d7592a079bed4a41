"""An OAuth issuer's public face, for tests of Conduit as a resource server: metadata and a JWKS.

    python issuer.py KEYS_FILE

Serves ``/.well-known/oauth-authorization-server`` (naming ``/jwks.json`` as its ``jwks_uri``) and
``/jwks.json``, read from ``KEYS_FILE`` on every request, so a test rotates keys by rewriting the
file. ``/_stats`` counts the key-set fetches. Prints ``listening on http://127.0.0.1:PORT`` once
bound to a free loopback port. The private keys stay in the test, which signs the tokens itself.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def build_app(keys: Path) -> Starlette:
    fetches = {"jwks": 0}

    def base(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}"

    async def metadata(request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": base(request),
                "jwks_uri": f"{base(request)}/jwks.json",
                "authorization_endpoint": f"{base(request)}/authorize",
                "token_endpoint": f"{base(request)}/token",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    def jwks(request: Request) -> Response:  # synchronous: starlette runs it in a thread (it reads a file)
        fetches["jwks"] += 1
        return JSONResponse(json.loads(keys.read_text()))

    async def stats(request: Request) -> Response:
        return JSONResponse(fetches)

    return Starlette(
        routes=[
            Route("/.well-known/oauth-authorization-server", metadata),
            Route("/jwks.json", jwks),
            Route("/_stats", stats),
        ]
    )


def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(build_app(Path(sys.argv[1])), log_level="warning", lifespan="off", log_config=None)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
