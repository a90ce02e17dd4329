"""``Hub``: the dashboard's state (:mod:`~sperse._dashboard.model`) behind a lock, fed from any
thread, read by the web app on its event loop.

Publishers (the coordinator's loop, a client's backend thread, a workspace on the user's
thread) call ``servers``, ``task_*`` and ``workspace``; each call is a dict update and a
journal entry under one lock, plus a wake-up of the app's loop only when a page is waiting
for changes and was not woken already, so a publisher pays almost nothing while nobody
watches and little while someone does.

``viewers`` counts the pages connected to the live feed: sources that poll (a client's
server list) poll only while it is above zero.

``flow`` takes a flow run's snapshot (whole; journalled only when it differs from the last);
``flow_viewers`` counts the pages that watch flows (the Flows page's feed), so a host
publishes snapshots only while one is open; ``flow_source``, a callable the host gives, is
run in a thread when that page loads, to publish every run at once (ended ones too).

``objects`` is a view loaded on demand: a callable the host gives (a client's
``backend.objects()``), run in a thread when the objects page asks, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from sperse._dashboard.model import Change, Journal, ServerTable, TaskTable

__all__ = ["Hub"]

JSON = dict[str, Any]
FLOWS_KEPT = 100  # flow runs a hub keeps
WORKSPACES_KEPT = 100  # shared workspaces a hub keeps


class Hub:
    """What one dashboard shows. ``title`` names the host (``coordinator at ...``)."""

    def __init__(
        self,
        title: str,
        *,
        journal_limit: int = 20_000,
        keep_tasks: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.title = title
        self._lock = threading.Lock()
        self._clock = clock
        self._journal = Journal(journal_limit)
        self._servers = ServerTable(self._journal)
        self._tasks = TaskTable(self._journal, keep_tasks)
        self._workspaces: dict[str, JSON] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._woken = True
        self.viewers = 0
        self.objects: Callable[[], list[JSON]] | None = None
        self.objects_named_only = False  # ``objects`` lists named objects only (a coordinator)
        self.has_tasks = False  # the host publishes tasks
        self._flows: dict[str, JSON] = {}
        self.flow_viewers = 0
        self.flow_source: Callable[[], None] | None = None
        self.tasks_dropped = 0  # task events its sources had to drop (a server's full buffer)

    # ---- publishing (any thread) -----------------------------------------------------

    def _wake(self) -> None:
        # Called with the lock held, after a change.
        if self._woken:
            return
        self._woken = True
        for loop, event in self._waiters:
            loop.call_soon_threadsafe(event.set)

    def servers(self, servers: Iterable[Mapping[str, Any]]) -> None:
        """The whole list of servers now (each a dict with at least ``name``)."""
        with self._lock:
            if self._servers.update(servers):
                self._wake()

    def task_submitted(
        self,
        task_id: str,
        label: str,
        *,
        server: str = "",
        client: str = "",
        at: float | None = None,
    ) -> None:
        """``at``: when, by the source's clock (default: now)."""
        with self._lock:
            now = self._clock() if at is None else at
            self._tasks.submitted(task_id, label, now, server=server, client=client)
            self._wake()

    @contextlib.contextmanager
    def task_batch(self) -> Iterator[TaskTable]:
        """The task table, to apply many events under one lock and one wake-up (a server's
        report). Call only its ``submitted``, ``started``, ``output``, ``ended``, ``end_open``."""
        with self._lock:
            seq = self._journal.seq
            with self._tasks.held():  # a task's events in the batch: one journal entry
                yield self._tasks
            if self._journal.seq != seq:
                self._wake()

    def task_started(
        self, task_id: str, server: str, *, worker: int = 0, at: float | None = None
    ) -> None:
        with self._lock:
            self._tasks.started(task_id, server, self._clock() if at is None else at, worker)
            self._wake()

    def task_output(self, task_id: str, text: str) -> None:
        with self._lock:
            self._tasks.output(task_id, text)

    def task_ended(
        self,
        task_id: str,
        server: str,
        error: tuple[str, str, str, str] | None = None,
        *,
        at: float | None = None,
    ) -> None:
        with self._lock:
            now = self._clock() if at is None else at
            self._tasks.ended(task_id, server, now, error=error)
            self._wake()

    def tasks_ended(self, prefix: str, error: tuple[str, str, str, str]) -> None:
        """Every task not ended yet whose id starts with ``prefix`` ends in ``error`` (its
        server or session is gone: no more events will come for it)."""
        with self._lock:
            if self._tasks.end_open(prefix, self._clock(), error):
                self._wake()

    def dropped(self, count: int) -> None:
        """``count`` task events were dropped before they reached the hub."""
        if count:
            with self._lock:
                self.tasks_dropped += count

    def workspace(self, name: str, graph: JSON) -> None:
        """A workspace's graph, whole (see ``sperse._workspace.share``). At most
        ``WORKSPACES_KEPT`` are kept: the one shared first goes."""
        with self._lock:
            self._workspaces[name] = graph
            self._journal.add("workspace", name, {"name": name, "version": graph.get("version")})
            if len(self._workspaces) > WORKSPACES_KEPT:
                self._workspace_gone(next(iter(self._workspaces)))
            self._wake()

    def workspace_gone(self, name: str) -> None:
        """A workspace no longer shared (its client closed it, or ended)."""
        with self._lock:
            if name in self._workspaces:
                self._workspace_gone(name)
                self._wake()

    def _workspace_gone(self, name: str) -> None:
        del self._workspaces[name]
        self._journal.add("workspace", name, {"name": name, "gone": True})

    def flow(self, key: str, snapshot: JSON) -> None:
        """A flow run's snapshot, whole (``sperse._cluster.dashboard.flow_snapshot``): journalled
        only when it changed. At most ``FLOWS_KEPT`` runs are kept (ended ones go first)."""
        with self._lock:
            if self._flows.get(key) == snapshot:
                return
            self._flows[key] = snapshot
            self._journal.add("flow", key, snapshot)
            if len(self._flows) > FLOWS_KEPT:
                for old in list(self._flows):
                    if self._flows[old].get("state") != "running" and old != key:
                        del self._flows[old]
                        break
            self._wake()

    def wake_all(self) -> None:
        """Wake every page waiting for changes (the server is stopping)."""
        with self._lock:
            for loop, event in self._waiters:
                loop.call_soon_threadsafe(event.set)

    # ---- reading (the app's loop) ----------------------------------------------------

    @property
    def seq(self) -> int:
        with self._lock:
            return self._journal.seq

    def since(
        self, seq: int, most_tasks: int
    ) -> tuple[int, tuple[list[Change], bool] | None, dict[str, int]]:
        """(the newest seq, the changes after ``seq`` with at most ``most_tasks`` tasks (the
        last changed) and whether more changed, or None if forgotten; task counts). The
        changes' data is JSON, made here under the lock (a row may change on another thread)."""
        with self._lock:
            found = self._journal.newest(seq, most_tasks)
            if found is not None:
                changes, more = found
                found = [Change(c.seq, c.topic, c.key, c.json()) for c in changes], more
            return self._journal.seq, found, dict(self._tasks.counts)

    def server_list(self) -> tuple[int, list[JSON]]:
        with self._lock:
            return self._journal.seq, self._servers.snapshot()

    def task_page(self, state: str, offset: int, limit: int) -> JSON:
        with self._lock:
            rows, total = self._tasks.page(state=state, offset=offset, limit=limit)
            return {
                "seq": self._journal.seq,
                "tasks": rows,
                "total": total,
                "counts": dict(self._tasks.counts),
                "kept": len(self._tasks),
                "dropped": self.tasks_dropped,
                "now": self._clock(),
            }

    def task(self, task_id: str) -> JSON | None:
        with self._lock:
            row = self._tasks.get(task_id)
            return None if row is None else row.as_json(full=True)

    def timeline(self, seconds: float) -> JSON:
        with self._lock:
            now = self._clock()
            return {
                "seq": self._journal.seq,
                "now": now,
                "tasks": self._tasks.recent(now - seconds),
            }

    def workspace_list(self) -> list[str]:
        with self._lock:
            return sorted(self._workspaces)

    def workspace_graph(self, name: str) -> JSON | None:
        with self._lock:
            return self._workspaces.get(name)

    def flow_list(self) -> JSON:
        """Every run kept, whole (oldest first), with the journal's ``seq``."""
        with self._lock:
            return {"seq": self._journal.seq, "flows": list(self._flows.values())}

    def flow_run(self, key: str) -> JSON | None:
        with self._lock:
            return self._flows.get(key)

    async def changed(self, seq: int, timeout: float) -> None:
        """Wait until the journal passes ``seq``, or ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            if self._journal.seq > seq:
                return
            self._waiters.append((loop, event))
            self._woken = False
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.remove((loop, event))
