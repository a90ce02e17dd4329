"""``GraphView``: the read-only side of the graph, for whoever only looks at it.

Displays (the workspace's ``graph()`` text, the REPL's ``%graph`` and the IPython extension,
which reach the graph through the workspace) and tests type what they read against this
Protocol rather than against ``Graph``, so nothing that only describes the graph can change
it. ``Graph`` satisfies it (a test checks).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from sperse._graph.model import CellId, CellStatus, CellView, Mode, RunId

__all__ = ["GraphView"]


class GraphView(Protocol):
    """Queries over cells, names and edges; none of them changes the graph."""

    @property
    def mode(self) -> Mode: ...

    def __contains__(self, cell: CellId) -> bool: ...

    def __len__(self) -> int: ...

    def cells(self) -> Iterator[CellId]:
        """Every cell, in the order they were entered."""
        ...

    def definer(self, name: str) -> CellId | None:
        """The cell that defines ``name`` now (the newest definition), or None."""
        ...

    def names(self) -> Iterator[str]: ...

    def status(self, cell: CellId) -> CellStatus: ...

    def run_id(self, cell: CellId) -> RunId: ...

    def view(self, cell: CellId) -> CellView:
        """A snapshot of ``cell``."""
        ...

    def parents(self, cell: CellId) -> Mapping[str, CellId | None]:
        """Each name ``cell`` reads, with the cell it reads it from (None: nobody)."""
        ...

    def children(self, cell: CellId) -> set[CellId]:
        """The cells that read a name from ``cell``."""
        ...

    def failed_ancestor(self, cell: CellId) -> CellId | None: ...

    def upstream(self, cell: CellId) -> list[CellId]: ...

    def downstream(self, cell: CellId) -> list[CellId]: ...

    def is_held(self, cell: CellId) -> bool: ...

    def held(self) -> list[CellId]: ...
