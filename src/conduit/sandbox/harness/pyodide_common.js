// What the Pyodide snapshot maker and the Python sandbox harness must agree on.

/** The interpreter's environment (the same in the snapshot and in every sandbox booted from it). */
export const PYODIDE_ENV = { HOME: "/home/pyodide" };

/** Modules imported before the snapshot is taken: the prelude's own, and those programs use most. */
export const SNAPSHOT_IMPORTS = [
  "asyncio", "builtins", "collections", "dataclasses", "datetime", "functools", "itertools", "json",
  "linecache", "math", "re", "sys", "traceback", "types", "typing", "pyodide.code",
];
