"""Turning a client's TypeScript/JavaScript program into the module the harness imports.

Programs may use top-level ``await`` and a top-level ``return`` (its value becomes
``result``), which a plain ES module forbids. So the body runs inside an async function
that is the module's default export. Static ``import`` declarations cannot live inside a
function: they are lifted to module scope, where Deno still checks each one against the
sandbox's (empty) permissions. Lifting keeps line numbers: every program line stays on
the line it was written on, so error positions point at the client's own code.
"""

from __future__ import annotations

import re
from typing import Final

_STATIC_IMPORT = re.compile(
    r"""^[ \t]*import(?![ \t]*\()(?:[\s\w{},*$]*?\bfrom[ \t]*)?[ \t]*(["'])[^"'\n]*\1[^;\n]*;?""",
    re.MULTILINE,
)
_OPEN: Final = "export default (async () => {"
_CLOSE: Final = "\n})();\n"


def wrap_program(code: str) -> str:
    """The module source for ``code``: lifted imports, then the body in an async default export.

    >>> print(wrap_program('import a from "./x.ts";\\nreturn a;'))
    import a from "./x.ts"; export default (async () => {
    return a;
    })();
    <BLANKLINE>
    """
    lifted: list[str] = []

    def lift(match: re.Match[str]) -> str:
        statement = match.group(0)
        flat = " ".join(statement.split())
        lifted.append(flat if flat.endswith(";") else flat + ";")
        return "\n" * statement.count("\n")

    body = _STATIC_IMPORT.sub(lift, code)
    prefix = " ".join([*lifted, _OPEN])
    return f"{prefix}{body}{_CLOSE}"
