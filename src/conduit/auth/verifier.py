"""Bearer tokens to callers: the master token, principals' API keys, OAuth access tokens (JWTs).

:class:`CallerVerifier` is the MCP SDK's ``TokenVerifier``: the SDK's bearer middleware calls it for
every HTTP request and keeps the :class:`CallerToken` it returns as the request's user, which also
binds each MCP session to the caller that opened it. An OAuth token's caller is ``oauth:<claim>``
(:func:`~conduit.security.callers.oauth_id`), never the API-key principal or operator its claim may
name, unless the policy it matches maps it to a principal. Keys are compared in constant time over their
SHA-256 digests (every principal's digest is compared, so timing tells nothing about which one is
close); no token is ever logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from typing import Any

from mcp.server.auth.provider import AccessToken
from pydantic import ConfigDict

from conduit.auth.jwt_tokens import JwtValidator, TokenRejected
from conduit.auth.principals import principal
from conduit.config.schema import AuthConfig, Config, OAuthConfig, OAuthPolicy
from conduit.errors import ConfigError
from conduit.security.callers import MASTER, Caller, oauth_id
from conduit.upstream.network import guarded_client, policy_for

logger = logging.getLogger(__name__)


class CallerToken(AccessToken):
    """An access token the SDK's middleware accepted, with the caller it stands for."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    caller: Caller


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class CallerVerifier:
    """Who a bearer token is, or None (the middleware answers 401)."""

    def __init__(self, auth: AuthConfig, master_token: str, jwt: JwtValidator | None = None) -> None:
        self._master = key_digest(master_token)
        self._keys: list[tuple[bytes, Caller]] = []
        self._principals: dict[str, Caller] = {}
        """API-key principals by id, for OAuth policies that map a person to one (``principal``)."""
        for entry in auth.principals:
            digest = (
                key_digest(entry.api_key.get_secret_value())
                if entry.api_key is not None
                else bytes.fromhex(entry.api_key_sha256 or "")
            )
            if hmac.compare_digest(digest, self._master):
                raise ConfigError(f"principal {entry.id!r} has the master token as its API key")
            self._principals[entry.id] = principal(entry.id, entry)
            self._keys.append((digest, self._principals[entry.id]))
        self._oauth = auth.oauth
        self._jwt = jwt
        self.rejections: dict[str, int] = {}
        """Why tokens were refused, counted (never the tokens)."""

    async def verify_token(self, token: str) -> CallerToken | None:
        if not token:
            return None
        digest = key_digest(token)
        caller = MASTER if hmac.compare_digest(digest, self._master) else None
        for candidate, keyed in self._keys:  # all of them, whatever matches
            if hmac.compare_digest(candidate, digest):
                caller = keyed
        if caller is not None:
            return CallerToken(token=token, client_id=caller.id, scopes=[], subject=caller.id, caller=caller)
        if self._jwt is None or self._oauth is None or token.count(".") != 2:
            return self._refused("unknown key")
        try:
            claims = await self._jwt.claims(token)
        except TokenRejected as exc:
            return self._refused(str(exc))
        return self._oauth_caller(token, claims, self._oauth)

    def _oauth_caller(self, token: str, claims: dict[str, Any], oauth: OAuthConfig) -> CallerToken | None:
        claim = claims.get(oauth.principal_claim)
        caller_id = oauth_id(claim)
        if caller_id is None:
            return self._refused(f"the token's {oauth.principal_claim!r} claim does not name a principal")
        scopes = _scopes(claims)
        for index, policy in enumerate(oauth.policies):
            if _matches(policy, scopes, claims):
                name = f"scope:{policy.scope}" if policy.scope is not None else f"policies[{index}]"
                if policy.principal is not None:  # the config says this person is that principal
                    caller = dataclasses.replace(self._principals[policy.principal], policy_name=name)
                else:
                    caller = principal(caller_id, policy, name)
                caller = dataclasses.replace(caller, subject_token=token)
                client = claims.get("client_id", claims.get("azp", claim))
                return CallerToken(
                    token=token,
                    client_id=str(client),
                    scopes=scopes,
                    expires_at=int(claims["exp"]),
                    subject=caller.id,  # what the SDK binds a session to: exactly this caller
                    claims={"iss": claims.get("iss")},
                    caller=caller,
                )
        return self._refused("the token matches no policy")

    def _refused(self, reason: str) -> CallerToken | None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        logger.info("bearer token refused: %s", reason)
        return None


def _scopes(claims: dict[str, Any]) -> list[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return raw.split()
    return [str(item) for item in raw] if isinstance(raw, list) else []


def _matches(policy: OAuthPolicy, scopes: list[str], claims: dict[str, Any]) -> bool:
    if policy.scope is not None:
        return policy.scope in scopes
    for name, wanted in (policy.claim or {}).items():
        value = claims.get(name)
        if not (value == wanted or (isinstance(value, list) and wanted in value)):
            return False
    return True


def build_verifier(config: Config, master_token: str) -> CallerVerifier:
    """The verifier of ``config``'s callers; the issuer's keys are fetched through the SSRF guard.

    Raises:
        ConfigError: a principal's key is the master token.
    """
    oauth = config.auth.oauth
    network = policy_for(config.network)
    jwt = JwtValidator(oauth, lambda: guarded_client(network)) if oauth is not None else None
    return CallerVerifier(config.auth, master_token, jwt)
