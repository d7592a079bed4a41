"""Per-execution session tokens and who may do what on the bridge.

A session token is minted when an execution starts, bound to that execution's allowlist and its
budget of tool calls (``maxToolCalls``), and revoked the moment the execution ends. Tokens are stored
only as SHA-256 digests, so a lookup never compares secrets byte by byte; the master token is checked
in constant time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from conduit.config.schema import Limits
from conduit.core.approvals import Asker
from conduit.errors import FORBIDDEN, AuthError, ToolCallLimitError
from conduit.privacy.tokens import Tally
from conduit.sandbox.protocol import SESSION_METHODS
from conduit.security.allowlist import Allowlist
from conduit.security.callers import EVERYTHING, MASTER, Caller
from conduit.security.tokens import mint_token, tokens_equal


@dataclass
class Session:
    """Who a bridge request acts as, with everything its calls need: one execution's program while it runs
    (its token, allowlist, caller, asker and budget of tool calls), or the master token (no execution)."""

    caller: Caller
    """The caller whose execution it is (its credentials, its audit records); the master's for the master token."""
    allowlist: Allowlist
    execution_id: str | None = None
    """The execution (None: the master token, acting for no execution)."""
    asker: Asker | None = None
    """Who asks the execution's client's person to approve a call (None: nobody can be asked)."""
    max_tool_calls: int | None = None
    """Tool calls the program may make (None: no budget)."""
    token: str = field(default="", repr=False)
    tool_calls: int = 0
    skills: tuple[str, ...] = ()
    """The skills this program runs inside, outermost first (its own name last; empty: not a skill's run)."""
    deadline: float | None = None
    """When the program's run is killed (``time.monotonic()``); a skill it calls gets the time left."""
    emit: Callable[[str], None] | None = field(default=None, repr=False)
    """Adds text to the program's run's stderr (a skill's output lines, prefixed with its name)."""
    limits: Limits | None = None
    """The limits the program's run has (a skill it calls runs within them)."""
    parent: Session | None = field(default=None, repr=False)
    """A skill's run: the session of the program that called it, whose budget of tool calls it spends."""
    tally: Tally | None = field(default=None, repr=False)
    """With ``privacy`` on: what the program's calls restored, for its execution's audit record."""

    @classmethod
    def of(cls, caller: Caller, asker: Asker | None = None) -> Session:
        """A caller's own calls (proxied over MCP), not a program's: its whole reach, no budget."""
        return cls(caller, caller.reach, asker=asker)

    @property
    def is_master(self) -> bool:
        """The master token's (no program's, no other caller's)."""
        return self.execution_id is None and self.caller is MASTER

    @property
    def is_program(self) -> bool:
        """A program's, with its session token: its calls spend its budget and its caller's rate."""
        return bool(self.token)

    def spend_tool_call(self) -> None:
        """Count one tool call of the program's.

        Raises:
            ToolCallLimitError: the budget is spent (this call is not counted: it does not happen).
        """
        if self.parent is not None:
            self.parent.spend_tool_call()  # a skill spends its caller's budget: nesting never multiplies it
            return
        if self.max_tool_calls is None:
            return
        if self.tool_calls >= self.max_tool_calls:
            raise ToolCallLimitError(
                f"this run has made its {self.max_tool_calls} tool calls (maxToolCalls); this one was not made"
            )
        self.tool_calls += 1


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class SessionRegistry:
    """Live session tokens, and authentication of bridge requests."""

    def __init__(self, master_token: str) -> None:
        if not master_token:
            raise ValueError("the master token must not be empty")
        self._master = master_token
        self._sessions: dict[bytes, Session] = {}
        self._master_session = Session(MASTER, EVERYTHING)

    @contextmanager
    def session(
        self,
        execution_id: str,
        allowlist: Allowlist,
        caller: Caller = MASTER,
        asker: Asker | None = None,
        max_tool_calls: int | None = None,
        *,
        skills: tuple[str, ...] = (),
        deadline: float | None = None,
        emit: Callable[[str], None] | None = None,
        limits: Limits | None = None,
        parent: Session | None = None,
        tally: Tally | None = None,
    ) -> Iterator[Session]:
        """A session token valid exactly while the ``with`` block runs."""
        session = Session(
            caller,
            allowlist,
            execution_id,
            asker,
            max_tool_calls,
            token=mint_token(),
            skills=skills,
            deadline=deadline,
            emit=emit,
            limits=limits,
            parent=parent,
            tally=tally,
        )
        key = _digest(session.token)
        self._sessions[key] = session
        try:
            yield session
        finally:
            del self._sessions[key]

    @property
    def active(self) -> int:
        return len(self._sessions)

    def authenticate(self, token: object, method: str) -> Session:
        """Who ``token`` is, if it may call ``method`` (principals' API keys are not bridge tokens).

        Raises:
            AuthError: the token is missing, unknown or expired, or may not call ``method``.
        """
        if not isinstance(token, str) or not token:
            raise AuthError("missing bearer token (auth.bearerToken)")
        if tokens_equal(token, self._master):
            return self._master_session
        session = self._sessions.get(_digest(token))
        if session is None:
            raise AuthError("invalid or expired token")
        if method not in SESSION_METHODS:
            raise AuthError(f"a session token may not call {method!r}", code=FORBIDDEN)
        return session
