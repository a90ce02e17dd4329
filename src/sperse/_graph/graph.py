"""The reactive graph: a pure state machine over cells and names.

The graph knows nothing of Python syntax, values, threads or networks. The
workspace feeds it events (a cell was entered, a run finished or failed, the
user asked for stale cells) and carries out the actions it returns (run this
cell, cancel that run, forget this cell).

Invariants (DESIGN.md §2):

- A name means its newest defining cell (``definer``). A cell reads each name
  it does not itself define from the *current* definer ("follower" edges, which
  move when a newer definition is entered); a name it both reads and defines
  (``x += 1``) it reads from the definer that stood when it was entered
  ("fixed" edges, which never move).
- When a cell is about to produce new values, every cell downstream of it is
  invalidated first (``PENDING``, or ``STALE`` in lazy mode) and running ones
  are cancelled; a cell is only run once all its parents are ``DONE``. So a
  cell runs once per change of its inputs and never sees a mix of old and new
  values, whatever order results arrive in.
- Every run has a fresh ``RunId``; an outcome reported for any other run id is
  ignored, so a result computed from stale inputs is never applied.
- A cell that loses its last name to newer definitions and has no dependents
  is dropped, and so, in turn, are the cells only it kept alive.
- Notebook mode (rule 10) binds like Python, not like a spreadsheet: a new
  definition of a name does not move the cells that read it already; they keep
  reading the definition they were entered with (their follower edges become
  fixed). Only the definitions it ``replaces`` (the statements of the same
  notebook cell, executed before) hand their readers over to it. ``retire``
  removes replaced statements that nothing needs any more.
- Re-runs repeat derivations, not effects (rule 9): an *effect* cell (one whose
  statement changes an object it reads: ``x[0] = 99``, ``df.col = v``) runs when
  it is entered or asked for, but when its inputs change it is *held*: ``STALE``
  with everything downstream of it, reported with ``Held``, and run only by
  ``run_stale`` (or ``rerun``), never by switching modes.
- A cell may take new definitions of some names it reads *in place* (``set_live``: a
  service it started swaps a redefined function into its running operator): a new
  definition of such a name neither runs it again nor invalidates what reads it.
- Nothing recurses: every traversal uses an explicit work list, so chains of
  any length and fan-outs of any width work.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Container, Iterable

from sperse._graph.model import (
    Action,
    Blocked,
    Cancel,
    CellId,
    CellStatus,
    CellView,
    Drop,
    Held,
    Mode,
    Run,
    RunId,
)
from sperse._graph.structure import Node, Structure
from sperse._graph.view import GraphView

__all__ = [
    "Action",
    "Blocked",
    "Cancel",
    "CellId",
    "CellStatus",
    "CellView",
    "Drop",
    "Graph",
    "GraphView",
    "Held",
    "Mode",
    "Run",
    "RunId",
]


class Graph(Structure):
    """Cells, names and their states; ``handle``-style methods return actions.

    The structure and its queries are ``Structure``'s; this class adds the events and
    how a change propagates (invalidating, reviving and scheduling cells).
    """

    # ---- events --------------------------------------------------------------

    def add_cell(
        self,
        defs: Iterable[str],
        refs: Iterable[str],
        *,
        label: str = "",
        effect: bool = False,
        replaces: Container[CellId] = (),
    ) -> tuple[CellId, list[Action]]:
        """Enter a new cell; it becomes the definer of ``defs`` and is scheduled.
        ``effect``: its statement changes an object it reads (rule 9: held, not re-run).
        ``replaces``: in notebook mode, the cells this one replaces (the earlier statements of
        its notebook cell): their readers read this one's definitions of the same names.

        Raises ``CycleError`` (leaving the graph unchanged) when the new
        definitions would make a cell depend on itself.
        """
        defs = frozenset(defs)
        definer = self._definer
        parents: dict[str, CellId | None] = {name: definer.get(name) for name in refs}
        movers = self._movers(defs, replaces)
        if movers:
            self._check_cycle(movers, parents, label)

        cell_id = CellId(self._next_cell)
        self._next_cell += 1
        cell = Node(cell_id, defs, parents, label)
        cell.effect = effect
        cells = self._cells
        cells[cell_id] = cell
        all_followers = self._followers
        for name, parent in parents.items():
            if name in defs:
                if parent is not None:
                    cells[parent].add_fixed(cell_id)
            else:
                followers = all_followers.get(name)
                if followers is None:
                    all_followers[name] = {cell_id}
                else:
                    followers.add(cell_id)

        notebook = self.mode is Mode.NOTEBOOK
        losers: list[CellId] = []
        for name in defs:
            old = definer.get(name)
            # A notebook cell executed again, whose name a later notebook cell binds now:
            # that binding stays the current one (it comes later in the notebook).
            keeps = notebook and bool(replaces) and old is not None and old not in replaces
            if movers:
                for reader in movers.get(name, ()):
                    self._move(reader, name, cell_id, fixed=keeps)
            if keeps:
                cell.lose(name)
                continue
            if old is not None:
                cells[old].lose(name)
                losers.append(old)
            definer[name] = cell_id
            followers = all_followers.get(name)
            if followers is None:
                continue
            followers.discard(cell_id)
            if notebook:
                moving = movers.get(name, ())
                for follower in list(followers):  # the rest keep the binding they read
                    if follower in moving:
                        continue
                    followers.discard(follower)
                    if old is not None:
                        cells[old].add_fixed(follower)
            for follower in followers:
                cells[follower].parents[name] = cell_id
            if not followers:
                del all_followers[name]

        actions: list[Action] = []
        if losers:
            self._drop_orphans(losers, actions)
        if movers:  # else nothing reads it yet: there is nothing downstream to invalidate
            self._invalidate([cell_id], actions)
        revived = self._revive_stale_ancestors(cell_id)
        self._schedule([*revived, cell_id] if revived else (cell_id,), actions)
        return cell_id, actions

    def retire(self, cells: Iterable[CellId]) -> list[Action]:
        """Notebook mode: remove the replaced ``cells`` that define nothing any more and that
        nothing reads (an old ``print(x)``, an old ``x[0] = 1``); the others stay, as Python
        keeps the values of names a cell no longer assigns."""
        actions: list[Action] = []
        parents: list[CellId] = []
        for cell_id in cells:
            c = self._cells.get(cell_id)
            if c is None or c.owned or self.children(cell_id):
                continue
            parents.extend(self._remove(cell_id, actions))
        self._drop_orphans(parents, actions)
        return actions

    def set_live(self, cell: CellId, names: Iterable[str]) -> None:
        """``cell`` takes the new definitions of ``names`` (names it reads) in place: a new
        definition of one does not run it again, nor what reads it (a running service
        swaps the new function into its operator). Replaces the names set before."""
        c = self._cells.get(cell)
        if c is not None:
            c.live = frozenset(names) & c.refs

    def finished(self, cell: CellId, run_id: RunId) -> list[Action]:
        """The run ``run_id`` of ``cell`` produced values."""
        c = self._cells.get(cell)
        if c is None or c.run_id != run_id or c.status is not CellStatus.RUNNING:
            return []
        c.status = CellStatus.DONE
        actions: list[Action] = []
        children = self.children(cell)
        if children:
            self._schedule(children, actions)
        return actions

    def failed(self, cell: CellId, run_id: RunId) -> list[Action]:
        """The run ``run_id`` of ``cell`` raised: its dependents are blocked."""
        c = self._cells.get(cell)
        if c is None or c.run_id != run_id or c.status is not CellStatus.RUNNING:
            return []
        c.status = CellStatus.FAILED
        actions: list[Action] = []
        for child in self.downstream(cell):
            d = self._cells[child]
            if d.status is CellStatus.PENDING:
                d.status = CellStatus.BLOCKED
                actions.append(Blocked(child, cell))
        return actions

    def rerun(self, cell: CellId) -> list[Action]:
        """Run ``cell`` again with its current inputs (and everything downstream)."""
        actions: list[Action] = []
        self._invalidate([cell], actions)
        self._schedule([cell], actions)
        return actions

    def run_stale(self, *, held: bool = True) -> list[Action]:
        """Run every stale cell (in dependency order): lazy mode's, and the effect cells
        held by rule 9 with what is downstream of them (unless ``held`` is False)."""
        kept: set[CellId] = set()
        if not held:
            for cell in self.held():
                kept.add(cell)
                kept.update(self.downstream(cell))
        stale = [
            c.id for c in self._cells.values() if c.status is CellStatus.STALE and c.id not in kept
        ]
        for cell in stale:
            self._cells[cell].status = CellStatus.PENDING
            self._cells[cell].held = False
        actions: list[Action] = []
        self._schedule(stale, actions)
        return actions

    def set_mode(self, mode: Mode) -> list[Action]:
        """Switch modes; going back to auto runs whatever went stale in lazy mode (effect
        cells held by rule 9 stay held: only ``run_stale`` applies them)."""
        self.mode = mode
        return self.run_stale(held=False) if mode is Mode.AUTO else []

    # ---- internals -----------------------------------------------------------
    # ---- propagation ---------------------------------------------------------

    def _invalidate(self, roots: list[CellId], actions: list[Action]) -> None:
        """Mark roots PENDING and everything downstream PENDING (or STALE); an effect cell
        downstream is held (STALE, with what is downstream of it)."""
        downstream_status = CellStatus.STALE if self.mode is Mode.LAZY else CellStatus.PENDING
        seen = set(roots)
        todo = deque((cell, CellStatus.PENDING) for cell in roots)
        while todo:
            cell_id, status = todo.popleft()
            c = self._cells[cell_id]
            if c.status is CellStatus.RUNNING:
                actions.append(Cancel(cell_id, c.run_id))
            if cell_id in roots:
                c.held = False  # entered again, or asked for: it runs
            elif c.effect:
                status = CellStatus.STALE
                if not c.held:
                    c.held = True
                    actions.append(Held(cell_id))
            c.status = status
            c.scan = 0
            below = CellStatus.STALE if status is CellStatus.STALE else downstream_status
            for child in self.children(cell_id):
                if self._takes_in_place(child, cell_id):
                    continue
                if child not in seen:
                    seen.add(child)
                    todo.append((child, below))
                elif (
                    below is CellStatus.STALE and self._cells[child].status is not CellStatus.STALE
                ):
                    todo.append((child, below))  # reached first on a path without the hold

    def _takes_in_place(self, child: CellId, parent: CellId) -> bool:
        """Whether every name ``child`` reads from ``parent`` is one it takes in place."""
        c = self._cells[child]
        if not c.live:
            return False
        read = [name for name, p in c.parents.items() if p == parent]
        return bool(read) and all(name in c.live for name in read)

    def _revive_stale_ancestors(self, cell: CellId) -> list[CellId]:
        """Lazy mode: a newly entered cell first brings its stale inputs up to date.

        Walks up through STALE cells only: a cell that is not stale has no
        stale ancestors, because staleness always spreads downstream whole.
        """
        revived: list[CellId] = []
        todo = deque([cell])
        while todo:
            for parent in self._cells[todo.popleft()].parents.values():
                if parent is not None and self._cells[parent].status is CellStatus.STALE:
                    self._cells[parent].status = CellStatus.PENDING
                    self._cells[parent].held = False  # a new cell asks for what it defines
                    revived.append(parent)
                    todo.append(parent)
        revived.reverse()  # farthest ancestors first; _schedule only runs ready ones anyway
        return revived

    def _schedule(self, candidates: Iterable[CellId], actions: list[Action]) -> None:
        """Issue Run for each PENDING candidate whose parents are all DONE."""
        cells = self._cells
        for cell_id in candidates:
            c = cells.get(cell_id)
            if c is None or c.status is not CellStatus.PENDING:
                continue
            blocked_by: CellId | None = None
            ready = True
            scan = c.scan
            parents: Iterable[CellId | None] = c.parents.values()
            for parent in itertools.islice(parents, scan, None) if scan else parents:
                if parent is not None:
                    status = cells[parent].status
                    if status is not CellStatus.DONE:
                        ready = False
                        if status is CellStatus.FAILED or status is CellStatus.BLOCKED:
                            blocked_by = parent
                        break
                scan += 1
            c.scan = scan
            if blocked_by is not None:
                upstream = self.failed_ancestor(blocked_by) or blocked_by
                for cell in [cell_id, *self.downstream(cell_id)]:
                    d = self._cells[cell]
                    if d.status is CellStatus.PENDING:
                        d.status = CellStatus.BLOCKED
                        actions.append(Blocked(cell, upstream))
                continue
            if not ready:
                continue
            c.status = CellStatus.RUNNING
            c.run_id = RunId(self._next_run)
            self._next_run += 1
            actions.append(Run(cell_id, c.run_id, dict(c.parents)))
