"""``ClientShare``: what a client shows on its coordinator's dashboard (``Coordinator.Share``):
its workspaces' graphs and its flow runs, for ``connect(URL, share_workspace=True)`` on a
cluster.

Invariants:

- ``publish`` (a workspace's thread at every change of its graph; the flow poller) never
  blocks on the network and never raises: it keeps the newest of each workspace or run and
  wakes a thread of this object, which sends them, one message each, at most once every
  ``interval`` seconds: a burst of changes is one message.
- What is shared goes only to the coordinator this client was connected to, with the
  cluster's token, so it shows on that cluster's dashboard only.
- A coordinator that does not answer costs one log line per outage and what it missed (the
  next change sends the newest again). Its answers say whether a Flows page is open there
  (``flows_watched``), so running runs are sent often only while one is.
- ``close`` sends each shared workspace's end (the coordinator's page drops it), then stops
  the thread and closes the channel.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
from typing import Any, Literal

import grpc

from sperse._backends.membership import _channel
from sperse._wire import pb
from sperse._wire.errors import classify
from sperse._wire.sperse_pb2_grpc import CoordinatorStub
from sperse._wire.urls import parse_url

__all__ = ["ClientShare"]

log = logging.getLogger("sperse.client")

INTERVAL = 0.25  # seconds between two sends of one thing, at least
SEND_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0

Kind = Literal["workspace", "flow"]


class ClientShare:
    """Sends workspace graphs and flow runs to the coordinator at ``address`` until
    ``close()``."""

    def __init__(
        self,
        address: str,
        token: str,
        *,
        tls_ca: bytes | None = None,
        client: str = "",
        interval: float = INTERVAL,
    ) -> None:
        self.address = parse_url(address)
        self._token = token
        self.client = client or f"{platform.node()}:{os.getpid()}"
        self._interval = interval
        self._channel = _channel(self.address, tls_ca)
        self._stub = CoordinatorStub(self._channel)  # type: ignore[no-untyped-call]
        self._waiting: dict[tuple[Kind, str], str] = {}  # newest data as JSON ("": ended)
        self._workspaces: set[str] = set()
        self._ready = threading.Condition()
        self._closed = False
        self._outage = False
        self.sent = 0
        self.flows_watched = False  # as the coordinator's last answer said
        self._thread = threading.Thread(target=self._run, name="sperse-share", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def publish_workspace(self, name: str, graph: dict[str, Any]) -> None:
        """``name``'s graph now (``Workspace`` calls it at each change)."""
        self._publish("workspace", name, graph)

    def publish_flow(self, key: str, snapshot: dict[str, Any]) -> None:
        """A flow run's snapshot now (``sperse._flow.dashboard.flow_snapshot``)."""
        self._publish("flow", key, snapshot)

    def _publish(self, kind: Kind, name: str, data: dict[str, Any]) -> None:
        text = json.dumps(data)
        with self._ready:
            if self._closed:
                return
            if kind == "workspace":
                self._workspaces.add(name)
            self._waiting[kind, name] = text
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closed:
                    self._ready.wait()
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting, {}
                closing = self._closed
            for (kind, name), data in batch.items():
                self._send(kind, name, data)
            if not closing:
                with self._ready:  # the rate bound: wait ``interval``, or until closed
                    self._ready.wait_for(lambda: self._closed, self._interval)

    def _send(self, kind: Kind, name: str, data: str) -> None:
        request = pb.ClientShare(
            token=self._token, client=self.client, kind=kind, name=name, data=data
        )
        try:
            reply = self._stub.Share(request, timeout=SEND_TIMEOUT)
        except grpc.RpcError as exc:
            if not self._outage:
                log.warning(
                    "cannot share %s %r with the coordinator at %s (%s): its dashboard shows "
                    "the next change that gets through",
                    kind,
                    name,
                    self.address,
                    classify(exc),
                )
            self._outage = True
            return
        self._outage = False
        self.flows_watched = reply.flows_watched
        self.sent += 1

    def close(self) -> None:
        """Say every shared workspace ended, then stop. Idempotent."""
        with self._ready:
            if self._closed:
                return
            self._closed = True
            for name in self._workspaces:
                self._waiting["workspace", name] = ""
            self._ready.notify()
        self._thread.join(CLOSE_TIMEOUT)
        self._channel.close()
