// What the Pyodide snapshot maker and the Python sandbox harness must agree on.

/** The interpreter's environment (the same in the snapshot and in every sandbox booted from it). */
const PYODIDE_ENV = { HOME: "/home/pyodide" };

/** Modules imported before the snapshot is taken: the prelude's own, and those programs use most. */
export const SNAPSHOT_IMPORTS = [
  "asyncio", "builtins", "collections", "dataclasses", "datetime", "functools", "itertools", "json",
  "linecache", "math", "re", "sys", "traceback", "types", "typing", "pyodide.code", "pyodide.ffi",
];

/** Load Pyodide from its package directory, with the shared environment and `options` on top. */
export async function loadPyodideFrom(pyodideDir, options = {}) {
  const indexUrl = new URL(`file://${pyodideDir.endsWith("/") ? pyodideDir : pyodideDir + "/"}`);
  const { loadPyodide } = await import(new URL("pyodide.mjs", indexUrl).href);
  return await loadPyodide({ indexURL: indexUrl.pathname, env: PYODIDE_ENV, ...options });
}
