"""What a typed call answers: the tool's ``structuredContent``, the shape its output schema gives.

The generated SDKs call a tool that publishes an output schema with ``structured: true``: the
program gets the value itself (``(await tools.wx.forecast({...})).days``), and a result the tool
marked ``isError`` becomes a thrown ``ToolError`` carrying the raw result as ``data``. Tools without
an output schema, and ``tools.$raw`` / ``tools.raw``, answer the whole ``CallToolResult``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from conduit.errors import ToolReportedError, UpstreamError

MESSAGE_CHARS: Final = 1000
"""How much of a failed tool's text goes into the error's message (all of it stays in ``data``)."""


def typed_value(name: str, result: Mapping[str, Any]) -> Any:
    """The ``structuredContent`` of ``result`` (a CallToolResult as JSON), the answer of tool ``name``.

    Raises:
        ToolReportedError: the tool answered ``isError``.
        UpstreamError: the tool answered without ``structuredContent``.
    """
    if result.get("isError"):
        text = " ".join(
            str(block.get("text", "")).strip()
            for block in result.get("content") or ()
            if isinstance(block, Mapping) and block.get("type") == "text"
        ).strip()
        if len(text) > MESSAGE_CHARS:
            text = text[:MESSAGE_CHARS] + "…"
        raise ToolReportedError(f"tool {name!r} reported an error: {text or '(no message)'}", dict(result))
    if "structuredContent" not in result:
        raise UpstreamError(
            f"tool {name!r} answered without structuredContent; call it through the raw form for the whole result"
        )
    return result["structuredContent"]
