"""The core of a workspace: its state (graph, records, namespace) and carrying out actions.

Layers: ``_lang`` turns text into statements with defs and refs, ``_graph`` decides what
runs when, and the workspace carries the decisions out: it runs local cells on the
caller's thread, sends remote cells to the cluster, and applies what comes back (always
on the caller's thread, through the cluster's queue: DESIGN.md §2 rule 6).

The namespace (``ws.namespace``) is the globals dict every local cell runs in, so
functions defined at the prompt see later globals as Python users expect. Each cell also
keeps the values it produced (``outputs``), which is what a cell that updates a name
(``x += 1``) reads, and what the namespace is restored from whenever a cell that lost a
name to a newer definition runs again.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Literal

from sperse._cluster.cluster import Cluster, default
from sperse._cluster.connect import current
from sperse._graph.graph import (
    Action,
    Blocked,
    Cancel,
    CellId,
    CellStatus,
    Drop,
    Graph,
    Held,
    Mode,
    Run,
    RunId,
)
from sperse._workspace.cells import Cell, CellEvent, Record
from sperse._workspace.share import SharedGraph
from sperse._workspace.statements import Names
from sperse.errors import NotReadyError, UpstreamError

__all__ = ["WorkspaceCore"]

_workspace_numbers = itertools.count(1)


class WorkspaceCore:
    """The state of a workspace, and carrying out what its graph decides.

    ``_apply`` carries out the graph's actions; how a cell starts is ``_start``'s (local
    cells in ``LocalCells``, remote ones in ``RemoteCells``); ``_finish`` and ``_fail``
    report outcomes back to the graph. Every method runs on the caller's thread.
    """

    def __init__(
        self,
        cluster: Cluster | None = None,
        *,
        mode: Literal["auto", "lazy", "notebook"] = "auto",
    ) -> None:
        self._cluster = cluster
        self._graph = Graph(Mode(mode))
        self._records: dict[CellId, Record] = {}
        self._names = Names(self._graph)
        self._inputs = 0
        self._subscribers: list[Callable[[CellEvent], None]] = []
        self._units: dict[Hashable, list[CellId]] = {}  # notebook cell -> its statements
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self._applying = 0  # depth of _apply: the graph is shared once the outermost ends
        self.share_name = f"pid {os.getpid()} workspace {next(_workspace_numbers)}"
        self._shared = SharedGraph(self.share_name)

    # ---- readiness -----------------------------------------------------------

    def _check_ready(self, cell_id: CellId, what: str) -> None:
        status = self._graph.status(cell_id)
        record = self._records[cell_id]
        if status is CellStatus.DONE:
            return
        if status is CellStatus.FAILED:
            assert record.error is not None
            raise record.error
        if status is CellStatus.BLOCKED:
            raise self._upstream_error(cell_id, what)
        if status is CellStatus.STALE:
            raise NotReadyError(
                f"{what} is stale: {self.stale_reason(cell_id)}; ws.run_stale() runs it"
            )
        raise NotReadyError(f"{what} is pending ({self._describe_wait(cell_id)}); ws.wait() waits")

    def _upstream_error(self, cell_id: CellId, what: str) -> UpstreamError:
        failed = self._graph.failed_ancestor(cell_id)
        if failed is None:
            return UpstreamError(f"{what}: an upstream cell failed")
        names = ", ".join(sorted(self._graph.view(failed).owned)) or self._records[failed].label
        error = UpstreamError(
            f"{what}: upstream error in {names} (cell [{failed}] `{self._records[failed].label}`)",
            upstream=names,
        )
        error.__cause__ = self._records[failed].error
        return error

    def _describe_wait(self, cell_id: CellId) -> str:
        record = self._records[cell_id]
        if self._graph.status(cell_id) is CellStatus.RUNNING:
            if record.pendings:  # a local cell that made Pendings: say where they run
                running = [p for p in record.pendings.values() if not p.done()]
                where = sorted({p.where for p in running if p.where})
                on = f" on {', '.join(where)}" if where else ""
                return f"waiting for {len(running)} Pending{'s' * (len(running) != 1)}{on}"
            if record.started_at is not None:
                return f"running on {record.where} for {time.monotonic() - record.started_at:.1f} s"
            return "submitted"
        waiting = [
            name
            for name, parent in self._graph.parents(cell_id).items()
            if parent is not None and self._graph.status(parent) is not CellStatus.DONE
        ]
        return f"waiting for {', '.join(sorted(waiting))}" if waiting else "queued"

    def stale_reason(self, cell_id: CellId) -> str:
        """Why a stale cell waits for ``run_stale``: lazy mode, or rule 9."""
        graph = self._graph
        if graph.is_held(cell_id):
            return "not re-applied to its new inputs (it changes an object it reads)"
        for upstream in graph.upstream(cell_id):
            if graph.is_held(upstream):
                label = self._records[upstream].label
                return f"it reads what `{label}` defines, which was not re-applied"
        return "its inputs changed in lazy mode"

    # ---- carrying out graph actions -----------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        self._applying += 1
        try:
            self._carry_out(actions)
        finally:
            self._applying -= 1
            if not self._applying:
                self._share()

    def share(self) -> None:
        """Publish the graph now (a dashboard that has just started wants it at once)."""
        self._share()

    def _share(self) -> None:
        """Publish the graph to the cluster's dashboard, if this client shares workspaces
        (``connect(dashboard=True)`` or ``share_workspace=True``)."""
        cluster = self._cluster if self._cluster is not None else default()
        share = cluster.share_workspace if cluster is not None else None
        if share is None:
            return
        # A picture that cannot be drawn must never stop a statement.
        with contextlib.suppress(Exception):
            self._shared.publish(share, self._graph, self._records)

    def _share_started(self, task_id: str, server: str) -> None:
        """A remote cell's task started on ``server`` (the backend's thread): the pages show
        where it runs at once, not at the graph's next change."""
        cluster = self._cluster if self._cluster is not None else default()
        share = cluster.share_workspace if cluster is not None else None
        if share is not None:
            with contextlib.suppress(Exception):
                self._shared.started(share, task_id, server)

    def _carry_out(self, actions: list[Action]) -> None:
        todo: deque[Action] = deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, Run):
                todo.extend(self._start(action))
            elif isinstance(action, Cancel):
                if self._graph.__contains__(action.cell):
                    self._stop(action.cell)
                else:
                    self._stop_record(self._records.get(action.cell))
            elif isinstance(action, Drop):
                record = self._records.pop(action.cell, None)
                self._stop_record(record)
            elif isinstance(action, Blocked):
                record = self._records[action.cell]
                record.error = self._upstream_error(action.cell, record.label)
                self._notify(CellEvent(Cell(self, action.cell), "blocked", error=record.error))
            elif isinstance(action, Held):
                self._notify(CellEvent(Cell(self, action.cell), "held"))

    def _start(self, run: Run) -> list[Action]:
        """Start ``run``: locally or on the cluster (``Workspace`` chooses)."""
        raise NotImplementedError

    def _sync_namespace(self, record: Record) -> None:
        """After ``record`` ran: each name it defines shows its current definer's value."""
        self._show_current(record.defs)

    def _show_current(self, names: Iterable[str]) -> None:
        """Each of ``names`` in the namespace holds its current definer's value (or is
        absent): after a cell ran, or read earlier definitions (notebook mode)."""
        ns = self.namespace
        for name in names:
            owner = self._graph.definer(name)
            outputs = self._records[owner].outputs if owner is not None else {}
            if name in outputs:
                ns[name] = outputs[name]
            else:
                ns.pop(name, None)

    def _remote_done(self, cell_id: CellId, run_id: RunId, value: Any, digest: bytes) -> None:
        record = self._records.get(cell_id)
        if record is None or not self._is_current(cell_id, run_id):
            return  # a stale result: never shown
        record.task_id = None
        if record.is_expression:
            record.value = value
            record.outputs = {}
        else:
            record.outputs = dict(value)
            self._sync_namespace(record)
        record.digest = digest
        self._apply(self._finish(cell_id, run_id))

    def _is_current(self, cell_id: CellId, run_id: RunId) -> bool:
        return (
            cell_id in self._graph
            and self._graph.run_id(cell_id) == run_id
            and self._graph.status(cell_id) is CellStatus.RUNNING
        )

    def _finish(self, cell_id: CellId, run_id: RunId) -> list[Action]:
        actions = self._graph.finished(cell_id, run_id)
        record = self._records[cell_id]
        record.finished_at = time.monotonic()
        if self._subscribers:
            self._notify(CellEvent(Cell(self, cell_id), "done", value=record.value))
        return actions

    def _fail(self, cell_id: CellId, run_id: RunId, error: BaseException) -> list[Action]:
        record = self._records[cell_id]
        if not self._is_current(cell_id, run_id):
            return []
        record.error = error
        record.task_id = None
        record.digest = None
        record.finished_at = time.monotonic()
        actions = self._graph.failed(cell_id, run_id)
        self._notify(CellEvent(Cell(self, cell_id), "failed", error=error))
        return actions

    def _stop(self, cell_id: CellId) -> None:
        self._stop_record(self._records.get(cell_id))

    def _stop_record(self, record: Record | None) -> None:
        if record is None:
            return
        if record.task_id is not None and self._cluster is not None:
            self._cluster.cancel(record.task_id)
        record.task_id = None
        pendings, record.pendings = record.pendings, {}
        for pending in pendings.values():
            pending.cancel()

    def _notify(self, event: CellEvent) -> None:
        for fn in list(self._subscribers):
            fn(event)

    # ---- the cluster ---------------------------------------------------------

    @property
    def cluster(self) -> Cluster:
        """The cluster remote cells run on (resolved on first use)."""
        if self._cluster is None or self._cluster.closed:
            self._cluster = current()
        return self._cluster

    def _cluster_for_waiting(self) -> Cluster | None:
        """The cluster whose events may settle a cell; None: no cell waits for one (a cell
        gets Pendings only once the cluster is resolved). Asked at every statement: O(1)."""
        return self._cluster
