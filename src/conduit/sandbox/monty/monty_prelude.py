# Conduit's runtime inside every Monty sandbox, fed before the SDK and the program (never imported on the host),
# after the protocol's method names (conduit.sandbox.protocol.PRELUDE_CONSTANTS) and before the calls every
# Python runtime shares (conduit/sandbox/protocol/capabilities.py).
#
# Monty has no user-defined exception classes, so a failed call raises the host's answer as an
# `Exception` whose message is the bridge's; `_conduit_call` is the host function (an external
# function of the session) that authenticates the call with the execution's token.


class _Missing:
    def __repr__(self):
        return "<not given>"


_MISSING = _Missing()


async def call(method, params):
    answer = await _conduit_call(method, params)  # noqa: F821 (the host function)
    if "error" in answer:
        raise Exception(answer["error"]["message"])
    return answer["result"]
