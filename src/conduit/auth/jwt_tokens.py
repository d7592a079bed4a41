"""JWT access tokens from the configured OAuth issuer: signature, issuer, audience and times, with PyJWT.

The issuer's keys (its JWKS, from ``jwksUrl`` or the ``jwks_uri`` of its metadata) are fetched
through the SSRF-guarded HTTP client and kept for ``jwksCacheTtlMs``; a token naming a key id the
set lacks fetches it again (rotation), at most once every :data:`REFETCH_INTERVAL_S` so a flood of
forged key ids cannot hammer the issuer. Only asymmetric algorithms the config lists are accepted,
and only with a key of the matching type: ``alg: none`` and HMAC (a public key used as a shared
secret) never verify. A token must carry ``exp``, ``iss`` and ``aud``; ``nbf`` is checked when present.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import anyio
import httpx2
import jwt

from conduit.config.schema import OAuthConfig
from conduit.errors import ConduitError
from conduit.oauth.discovery import authorization_server_document

logger = logging.getLogger(__name__)

REFETCH_INTERVAL_S: Final = 30.0
"""At most one fetch of the key set this often because a token named an unknown key id."""

HttpClientFactory = Callable[[], AbstractAsyncContextManager[httpx2.AsyncClient]]


class TokenRejected(Exception):
    """The token is not a valid access token for this server; the message says why (never the token)."""


class JwtValidator:
    """Validates access tokens issued by one authorization server."""

    def __init__(self, config: OAuthConfig, http: HttpClientFactory, clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._http = http
        self._clock = clock
        self._lock = anyio.Lock()
        self._keys: dict[str, _Key] = {}
        self._unnamed: list[_Key] = []
        self._fetched_at: float | None = None
        self.fetches = 0
        """Key-set fetches made (for tests and health)."""

    async def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``.

        Raises:
            TokenRejected: malformed, wrongly signed, expired, not yet valid, or for another issuer or audience.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._config.algorithms:
            raise TokenRejected(f"signature algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None, algorithm)
        options: Any = {"require": ["exp", "iss", "aud"]}
        try:
            return jwt.decode(
                token,
                key.jwk.key,
                algorithms=[algorithm],
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_ms / 1000,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the token has no {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise TokenRejected("the token's signature does not verify") from None

    async def _key(self, kid: str | None, algorithm: str) -> _Key:
        seen = self._fetched_at
        age = None if seen is None else self._clock() - seen
        # Keys are trusted for the configured time (0: as long as the refetch interval); a key id the set
        # lacks fetches it again, but not sooner than the interval after the last fetch.
        stale = age is None or age > (self._config.jwks_cache_ttl_ms / 1000 or REFETCH_INTERVAL_S)
        if stale or (kid is not None and kid not in self._keys and age is not None and age >= REFETCH_INTERVAL_S):
            await self._refresh(seen)
        candidates = [self._keys[kid]] if kid is not None and kid in self._keys else []
        if kid is None:
            candidates = [*self._keys.values(), *self._unnamed]
        for key in candidates:
            if key.fits(algorithm):
                return key
        raise TokenRejected("the token is signed by a key the issuer does not publish")

    async def _refresh(self, seen: float | None) -> None:
        """Fetch the key set, unless another request did since ``seen`` (the fetch time this one saw)."""
        async with self._lock:
            fetched = self._fetched_at
            if fetched != seen:
                return  # another request refreshed while this one waited
            try:
                document = await self._fetch()
            except (ConduitError, httpx2.HTTPError, ValueError) as exc:
                message = exc.message if isinstance(exc, ConduitError) else str(exc) or type(exc).__name__
                logger.warning("the issuer's keys could not be fetched: %s", message)
                if fetched is None:
                    raise TokenRejected("the issuer's keys are unavailable") from None
                return  # keep the keys already known
            self._install(document)
            self._fetched_at = self._clock()
            self.fetches += 1

    async def _fetch(self) -> Mapping[str, Any]:
        async with self._http() as http:
            url = self._config.jwks_url
            if url is None:
                metadata = await authorization_server_document(http, self._config.issuer)
                if not isinstance(metadata.get("jwks_uri"), str):
                    raise ValueError(f"the metadata of {self._config.issuer} names no jwks_uri")
                url = metadata["jwks_uri"]
            response = await http.get(url, headers={"Accept": "application/json"})
            if response.status_code != 200:
                raise ValueError(f"{url} answered {response.status_code}")
            document = response.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError(f"{url} is not a JSON Web Key Set")
        return document

    def _install(self, document: Mapping[str, Any]) -> None:
        keys: dict[str, _Key] = {}
        unnamed: list[_Key] = []
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                continue  # encryption keys, and shared secrets (never published, never accepted)
            try:
                key = _Key(jwt.PyJWK(entry), entry.get("alg") if isinstance(entry.get("alg"), str) else None)
            except jwt.PyJWTError as exc:
                logger.info("ignoring an unusable key in the issuer's key set: %s", exc)
                continue
            if key.jwk.key_id:
                keys[key.jwk.key_id] = key
            else:
                unnamed.append(key)
        self._keys, self._unnamed = keys, unnamed


_FAMILIES: Final = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


@dataclass(frozen=True)
class _Key:
    jwk: jwt.PyJWK
    declared: str | None
    """The ``alg`` the key set states for it, if any."""

    def fits(self, algorithm: str) -> bool:
        """Whether this key may verify a signature made with ``algorithm``: its type matches, and so
        does its stated ``alg`` when the key set gives one."""
        if self.declared is not None and self.declared != algorithm:
            return False
        return self.jwk.key_type == _FAMILIES[algorithm[:2]]
