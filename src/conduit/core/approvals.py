"""Approval of sensitive calls: a call that an ``approvals`` rule covers waits for a person, whichever path
reaches the tool: a program's call, or a client calling the proxied tool directly.

The transport gives the execution (or the direct call's run) an :data:`Asker` when its client can be
asked (MCP elicitation); the gateway asks it, at most the rule's ``timeoutMs``, before the call goes out.
Accept sends the call; a decline, a cancel, no answer in time, a failed request, or a client that
cannot be asked at all throws :class:`~conduit.errors.ApprovalDeclinedError` (-32015) in the
program, and the upstream never sees the call: a rule is never silently skipped. The program's own
time limit keeps running while the person decides. Every request and decision is an audit record.
What the person is shown of the arguments is scrubbed of configured secrets and credential shapes, and with
``privacy`` on its personal values are tokens (or, with ``privacy.approvalForms: values``, the values).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import anyio

from conduit.catalog import ToolEntry
from conduit.config.schema import ApprovalRule
from conduit.errors import ApprovalDeclinedError
from conduit.privacy.tokens import Privacy, Tally
from conduit.security.allowlist import Allowlist
from conduit.security.callers import Caller
from conduit.security.redact import Redactor

AUDIT = logging.getLogger("conduit.audit")
logger = logging.getLogger(__name__)

Answer = Literal["accept", "decline", "cancel"]
SHOWN_CHARS: Final = 4000
"""At most this much of the arguments is shown to the person (the rest is cut, and says so)."""


@dataclass(frozen=True)
class ApprovalRequest:
    """What a person is asked about."""

    tool: str
    """The tool's qualified id."""
    title: str
    """The tool's title or name, for people."""
    arguments: str
    """The call's arguments as JSON, scrubbed."""
    principal: str
    execution_id: str | None
    """The program's execution (None: the client called the tool directly)."""

    @property
    def message(self) -> str:
        who = f"A program running for {self.principal!r}" if self.execution_id else repr(self.principal)
        return f"{who} wants to call {self.tool} ({self.title}) with:\n{self.arguments}\nApprove this call?"


Asker = Callable[[ApprovalRequest], Awaitable[Answer]]
"""Asks the client's person; answers how they responded (raises if the request itself failed)."""


@dataclass(frozen=True)
class _Rule:
    config: ApprovalRule
    tools: Allowlist | None


class Approvals:
    """The configured rules, and the asking."""

    def __init__(self, rules: Sequence[ApprovalRule], redactor: Redactor, privacy: Privacy | None = None) -> None:
        self._rules = [_Rule(rule, Allowlist.parse(rule.tools) if rule.tools is not None else None) for rule in rules]
        self._redactor = redactor
        self._privacy = privacy

    def __bool__(self) -> bool:
        return bool(self._rules)

    def rule_for(self, entry: ToolEntry, caller: Caller) -> ApprovalRule | None:
        """The first rule that covers ``caller`` calling ``entry``, or None."""
        for rule in self._rules:
            if rule.config.principals is not None and caller.id not in rule.config.principals:
                continue
            if rule.tools is not None and rule.tools.permits(entry.upstream, entry.name):
                return rule.config
            if rule.config.annotations is not None and _says(entry, rule.config.annotations):
                return rule.config
        return None

    def shown(self, arguments: object) -> str:
        """``arguments`` as the person sees them: JSON, configured secrets and credential shapes scrubbed."""
        text = self._redactor(json.dumps(arguments, ensure_ascii=False, indent=1, default=str))
        return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "\n… (cut)"

    async def require(
        self, entry: ToolEntry, arguments: object, caller: Caller, ask: Asker | None, execution_id: str | None
    ) -> None:
        """Return when the call may go out; raise when a rule covers it and no person approved it.

        Raises:
            ApprovalDeclinedError: declined, cancelled, not answered in time, or nobody could be asked.
        """
        rule = self.rule_for(entry, caller)
        if rule is None:
            return
        tool = entry.qualified
        title = (entry.listed.title if entry.listed is not None else None) or entry.name
        request = ApprovalRequest(
            tool, title, self.shown(await self._personal(arguments, caller)), caller.id, execution_id
        )
        if ask is not None:
            AUDIT.info(
                "approval requested",
                extra={"principal": caller.id, "execution_id": execution_id, "tool": tool, "decision": "asked"},
            )
        decision, why = await self._ask(ask, request, rule.timeout_ms / 1000)
        AUDIT.info(
            "approval",
            extra={
                "principal": caller.id,
                "execution_id": execution_id,
                "tool": tool,
                "decision": decision,
                "decided_by": caller.id if decision in ("approved", "declined", "cancelled") else None,
            },
        )
        if decision != "approved":
            raise ApprovalDeclinedError(f"the call of {tool!r} was not approved: {why}")

    async def _personal(self, arguments: object, caller: Caller) -> object:
        """What the person sees of personal values (``privacy.approvalForms``): their tokens (the default; the
        arguments' values tokenised), or the values (the caller's tokens in the arguments restored)."""
        privacy = self._privacy
        if privacy is None or not privacy.applies(caller):
            return arguments
        if privacy.config.approval_forms == "values":
            return await privacy.reveal(caller, arguments)
        return await privacy.value(caller, arguments, Tally())

    @staticmethod
    async def _ask(ask: Asker | None, request: ApprovalRequest, timeout_s: float) -> tuple[str, str]:
        if ask is None:
            return "unavailable", "it needs a person's approval, and this client cannot be asked (no elicitation)"
        answer: Answer | None = None
        try:
            with anyio.move_on_after(timeout_s):
                answer = await ask(request)
        except Exception as exc:  # the client went away, or refused the request
            logger.warning("an approval request for %s failed: %s", request.tool, exc)
            return "failed", "the approval request failed"
        if answer is None:
            return "timeout", f"no answer within {timeout_s:g} s"
        if answer == "accept":
            return "approved", ""
        if answer == "cancel":
            return "cancelled", "the person cancelled the approval request"
        return "declined", "the person declined it"


def _says(entry: ToolEntry, wanted: dict[str, bool]) -> bool:
    """Whether the tool's annotations say each of ``wanted`` (one that says nothing says none of them)."""
    notes = entry.listed.annotations if entry.listed is not None else None
    if notes is None:
        return False
    said = notes.model_dump(by_alias=True)  # the hints by their names on the wire, as rules name them
    return all(said.get(key) is value for key, value in wanted.items())
