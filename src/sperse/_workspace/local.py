"""Local cells: run on the caller's thread, in the workspace's namespace.

A local cell that produces ``Pending`` values (a call of a remote function) stays running
until they settle, so what reads its names waits for them (DESIGN.md §2 rule 3).
"""

from __future__ import annotations

import time
from typing import Any

from sperse._cluster.cluster import unuse, use
from sperse._cluster.pending import Pending
from sperse._graph.graph import Action, CellId, Run, RunId
from sperse._serialize import RemoteValue
from sperse._workspace import live
from sperse._workspace.cells import Cell, CellEvent, Record
from sperse._workspace.core import WorkspaceCore
from sperse.errors import CellError, SperseError

__all__ = ["LocalCells"]

_UNSET = object()


class LocalCells(WorkspaceCore):
    """Running local cells."""

    def _run_local(self, record: Record, run: Run) -> list[Action]:
        ns = self.namespace
        definer = self._graph.definer
        earlier: list[str] = []  # names read from an earlier definition than the current one
        for name, parent in run.inputs.items():
            if parent is not None and definer(name) != parent:  # reads an earlier definition
                earlier.append(name)
                outputs = self._records[parent].outputs
                if name in outputs:
                    ns[name] = outputs[name]
                else:
                    ns.pop(name, None)
            value = ns.get(name)
            if isinstance(value, RemoteValue):  # held on a server: a local cell needs it here
                try:
                    ns[name] = value.fetch()
                except SperseError as exc:
                    return self._fail(record.id, run.run_id, exc)
        record.runs += 1
        record.where = ""
        record.started_at = time.monotonic()
        record.finished_at = None
        # A running service may take a redefinition in place; one started here, names.
        marks = live.marks() if live.active() else []
        before = {n: ns[n] for n in record.defs if n in ns} if marks and live.running() else {}
        token = use(self._cluster) if self._cluster is not None else None
        try:
            assert record.code is not None
            if record.is_expression:
                record.value = eval(record.code, ns)
            else:
                exec(record.code, ns)
        except BaseException as exc:
            self._sync_namespace(record)
            error = CellError(
                f"cell [{record.id}] `{record.label}` raised {type(exc).__name__}: {exc}",
                cell_id=record.id,
                source=record.label,
            )
            error.__cause__ = exc
            actions = self._fail(record.id, run.run_id, error)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: recorded, and passed on
            return actions
        finally:
            if token is not None:
                unuse(token)
            if earlier:  # its own defs are shown by _sync_namespace below
                self._show_current(n for n in earlier if n not in record.defs)
        outputs = {}
        waiting: dict[str, Pending[Any]] = {}
        cell_id = record.id
        for name in record.defs:
            if name in ns:
                outputs[name] = value = ns[name]
                if isinstance(value, Pending):
                    waiting[name] = value
            if definer(name) != cell_id:  # lost to a newer definition: show that one's
                self._show_current((name,))
        record.outputs = outputs
        if live.active():  # also when this cell started the first one
            self._take_in_place(record, before, marks)
        if record.is_expression and isinstance(record.value, Pending):
            waiting["<value>"] = record.value
        if waiting:
            self._await_pendings(record, run.run_id, waiting)
            return []
        return self._finish(cell_id, run.run_id)

    def _take_in_place(self, record: Record, before: dict[str, Any], marks: list[int]) -> None:
        """After ``record`` ran: a running service takes the new values of the names it
        rebound (the prompt is told), and ``record`` takes in place the names it read whose
        values what it started uses (``sperse._workspace.live``)."""
        for name, new in record.outputs.items():
            old = before.get(name, _UNSET)
            if old is _UNSET or old is new:
                continue
            for note in live.notes_for(name, old, new):
                self._notify(CellEvent(Cell(self, record.id), "swapped", value=note))
        if not live.started_since(marks):
            return
        ns = self.namespace
        refs = self._graph.parents(record.id)
        names = [r for r in refs if r in ns and live.used_since(marks, ns[r])]
        self._graph.set_live(record.id, names)

    def _await_pendings(
        self, record: Record, run_id: RunId, waiting: dict[str, Pending[Any]]
    ) -> None:
        """A local cell produced Pendings: its names stay pending until they settle (then
        hold the settled Pendings), an expression's value until it arrives."""
        cluster = self.cluster  # first: a record with Pendings implies a resolved cluster
        record.pendings = waiting
        for pending in waiting.values():
            pending._on_settle(
                lambda _: cluster.post(lambda: self._pendings_settled(record.id, run_id))
            )

    def _pendings_settled(self, cell_id: CellId, run_id: RunId) -> None:
        record = self._records.get(cell_id)
        if record is None or not self._is_current(cell_id, run_id):
            return
        if not all(p.done() for p in record.pendings.values()):
            return
        waiting, record.pendings = record.pendings, {}
        shown = waiting.get("<value>")
        if shown is not None:  # what the prompt shows of an expression: its value
            if shown._error is not None:
                self._apply(self._fail(cell_id, run_id, shown._error))
                return
            record.value = shown._value
        # A name keeps its Pending (now settled), as under plain Python: see
        # docs/decisions.md, "One calling convention".
        self._apply(self._finish(cell_id, run_id))
