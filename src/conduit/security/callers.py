"""Callers: who a request acts as, and the policy it runs under.

Every request to the gateway carries a :class:`Caller`. The master token is the operator: every tool,
the server's limits, and alone may administer (register upstreams at run time). A stdio client is
the single trusted local caller with the same reach, unless ``conduit serve --stdio --principal ID``
names a principal. Principals (an API key, or an OAuth access token mapped to a policy) run under
their :class:`~conduit.config.schema.Policy` (:mod:`conduit.auth.principals` makes their callers): a
request's allowlist is intersected with theirs, their limits are ceilings, and they have rate limits and
concurrency of their own.

A caller's :attr:`Caller.id` is the one key of everything that is its own: runs, credentials in the
store and in Redis, rate-limit counters, concurrency shares, approvals, audit records, metrics and logs.
No credential can name itself into another caller's id: ``master`` and ``local`` are no principal's
(the config refuses them), an API-key principal's id is its config entry's, and an OAuth caller's is
``oauth:`` and its principal claim (a principal's id has no colon). An OAuth caller is an API-key
principal only where a policy says so (``principal: alice``). Ids are compared exactly: claims that
differ in case or Unicode form are different callers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from conduit.security.allowlist import Allowlist

CallerKind = Literal["master", "local", "principal"]
RESERVED_CALLER_IDS: Final = frozenset({"master", "local"})
"""The ids of the master token's caller and the stdio caller: no principal may have them, in any case."""
OAUTH_CALLER_PREFIX: Final = "oauth:"
"""An OAuth caller's id is this and its principal claim (``oauth:u-123``): no API-key principal can name
itself into it, since a principal's id has no colon."""
EVERYTHING: Final = Allowlist.parse(["*"])
MAX_CLAIM_CHARS: Final = 256
"""The longest principal claim an OAuth caller's id is made of."""


@dataclass(frozen=True)
class Caller:
    """Who a request acts as."""

    id: str
    """The caller's one key: a principal's id, ``oauth:<claim>``, or ``master`` / ``local`` (stdio) for the operator."""
    kind: CallerKind
    allowlist: Allowlist | None = None
    """What it may see and call at most (None: anything the request's allowlist covers)."""
    limits: Mapping[str, int] = field(default_factory=dict)
    """Ceilings below the server's resource limits, by wire name (``timeoutMs``...)."""
    rate_limit: str | None = None
    """Its own rate limit (None: the server's, keyed by client address)."""
    tool_call_rate_limit: str | None = None
    """Its own limit on its programs' tool calls per upstream (None: the server's)."""
    max_concurrent: int | None = None
    policy_name: str | None = None
    """For OAuth callers: which policy matched (a scope or claim), for audit records."""
    subject_token: str | None = field(default=None, repr=False, compare=False)
    """For OAuth callers: the access token the request carried, exchanged (never forwarded) for upstreams whose
    credentials are ``tokenExchange``; None for API keys, the master token and the local caller."""

    @property
    def is_principal(self) -> bool:
        return self.kind == "principal"

    @property
    def may_administer(self) -> bool:
        return self.kind == "master"

    @property
    def reach(self) -> Allowlist:
        """Everything this caller may see and call, whatever a request asks for."""
        return self.allowlist if self.allowlist is not None else EVERYTHING

    def narrow(self, requested: Allowlist) -> Allowlist:
        """A request's allowlist within this caller's."""
        return requested.narrowed(self.allowlist)


MASTER: Final = Caller("master", "master")
LOCAL: Final = Caller("local", "local")


def oauth_id(claim: object) -> str | None:
    """The id of the OAuth caller whose principal claim is ``claim``; None when the claim cannot name one
    (not a string, empty, longer than :data:`MAX_CLAIM_CHARS`, or holding control characters).

    >>> oauth_id("master")
    'oauth:master'
    >>> oauth_id("Alice") == oauth_id("alice")
    False
    >>> oauth_id("line\\nbreak") is None
    True
    """
    if not isinstance(claim, str) or not claim or len(claim) > MAX_CLAIM_CHARS or not claim.isprintable():
        return None
    return OAUTH_CALLER_PREFIX + claim
