"""OS confinement of sandbox processes: the walls this machine offers and the launchers that apply them.

- :mod:`~conduit.sandbox.walls.launch`: detection (:class:`Walls`), what each kind of sandbox may
  touch (:class:`Profile`), and the launcher command that puts a process behind the walls;
- :mod:`~conduit.sandbox.walls.cgroups`: per-sandbox memory and pids caps, and the kill at the cap;
- :mod:`~conduit.sandbox.walls.confine`: the Python launcher (``native/conduit_confine.c`` is its twin).

The public word for the set is "isolation" (``isolation.enabled``/``isolation.require`` in the
config, ``isolation`` in ``/health``, ``conduit doctor``'s lines); each member is a wall.
"""

from conduit.sandbox.walls.launch import Profile, Wall, Walls, python_profile

__all__ = ["Profile", "Wall", "Walls", "python_profile"]
