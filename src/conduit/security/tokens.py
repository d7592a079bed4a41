"""Bearer tokens: minting and constant-time comparison.

>>> token = mint_token()
>>> len(token) >= 43 and tokens_equal(token, token) and not tokens_equal(token, token[:-1] + "x")
True
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final

TOKEN_BYTES: Final = 32
"""256 bits of randomness per token (SPEC asks for at least 128)."""


def mint_token() -> str:
    """A fresh URL-safe random token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def tokens_equal(presented: object, expected: str) -> bool:
    """Whether ``presented`` is exactly ``expected``, in time independent of where they differ.

    Anything that is not a non-empty string (None, numbers, objects from JSON) is never equal.
    """
    if not isinstance(presented, str) or not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))
