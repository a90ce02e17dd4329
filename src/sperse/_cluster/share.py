"""``CoordinatorShare``: what ``connect(URL, share_workspace=True)`` on a coordinator's cluster
shows on the coordinator's dashboard: its workspaces' graphs (``publish_workspace``, which
workspaces call at each change, as they call a client dashboard's hub) and its flow runs,
polled here: every ``FLOW_INTERVAL`` seconds while a Flows page is open on the coordinator
(its answers say so), else every ``IDLE_INTERVAL``; each running run's snapshot, and an ended
run's once more, for its final counts. The sending is the
:class:`~sperse._backends.client_share.ClientShare`'s.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from sperse._backends.client_share import ClientShare
from sperse._cluster import flowfeed

__all__ = ["CoordinatorShare"]

FLOW_INTERVAL = 0.25  # seconds between two looks at the flow runs, while a page watches
IDLE_INTERVAL = 2.0  # seconds between two looks, while none does
CLOSE_TIMEOUT = 5.0


class CoordinatorShare:
    """Shares with the coordinator ``share`` talks to, until ``close()``."""

    def __init__(self, share: ClientShare) -> None:
        self._share = share
        self._runs = flowfeed.RunKeys()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="sperse-share-flows", daemon=True)
        self._poller.start()

    def publish_workspace(self, name: str, graph: dict[str, Any]) -> None:
        self._share.publish_workspace(name, graph)

    def _publish_flows(self) -> None:
        with contextlib.suppress(Exception):  # a run that cannot be drawn stops nothing
            for key, snapshot in self._runs.snapshots():
                self._share.publish_flow(key, snapshot)

    def _poll(self) -> None:
        while not self._stop.wait(FLOW_INTERVAL if self._share.flows_watched else IDLE_INTERVAL):
            self._publish_flows()

    def close(self) -> None:
        """Publish the runs' last counts, end the workspaces, stop. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._poller.join(CLOSE_TIMEOUT)
        self._publish_flows()
        self._share.close()
