// Makes the memory snapshot every Python sandbox boots from (run by Conduit once per Pyodide build).
//
// Loads Pyodide exactly as the sandbox harness does, imports the standard-library modules Conduit's
// prelude and typical programs use, and writes the interpreter's memory to stdout. Booting from it
// skips CPython's start-up and those imports: ~0.2 s instead of ~2 s per sandbox. Nothing of a
// program or of Conduit's bridge is in it (the bridge is registered after the snapshot is restored).
//
// Args: <pyodide dir>.

import { stdout } from "../protocol/common.js";
import { loadPyodideFrom, SNAPSHOT_IMPORTS } from "./pyodide_common.js";

const [pyodideDir] = Deno.args;
const pyodide = await loadPyodideFrom(pyodideDir, { _makeSnapshot: true });
pyodide.runPython(`import ${SNAPSHOT_IMPORTS.join(", ")}`);
stdout(pyodide.makeMemorySnapshot());
