"""Per-execution session tokens and who may do what on the bridge.

A session token is minted when an execution starts, bound to that execution's allowlist and its
budget of tool calls (``maxToolCalls``), and revoked the moment the execution ends. Tokens are stored
only as SHA-256 digests, so a lookup never compares secrets byte by byte; the master token is checked
in constant time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from conduit.core.approvals import Asker
from conduit.errors import FORBIDDEN, AuthError, ToolCallLimitError
from conduit.sandbox.protocol import SESSION_METHODS
from conduit.security.allowlist import Allowlist
from conduit.security.callers import MASTER, Caller
from conduit.security.tokens import mint_token, tokens_equal


@dataclass
class Session:
    """One execution's access to the bridge, while it runs."""

    token: str
    execution_id: str
    allowlist: Allowlist
    caller: Caller
    """The caller whose execution it is (its credentials, its audit records)."""
    asker: Asker | None = None
    """Who asks the execution's client's person to approve a call (None: nobody can be asked)."""
    max_tool_calls: int | None = None
    """Tool calls the program may make (None: no budget)."""
    tool_calls: int = 0

    def spend_tool_call(self) -> None:
        """Count one tool call of the program's.

        Raises:
            ToolCallLimitError: the budget is spent (this call is not counted: it does not happen).
        """
        if self.max_tool_calls is not None and self.tool_calls >= self.max_tool_calls:
            raise ToolCallLimitError(
                f"this run has made its {self.max_tool_calls} tool calls (maxToolCalls); this one was not made"
            )
        self.tool_calls += 1


@dataclass(frozen=True)
class BridgeCaller:
    """Who a bridge request acts as: the master token, or an execution's session."""

    is_master: bool
    allowlist: Allowlist
    session: Session | None = None

    @property
    def caller(self) -> Caller:
        return self.session.caller if self.session is not None else MASTER

    @property
    def execution_id(self) -> str | None:
        return self.session.execution_id if self.session is not None else None

    @property
    def asker(self) -> Asker | None:
        return self.session.asker if self.session is not None else None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class SessionRegistry:
    """Live session tokens, and authentication of bridge requests."""

    def __init__(self, master_token: str) -> None:
        if not master_token:
            raise ValueError("the master token must not be empty")
        self._master = master_token
        self._sessions: dict[bytes, Session] = {}
        self._everything = Allowlist.parse(["*"])

    @contextmanager
    def session(
        self,
        execution_id: str,
        allowlist: Allowlist,
        caller: Caller = MASTER,
        asker: Asker | None = None,
        max_tool_calls: int | None = None,
    ) -> Iterator[Session]:
        """A session token valid exactly while the ``with`` block runs."""
        session = Session(mint_token(), execution_id, allowlist, caller, asker, max_tool_calls)
        key = _digest(session.token)
        self._sessions[key] = session
        try:
            yield session
        finally:
            del self._sessions[key]

    @property
    def active(self) -> int:
        return len(self._sessions)

    def authenticate(self, token: object, method: str) -> BridgeCaller:
        """Who ``token`` is, if it may call ``method`` (principals' API keys are not bridge tokens).

        Raises:
            AuthError: the token is missing, unknown or expired, or may not call ``method``.
        """
        if not isinstance(token, str) or not token:
            raise AuthError("missing bearer token (auth.bearerToken)")
        if tokens_equal(token, self._master):
            return BridgeCaller(is_master=True, allowlist=self._everything)
        session = self._sessions.get(_digest(token))
        if session is None:
            raise AuthError("invalid or expired token")
        if method not in SESSION_METHODS:
            raise AuthError(f"a session token may not call {method!r}", code=FORBIDDEN)
        return BridgeCaller(is_master=False, allowlist=session.allowlist, session=session)
