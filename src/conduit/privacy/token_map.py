"""Where tokens and the values they stand for are kept: per principal, for a time, within a bound.

A token is ``[<KIND>_<n>]``, numbered per principal and per kind: ``[EMAIL_7]`` is principal A's seventh
address and means nothing to principal B (B's own ``[EMAIL_7]``, if it has one, is another of B's values).
The same value keeps its token while it is seen within the TTL; a value not seen for the TTL is forgotten,
and past ``privacy.maxValues`` a principal's oldest values are. A forgotten token restores nothing.

:class:`MemoryTokenMap` keeps the map in this process (one server). :class:`RedisTokenMap` keeps it in the
cluster's Redis so that any replica restores any token: a value is stored only sealed with ``cluster.key``
and found by a keyed hash of it, so Redis never holds one in the clear; issuing is one Lua script (atomic:
two replicas tokenising the same new value get the same token). While Redis is away, ``cluster.onStoreError``
decides: ``local`` tokenises in this replica's memory (numbered far above the shared counters, so the two can
never name different values alike; such tokens restore on this replica only), ``refuse`` fails the work.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography.fernet import InvalidToken

from conduit.cluster.store import SharedStore

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

BOUND_LOG_S: Final = 60.0
"""A principal whose map is full is logged at most this often."""
LOCAL_NUMBERS: Final = 10**9
"""Tokens issued in a replica's memory while Redis is away start at a random number at least this high."""


def token_text(label: str, number: int) -> str:
    """``[EMAIL_7]``."""
    return f"[{label}_{number}]"


class TokenMap(Protocol):
    """The map of one server or cluster."""

    async def tokens(self, principal: str, values: Sequence[tuple[str, str]]) -> list[str]:
        """The token of each ``(label, value)`` for ``principal``: its existing one (seen again: kept for
        another TTL) or a new one."""
        ...

    async def values(self, principal: str, tokens: Sequence[str]) -> list[str | None]:
        """The value each token of ``principal``'s stands for (None: never issued to it, forgotten, expired)."""
        ...


@dataclass
class _Map:
    """One principal's tokens, oldest use first."""

    by_value: OrderedDict[tuple[str, str], tuple[str, float]] = field(default_factory=OrderedDict)
    """(label, value) -> (token, expires)."""
    by_token: dict[str, tuple[str, str]] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)
    """The last number issued per label."""


class MemoryTokenMap:
    """The map in this process's memory."""

    def __init__(self, ttl_s: float, max_values: int, *, clock: Clock = time.monotonic, first: int = 1) -> None:
        self.ttl_s = ttl_s
        self.max_values = max_values
        self._clock = clock
        self._first = first
        self._maps: dict[str, _Map] = {}
        self._bound_logged: dict[str, float] = {}

    async def tokens(self, principal: str, values: Sequence[tuple[str, str]]) -> list[str]:
        return self.tokens_now(principal, values)

    def tokens_now(self, principal: str, values: Sequence[tuple[str, str]]) -> list[str]:
        now = self._clock()
        entries = self._maps.setdefault(principal, _Map())
        self._expire(entries, now)
        expires = now + self.ttl_s
        answer = []
        for key in values:
            known = entries.by_value.get(key)
            if known is not None:
                token = known[0]
                entries.by_value.move_to_end(key)
            else:
                label = key[0]
                number = entries.numbers.get(label, self._first - 1) + 1
                entries.numbers[label] = number
                token = token_text(label, number)
                entries.by_token[token] = key
            entries.by_value[key] = (token, expires)
            answer.append(token)
        evicted = 0
        while len(entries.by_value) > self.max_values:
            _, (token, _) = entries.by_value.popitem(last=False)
            del entries.by_token[token]
            evicted += 1
        if evicted:
            self.bound_reached(principal, evicted)
        return answer

    async def values(self, principal: str, tokens: Sequence[str]) -> list[str | None]:
        return self.values_now(principal, tokens)

    def values_now(self, principal: str, tokens: Sequence[str]) -> list[str | None]:
        entries = self._maps.get(principal)
        if entries is None:
            return [None] * len(tokens)
        self._expire(entries, self._clock())
        found = [entries.by_token.get(token) for token in tokens]
        return [key[1] if key is not None else None for key in found]

    def _expire(self, entries: _Map, now: float) -> None:
        while entries.by_value:
            key, (token, expires) = next(iter(entries.by_value.items()))
            if expires > now:
                return
            entries.by_value.popitem(last=False)
            del entries.by_token[token]

    def bound_reached(self, principal: str, evicted: int) -> None:
        now = self._clock()
        if now - self._bound_logged.get(principal, -BOUND_LOG_S) >= BOUND_LOG_S:
            self._bound_logged[principal] = now
            logger.warning(
                "principal %r has privacy.maxValues (%d) tokenised values: its %d oldest were forgotten "
                "(their tokens restore nothing now)",
                principal,
                self.max_values,
                evicted,
            )


