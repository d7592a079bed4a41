"""The JWT validator against a real loopback issuer: key rotation, the refetch throttle, the SSRF guard."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from conduit.auth.jwt_tokens import REFETCH_INTERVAL_S, JwtValidator, TokenRejected
from conduit.config.schema import OAuthConfig
from conduit.security.ssrf import NetworkPolicy
from conduit.upstream.network import guarded_client
from support import ISSUER, loopback_server

pytestmark = pytest.mark.anyio

AUDIENCE = "https://conduit.example/mcp"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "RS256"}


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps({"keys": []}))
    async with loopback_server(ISSUER, str(keys)) as url:
        yield url, keys


def sign(key: rsa.RSAPrivateKey, kid: str, issuer: str) -> str:
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": "dora", "exp": int(time.time()) + 300}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


async def fetches(issuer: str) -> int:
    async with httpx2.AsyncClient(timeout=10) as http:
        return int((await http.get(f"{issuer}/_stats")).json()["jwks"])


async def test_a_rotated_key_is_fetched_once_the_refetch_interval_has_passed(issuer: tuple[str, Path]) -> None:
    url, keys = issuer
    first, second = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    keys.write_text(json.dumps({"keys": [public_jwk(first, "k1")]}))
    clock = Clock()
    network = NetworkPolicy(allow_private_networks=True)
    validator = JwtValidator(OAuthConfig(issuer=url, audience=AUDIENCE), lambda: guarded_client(network), clock=clock)
    assert (await validator.claims(sign(first, "k1", url)))["sub"] == "dora"
    keys.write_text(json.dumps({"keys": [public_jwk(first, "k1"), public_jwk(second, "k2")]}))
    with pytest.raises(TokenRejected, match="key the issuer does not publish"):
        await validator.claims(sign(second, "k2", url))  # too soon to fetch again: refused, no request
    assert await fetches(url) == 1
    clock.now += REFETCH_INTERVAL_S + 1
    assert (await validator.claims(sign(second, "k2", url)))["sub"] == "dora"
    assert await fetches(url) == 2
    for _ in range(5):  # a flood of unknown key ids within the interval costs the issuer nothing
        with pytest.raises(TokenRejected):
            await validator.claims(sign(second, "k-forged", url))
    assert await fetches(url) == 2


async def test_the_issuers_keys_are_fetched_through_the_ssrf_guard(issuer: tuple[str, Path]) -> None:
    url, keys = issuer
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys.write_text(json.dumps({"keys": [public_jwk(key, "k1")]}))
    validator = JwtValidator(
        OAuthConfig(issuer=url, audience=AUDIENCE, jwks_url=f"{url}/jwks.json"), lambda: guarded_client(NetworkPolicy())
    )
    with pytest.raises(TokenRejected, match="keys are unavailable"):
        await validator.claims(sign(key, "k1", url))  # a loopback issuer is a private address: refused
    assert await fetches(url) == 0
