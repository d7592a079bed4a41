"""Callers made from the config: a principal's policy, and who the stdio client acts as."""

from __future__ import annotations

from conduit.config.schema import Config, Policy
from conduit.errors import ConfigError
from conduit.security.allowlist import Allowlist
from conduit.security.callers import LOCAL, Caller


def principal(principal_id: str, policy: Policy, policy_name: str | None = None) -> Caller:
    """The caller a principal's policy makes."""
    allowlist = Allowlist.parse(policy.allowed_tools)
    if policy.upstreams is not None:
        allowlist = allowlist.narrowed(Allowlist.parse([f"{upstream}.*" for upstream in policy.upstreams]))
    return Caller(
        principal_id,
        "principal",
        allowlist=allowlist,
        limits=dict(policy.limits),
        rate_limit=policy.rate_limit,
        tool_call_rate_limit=policy.tool_call_rate_limit,
        max_concurrent=policy.max_concurrent,
        policy_name=policy_name,
    )


def local_caller(config: Config, principal_id: str | None) -> Caller:
    """Who the stdio client acts as: the trusted local caller, or the principal named on the command line.

    Raises:
        ConfigError: no principal has that id.
    """
    if principal_id is None:
        return LOCAL
    for entry in config.auth.principals:
        if entry.id == principal_id:
            return principal(entry.id, entry)
    known = ", ".join(entry.id for entry in config.auth.principals) or "none are configured"
    raise ConfigError(f"no principal {principal_id!r} in auth.principals ({known})")