# Issues tokens for values not in the map, refreshes the rest, evicts past the bound: one atomic step. The
# order set ranks values by last use (a sequence number: values of one batch keep their order); a value that
# expired by itself leaves its entry there until it is the oldest and popped.
# ARGV: base, ttl ms, max values, then (label, value hash, sealed value) per value.
# Returns the tokens, then how many remembered values were evicted.
_ISSUE: Final = """
local base, ttl, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local order, numbers = base .. 'order', base .. 'numbers'
local out = {}
for i = 4, #ARGV, 3 do
  local label, digest, sealed = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local vkey = base .. 'v:' .. digest
  local token = redis.call('GET', vkey)
  if not token then
    token = '[' .. label .. '_' .. redis.call('HINCRBY', numbers, label, 1) .. ']'
    redis.call('SET', base .. 't:' .. token, sealed, 'PX', ttl)
  else
    redis.call('PEXPIRE', base .. 't:' .. token, ttl)
  end
  redis.call('SET', vkey, token, 'PX', ttl)
  redis.call('ZADD', order, redis.call('HINCRBY', numbers, '#used', 1), digest)
  out[#out + 1] = token
end
local evicted = 0
local over = redis.call('ZCARD', order) - max
if over > 0 then
  local oldest = redis.call('ZPOPMIN', order, over)
  for j = 1, #oldest, 2 do
    local vkey = base .. 'v:' .. oldest[j]
    local token = redis.call('GET', vkey)
    if token then
      redis.call('DEL', base .. 't:' .. token, vkey)
      evicted = evicted + 1
    end
  end
end
redis.call('PEXPIRE', order, ttl)
redis.call('PEXPIRE', numbers, ttl)
out[#out + 1] = evicted
return out
"""

# The tokens of values already in the map (false for the others), refreshed: one round trip for the common case.
_TOUCH: Final = """
local base, ttl = ARGV[1], tonumber(ARGV[2])
local numbers = base .. 'numbers'
local out = {}
for i = 3, #ARGV do
  local vkey = base .. 'v:' .. ARGV[i]
  local token = redis.call('GET', vkey)
  if token then
    redis.call('PEXPIRE', vkey, ttl)
    redis.call('PEXPIRE', base .. 't:' .. token, ttl)
    redis.call('ZADD', base .. 'order', redis.call('HINCRBY', numbers, '#used', 1), ARGV[i])
    out[#out + 1] = token
  else
    out[#out + 1] = false
  end
end
if #out > 0 then
  redis.call('PEXPIRE', numbers, ttl)
  redis.call('PEXPIRE', base .. 'order', ttl)
end
return out
"""


class RedisTokenMap:
    """The map in the cluster's Redis, sealed; this replica's memory while Redis is away (``local``)."""

    def __init__(self, store: SharedStore, ttl_s: float, max_values: int) -> None:
        self._store = store
        self._ttl_ms = int(ttl_s * 1000)
        self._max_values = max_values
        self._hmac_key = store.derived_key("privacy map")
        self._issue = store.client.register_script(_ISSUE)
        self._touch = store.client.register_script(_TOUCH)
        self.local = MemoryTokenMap(ttl_s, max_values, first=LOCAL_NUMBERS + secrets.randbelow(LOCAL_NUMBERS))
        """While Redis is away (``onStoreError: local``): this replica's own map."""

    def _digest(self, *parts: str) -> str:
        message = "\0".join(parts).encode("utf-8", "surrogatepass")
        return hmac.new(self._hmac_key, message, hashlib.sha256).hexdigest()[:32]

    def _base(self, principal: str) -> str:
        return self._store.key("privacy", self._digest("principal", principal), "")

    async def tokens(self, principal: str, values: Sequence[tuple[str, str]]) -> list[str]:
        if not values:
            return []

        async def shared() -> list[str]:
            return await self._shared_tokens(principal, values)

        async def local() -> list[str]:
            return self.local.tokens_now(principal, values)

        return await self._store.with_fallback(shared, local)

    async def _shared_tokens(self, principal: str, values: Sequence[tuple[str, str]]) -> list[str]:
        base = self._base(principal)
        digests = [self._digest(label, value) for label, value in values]
        found = await self._touch(args=[base, self._ttl_ms, *digests])
        tokens: list[str | None] = [_text(token) if token else None for token in found]
        missing = [index for index, token in enumerate(tokens) if token is None]
        if missing:
            fernet = self._store.fernet
            args: list[str | int] = [base, self._ttl_ms, self._max_values]
            for index in missing:
                label, value = values[index]
                sealed = fernet.encrypt(value.encode("utf-8", "surrogatepass")).decode("ascii")
                args.extend((label, digests[index], sealed))
            issued = await self._issue(args=args)
            for index, token in zip(missing, issued[:-1], strict=True):
                tokens[index] = _text(token)
            if issued[-1]:
                self.local.bound_reached(principal, int(issued[-1]))
        return [token or "" for token in tokens]

    async def values(self, principal: str, tokens: Sequence[str]) -> list[str | None]:
        if not tokens:
            return []

        async def shared() -> list[str | None]:
            base = self._base(principal)
            sealed = await self._store.client.mget([base + "t:" + token for token in tokens])
            answer = [self._open(item) for item in sealed]
            local = self.local.values_now(principal, tokens)  # issued here while Redis was away
            return [value if value is not None else mine for value, mine in zip(answer, local, strict=True)]

        async def local() -> list[str | None]:
            return self.local.values_now(principal, tokens)

        return await self._store.with_fallback(shared, local)

    def _open(self, sealed: bytes | str | None) -> str | None:
        if sealed is None:
            return None
        try:
            return self._store.fernet.decrypt(sealed, ttl=None).decode("utf-8", "surrogatepass")
        except InvalidToken:  # sealed with another cluster.key: restores nothing
            return None


def _text(token: bytes | str) -> str:
    return token.decode("utf-8") if isinstance(token, bytes) else token
