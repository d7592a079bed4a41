"""What a runtime needs to report a program's outcome is out of the program's reach.

The isolate prelude keeps no handle on ``globalThis`` (the worker holds them), and output it has accepted
is kept in a form no patched prototype can lose. The Deno harness takes its writers, ``exit`` and JSON
before any program runs. The attacks: call every global that is not ECMAScript's own with odd arguments,
and patch the prototypes and functions an outcome passes through; output printed before must come back
whole, with the program's result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from canary_server import AttackServer, attack_server

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

ODD_CALLS = """
console.log("kept-1");
const standard = new Set(Object.getOwnPropertyNames(Object.getPrototypeOf(Object.getPrototypeOf(function () {}))));
const odd = [undefined, null, 0, -1, "", "x".repeat(1000), {}, [], () => {}, Symbol("s"), 1n, NaN];
const called = [];
for (const name of Reflect.ownKeys(globalThis)) {
  let value;
  try { value = globalThis[name]; } catch (_) { continue; }
  if (typeof value !== "function" || String(name).match(/^[A-Z]/)) continue;  // constructors are ECMAScript's
  if (["console", "tools", "discoverMCPTools", "setTimeout", "clearTimeout"].includes(String(name))) continue;
  called.push(String(name));
  for (const a of odd) {
    for (const b of odd) {
      try { value(a, b); } catch (_) {}
      try { value.call(odd, a, b); } catch (_) {}
    }
  }
}
console.log("kept-2");
return {plumbing: Object.getOwnPropertyNames(globalThis).filter((n) => n.startsWith("_")), called: called.length};
"""


@pytest.fixture(scope="module")
async def server(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AttackServer]:
    async with attack_server(tmp_path_factory.mktemp("plumbing")) as running:
        yield running


async def test_calling_every_global_with_odd_arguments_loses_no_output(server: AttackServer) -> None:
    out = await server.attack("isolate", ODD_CALLS)
    assert out["stdout"] == "kept-1\nkept-2\n", out
    assert out["exitCode"] == 0 and out["result"]["called"] > 10
    assert set(out["result"]["plumbing"]) <= {"__timer_manager"}  # mini-racer's own, set to undefined


TAMPER = {
    "isolate": """
console.log("kept-1");
await tools.toolbox.echo({text: "hand the output over once"});
console.error("kept-2");
Object.defineProperty(Object.prototype, "output", {set() {}, get() { return []; }, configurable: true});
Object.defineProperty(Array.prototype, "0", {set() {}, configurable: true});
Object.prototype.toJSON = () => ({});
String.prototype.toJSON = () => "";
Array.prototype.push = () => 0;
Array.prototype.join = () => "";
Array.prototype.map = () => [];
String.prototype.indexOf = () => -1;
String.prototype.replaceAll = () => "";
Function.prototype.call = () => undefined;
Function.prototype.apply = () => undefined;
Promise.prototype.then = function () { return this; };
JSON.stringify = () => "{}";
console.log("kept-3");
return 42;
""",
    "typescript": """
console.log("kept-1");
await tools.toolbox.echo({text: "a tool call between"});
console.error("kept-2");
Deno.exit = () => {};
JSON.stringify = () => "{}";
JSON.parse = () => ({});
TextEncoder.prototype.encode = () => new Uint8Array();
Uint8Array.prototype.subarray = () => new Uint8Array();
Function.prototype.bind = () => () => 0;
Object.prototype.toJSON = () => ({});
console.log("kept-3");
return 42;
""",
}


@pytest.mark.parametrize("runtime", sorted(TAMPER))
async def test_patching_what_an_outcome_passes_through_loses_nothing(server: AttackServer, runtime: str) -> None:
    out = await server.attack(runtime, TAMPER[runtime])
    assert out["stdout"] == "kept-1\nkept-3\n", out
    assert out["stderr"] == "kept-2\n", out
    assert (out["exitCode"], out.get("result")) == (0, 42), out
