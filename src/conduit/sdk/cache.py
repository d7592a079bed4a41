"""Generated SDKs, kept: one per language, catalog version and set of tools an execution may call."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Final

from conduit.catalog import ToolEntry

DEFAULT_SIZE: Final = 64


class SdkCache:
    """A bounded LRU of generated SDK sources (an SDK is generated once, then shared by every execution
    with the same tools; the JSON encoding of each for the job line is cached too, see ``job_line``)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._sources: OrderedDict[tuple[Hashable, ...], str] = OrderedDict()

    def get(
        self,
        language: str,
        version: Hashable,
        entries: Sequence[ToolEntry],
        generate: Callable[[Iterable[ToolEntry], Iterable[str]], str],
        unavailable: Iterable[str] = (),
    ) -> str:
        """The SDK ``generate`` makes for ``entries`` and the ``unavailable`` upstreams (catalog ``version``), made
        once."""
        down = tuple(sorted(unavailable))
        key = (language, version, tuple((entry.qualified, entry.revision) for entry in entries), down)
        source = self._sources.get(key)
        if source is None:
            source = generate(entries, down)
            self._sources[key] = source
            if len(self._sources) > self._size:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(key)
        return source
