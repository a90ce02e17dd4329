"""The structure of the reactive graph: its cells, who defines each name, and the edges.

Everything here keeps the edges consistent and answers questions about them; deciding
what runs when (states, scheduling, the events of the workspace) is ``graph.Graph``'s, which
builds on this class. The invariants of the edges are in the docstring of ``graph``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable, Iterator, Mapping

from sperse._graph.model import Action, Cancel, CellId, CellStatus, CellView, Drop, Mode, RunId
from sperse.errors import CycleError

__all__ = ["Node", "Structure"]


_NO_NAMES: frozenset[str] = frozenset()
_NO_CELLS: frozenset[CellId] = frozenset()


class Node:
    """The mutable state of one cell, held only by the graph (front ends get ``CellView``).

    A workspace keeps one per statement for as long as the statement defines something, so
    a node holds as few containers as it can (each one the garbage collector traverses
    again and again): until they first change, ``owned`` is ``defs`` itself and
    ``fixed_children`` one empty set shared by all; the refs are the keys of ``parents``.
    """

    __slots__ = (
        "defs",
        "effect",
        "fixed_children",
        "held",
        "id",
        "label",
        "live",
        "owned",
        "parents",
        "run_id",
        "scan",
        "status",
    )

    def __init__(
        self, cell_id: CellId, defs: frozenset[str], parents: dict[str, CellId | None], label: str
    ):
        self.id = cell_id
        self.defs = defs
        self.label = label
        # The names it still defines (not lost to newer definitions).
        self.owned: set[str] | frozenset[str] = defs
        # Each ref -> the cell it reads it from (None: nobody defines it).
        self.parents = parents
        # The cells that read a name from it whatever defines the name now (fixed edges).
        self.fixed_children: set[CellId] | frozenset[CellId] = _NO_CELLS
        self.status = CellStatus.PENDING
        self.effect = False  # changes an object it reads (rule 9)
        self.held = False  # an effect cell not run again after its inputs changed
        # Names whose new definitions this cell takes in place, without running again (a
        # service it started swaps the new function into its running operator).
        self.live = _NO_NAMES
        self.run_id = RunId(0)
        # How many of the leading parents (in ``parents`` order) are known DONE
        # while this cell is PENDING: makes a wide fan-in linear, not quadratic.
        self.scan = 0

    @property
    def refs(self) -> frozenset[str]:
        return frozenset(self.parents)

    def lose(self, name: str) -> None:
        """It no longer defines ``name`` (a newer definition took it)."""
        owned = self.owned
        if name in owned:
            if isinstance(owned, frozenset):
                owned = self.owned = set(owned)
            owned.discard(name)

    def add_fixed(self, child: CellId) -> None:
        fixed = self.fixed_children
        if isinstance(fixed, frozenset):
            self.fixed_children = {child}
        else:
            fixed.add(child)

    def discard_fixed(self, child: CellId) -> None:
        fixed = self.fixed_children
        if isinstance(fixed, set):
            fixed.discard(child)


class Structure:
    """Cells, names and the edges between them, with the read-only queries (``GraphView``)."""

    def __init__(self, mode: Mode = Mode.AUTO) -> None:
        self._cells: dict[CellId, Node] = {}
        self._definer: dict[str, CellId] = {}
        # Cells that read a name from whoever defines it now (including nobody).
        self._followers: dict[str, set[CellId]] = {}
        self._next_cell = 1
        self._next_run = 1
        self.mode = mode

    # ---- queries -------------------------------------------------------------

    def __contains__(self, cell: CellId) -> bool:
        return cell in self._cells

    def __len__(self) -> int:
        return len(self._cells)

    def cells(self) -> Iterator[CellId]:
        return iter(self._cells)

    def definer(self, name: str) -> CellId | None:
        return self._definer.get(name)

    def names(self) -> Iterator[str]:
        return iter(self._definer)

    def status(self, cell: CellId) -> CellStatus:
        return self._cells[cell].status

    def run_id(self, cell: CellId) -> RunId:
        return self._cells[cell].run_id

    def view(self, cell: CellId) -> CellView:
        c = self._cells[cell]
        return CellView(
            c.id, c.label, c.defs, c.refs, frozenset(c.owned), c.status, dict(c.parents)
        )

    def parents(self, cell: CellId) -> Mapping[str, CellId | None]:
        return self._cells[cell].parents

    def children(self, cell: CellId) -> set[CellId]:
        c = self._cells[cell]
        out = set(c.fixed_children)
        followers = self._followers
        for name in c.owned:
            readers = followers.get(name)
            if readers:
                out.update(readers)
        out.discard(cell)
        return out

    def failed_ancestor(self, cell: CellId) -> CellId | None:
        """The nearest FAILED cell upstream of a BLOCKED (or FAILED) ``cell``."""
        seen = {cell}
        todo = deque([cell])
        while todo:
            c = self._cells[todo.popleft()]
            if c.status is CellStatus.FAILED:
                return c.id
            for parent in c.parents.values():
                if parent is not None and parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return None

    def upstream(self, cell: CellId) -> list[CellId]:
        """Every ancestor of ``cell``, nearest first."""
        return self._walk(cell, up=True)

    def downstream(self, cell: CellId) -> list[CellId]:
        """Every descendant of ``cell``, nearest first."""
        return self._walk(cell, up=False)

    def is_held(self, cell: CellId) -> bool:
        """Whether ``cell`` is an effect cell held by rule 9."""
        return self._cells[cell].held

    def held(self) -> list[CellId]:
        """The effect cells held by rule 9, in the order they were entered."""
        return [c.id for c in self._cells.values() if c.held]

    # ---- keeping the edges -------------------------------------------------

    def _walk(self, start: CellId, *, up: bool) -> list[CellId]:
        seen = {start}
        order: list[CellId] = []
        todo = deque([start])
        while todo:
            cell = todo.popleft()
            nxt: Iterable[CellId | None] = (
                self._cells[cell].parents.values() if up else self.children(cell)
            )
            for other in nxt:
                if other is not None and other not in seen:
                    seen.add(other)
                    order.append(other)
                    todo.append(other)
        return order

    def _movers(self, defs: frozenset[str], replaces: Container[CellId]) -> dict[str, set[CellId]]:
        """The cells that will read each of ``defs`` from a new cell: those that read it from
        its current definer (all of them but in notebook mode, where only if that definer is
        replaced), and, in notebook mode, those that read it from a replaced cell."""
        movers: dict[str, set[CellId]] = {}
        notebook = self.mode is Mode.NOTEBOOK
        if not notebook:  # the common case: whoever reads a name follows its newest definition
            for name in defs:
                followers = self._followers.get(name)
                if followers:
                    movers[name] = set(followers)
            return movers
        for name in defs:
            found: set[CellId] = set()
            definer = self._definer.get(name)
            if not notebook or (definer is not None and definer in replaces):
                found.update(self._followers.get(name, ()))
            if notebook and replaces:
                for cell in self._cells.values():
                    parent = cell.parents.get(name)
                    if parent is not None and parent != definer and parent in replaces:
                        found.add(cell.id)
            if found:
                movers[name] = found
        return movers

    def _move(self, reader: CellId, name: str, new: CellId, *, fixed: bool = False) -> None:
        """``reader`` reads ``name`` from ``new`` from now on: a fixed edge if it also defines
        the name or ``fixed`` (``new`` will not be the name's definer), else a follower."""
        r = self._cells[reader]
        old = r.parents.get(name)
        r.parents[name] = new
        if old is not None and old in self._cells and old not in r.parents.values():
            self._cells[old].discard_fixed(reader)
        followers = self._followers.get(name)
        if fixed or name in r.defs:
            self._cells[new].add_fixed(reader)
            if followers is not None:
                followers.discard(reader)
        else:
            self._followers.setdefault(name, set()).add(reader)

    def _check_cycle(
        self, movers: Mapping[str, set[CellId]], parents: Mapping[str, CellId | None], label: str
    ) -> None:
        # Cells that will read the new definitions: a cycle exists iff one of
        # them is also upstream of the new cell.
        readers: dict[CellId, str] = {}
        for name, cells in movers.items():
            for reader in cells:
                readers.setdefault(reader, name)
        if not readers:
            return
        came_from: dict[CellId, CellId | None] = {}
        todo: deque[CellId] = deque()
        for parent in parents.values():
            if parent is not None and parent not in came_from:
                came_from[parent] = None
                todo.append(parent)
        while todo:
            cell = todo.popleft()
            if cell in readers:
                path = [cell]
                prev = came_from[cell]
                while prev is not None:
                    path.append(prev)
                    prev = came_from[prev]
                chain = " -> ".join(f"[{c}] {self._cells[c].label}" for c in path)
                raise CycleError(
                    f"`{label}` would create a cycle: it reads what {chain} computes, "
                    f"and [{cell}] reads `{readers[cell]}`, which this statement defines. "
                    f"Rename one of the names, or merge the statements into one."
                )
            for parent in self._cells[cell].parents.values():
                if parent is not None and parent not in came_from:
                    came_from[parent] = cell
                    todo.append(parent)

    def _drop_orphans(self, candidates: list[CellId], actions: list[Action]) -> None:
        todo = deque(candidates)
        while todo:
            cell_id = todo.popleft()
            c = self._cells.get(cell_id)
            if c is None or c.owned or not c.defs or self.children(cell_id):
                continue
            todo.extend(self._remove(cell_id, actions))

    def _remove(self, cell_id: CellId, actions: list[Action]) -> list[CellId]:
        """Take ``cell_id`` out of the graph; returns the parents it held by a fixed edge
        (they may be orphans now)."""
        c = self._cells.pop(cell_id)
        if c.status is CellStatus.RUNNING:
            actions.append(Cancel(cell_id, c.run_id))
        actions.append(Drop(cell_id))
        parents: list[CellId] = []
        for name, parent in c.parents.items():
            if parent is not None and parent in self._cells:
                p = self._cells[parent]
                if cell_id in p.fixed_children:
                    p.discard_fixed(cell_id)
                    parents.append(parent)
            followers = self._followers.get(name)
            if followers is not None:
                followers.discard(cell_id)
                if not followers:
                    del self._followers[name]
        return parents
