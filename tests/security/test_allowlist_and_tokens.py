"""Allowlist patterns and token checks."""

from __future__ import annotations

import pytest

from conduit.core.sessions import SessionRegistry
from conduit.errors import FORBIDDEN, UNAUTHORIZED, AuthError
from conduit.security.allowlist import Allowlist, AllowlistError
from conduit.security.tokens import mint_token, tokens_equal


@pytest.mark.parametrize(
    ("patterns", "namespace", "tool", "allowed"),
    [
        (["*"], "any", "thing", True),
        (["github.*"], "github", "create_issue", True),
        (["github.*"], "gitlab", "create_issue", False),
        (["github__*"], "github", "x", True),
        (["github.create_issue"], "github", "create_issue", True),
        (["github.create_issue"], "github", "delete_repo", False),
        (["github__create_issue"], "github", "create_issue", True),
        (["create_issue"], "github", "create_issue", True),
        (["create_issue"], "github", "create_issues", False),
        ([], "github", "create_issue", False),
        (["github.*"], "github2", "x", False),
    ],
)
def test_patterns(patterns: list[str], namespace: str, tool: str, allowed: bool) -> None:
    assert Allowlist.parse(patterns).permits(namespace, tool) is allowed


@pytest.mark.parametrize("bad", ["git*", "", "*.tool", "ns.*x", "a b", "ns.", 5])
def test_unsupported_patterns_are_refused(bad: object) -> None:
    with pytest.raises(AllowlistError):
        Allowlist.parse([bad])  # type: ignore[list-item]


def test_minted_tokens_are_long_and_distinct() -> None:
    tokens = {mint_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(token) >= 43 for token in tokens)


@pytest.mark.parametrize("presented", [None, "", 123, b"token-value-0123456789", "token-value-012345678"])
def test_tokens_equal_rejects_everything_but_the_exact_string(presented: object) -> None:
    assert tokens_equal("token-value-0123456789", "token-value-0123456789")
    assert not tokens_equal(presented, "token-value-0123456789")


def test_session_registry_scopes_and_revokes() -> None:
    registry = SessionRegistry("master-token-0123456789")
    assert registry.authenticate("master-token-0123456789", "mcp_execute_typescript").is_master
    with registry.session("e1", Allowlist.parse(["a.*"])) as session:
        principal = registry.authenticate(session.token, "mcp_call_tool")
        assert not principal.is_master and principal.execution_id == "e1"
        with pytest.raises(AuthError) as caught:
            registry.authenticate(session.token, "mcp_execute_typescript")
        assert caught.value.code == FORBIDDEN
        assert registry.active == 1
    assert registry.active == 0
    with pytest.raises(AuthError) as caught:
        registry.authenticate(session.token, "mcp_call_tool")
    assert caught.value.code == UNAUTHORIZED
    with pytest.raises(ValueError):
        SessionRegistry("")
