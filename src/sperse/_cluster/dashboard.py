"""``ClientDashboard``: the dashboard a client serves itself (``connect(dashboard=True)``).

A client sees everything of its own work: every task it sends and every event back, the
servers its backend knows, their remote objects, and its workspaces' graphs. So its
dashboard has every page live, on any backend (an embedded server, a coordinator's
cluster, Ray, in-process), where a coordinator's dashboard knows only membership and load.

Threads: the web app runs on a loop of its own (``DashboardThread``); tasks are recorded
on the sender's and the backend's threads (a dict update each); the server list is polled
once a second by a thread of this object, only while a page watches the live feed; flow
runs (every run of this process, as ``sperse._flow`` registers them in
``sperse._cluster.flowfeed``) are published by the same
thread every ``FLOW_INTERVAL`` seconds, only while a Flows page is open, and only those
still running (an ended run once more, for its final counts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sperse._cluster import flowfeed
from sperse._core import BackendEvent, Done, Failed, Output, Started, TaskSpec
from sperse._dashboard.hub import Hub
from sperse._dashboard.serve import DashboardConfig, DashboardThread
from sperse._tokens import new_token

if TYPE_CHECKING:
    from sperse._cluster.cluster import Cluster

__all__ = ["ClientDashboard", "serve_dashboard"]

POLL_INTERVAL = 1.0  # seconds between two looks at the server list, while a page watches
FLOW_INTERVAL = 0.25  # seconds between two snapshots of running flows, while a page watches


class ClientDashboard:
    """Serves ``cluster``'s dashboard on ``host:port`` (0: a free port) until ``close()``."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        title: str = "",
    ) -> None:
        self._cluster = cluster
        self.hub = Hub(title or "this client")
        self.hub.has_tasks = True
        self.hub.objects = self._objects
        self.hub.flow_source = self._all_flows
        self._runs = flowfeed.RunKeys()
        self._stop = threading.Event()
        self._servers()  # the first list before any page asks
        self._thread = DashboardThread(
            self.hub, DashboardConfig(host=host, port=port, token=token or new_token())
        )
        self._unwatch = cluster.watch(self)
        self._poller = threading.Thread(
            target=self._poll, name="sperse-dashboard-poll", daemon=True
        )
        self._poller.start()

    @property
    def url(self) -> str:
        """The address to open (it carries the token)."""
        return self._thread.url

    # ---- TaskWatcher -----------------------------------------------------------------

    def submitted(self, specs: Sequence[TaskSpec]) -> None:
        for spec in specs:
            self.hub.task_submitted(spec.task_id, spec.label or spec.task_id)

    def event(self, event: BackendEvent) -> None:
        hub = self.hub
        if isinstance(event, Started):
            hub.task_started(event.task_id, event.where, worker=event.worker)
        elif isinstance(event, Output):
            hub.task_output(event.task_id, event.text)
        elif isinstance(event, Done):
            hub.task_ended(event.task_id, event.where)
        elif isinstance(event, Failed):
            e = event.error
            hub.task_ended(
                event.task_id, event.where, (e.kind, e.type_name, e.message, e.traceback)
            )

    # ---- sources ---------------------------------------------------------------------

    def _servers(self) -> None:
        backend = self._cluster.backend
        servers = [
            {
                "name": s.name,
                "address": s.address,
                "tags": sorted(s.tags),
                "resources": dict(s.resources),
                "workers": s.workers,
                "busy": s.busy,
            }
            for s in backend.servers()
        ]
        self.hub.servers(servers)

    def _objects(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(o) for o in self._cluster.backend.objects()]

    def _flows(self, every: bool = False) -> None:
        """Publish a snapshot of each run still running (``every``: of each run)."""
        for key, snapshot in self._runs.snapshots(every):
            self.hub.flow(key, snapshot)

    def _all_flows(self) -> None:
        self._flows(every=True)

    def _poll(self) -> None:
        last = 0.0
        hub = self.hub
        while not self._stop.wait(FLOW_INTERVAL if hub.flow_viewers > 0 else POLL_INTERVAL):
            if self._cluster.closed:
                continue
            now = time.monotonic()
            if hub.viewers > 0 and now - last >= POLL_INTERVAL * 0.9:
                last = now
                # a backend between connections: the next look will do
                with contextlib.suppress(Exception):
                    self._servers()
            if hub.flow_viewers > 0:
                with contextlib.suppress(Exception):  # never the end of this thread
                    self._flows()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._unwatch()
        self._thread.close()


def serve_dashboard(
    cluster: Cluster,
    *,
    token: str | None = None,
    port: int = 0,
    title: str = "",
    share_workspace: bool = True,
) -> ClientDashboard:
    """``cluster``'s dashboard: the one it serves, or a new one (then set on
    ``cluster.dashboard``, and its workspaces shared with it unless ``share_workspace`` is
    False). What ``connect(dashboard=True)`` and ``%dashboard`` do."""
    served = cluster.dashboard
    if isinstance(served, ClientDashboard):
        return served
    served = ClientDashboard(cluster, token=token, port=port, title=title)
    cluster.dashboard = served
    if share_workspace:
        cluster.share_workspace = served.hub.workspace
    return served
