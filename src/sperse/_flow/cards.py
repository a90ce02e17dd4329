"""A service's card on the servers: where its requests go and its answers come from (for
``sperse.service(name)`` on any client), and what it is doing (for ``sperse status``).

``Flow.serve`` creates the card as a named remote object (``sperse.service:<name>``) on the
first server. The client that served the service knows its operators, replicas and rates
(its run's driver hears every host); the servers do not. So that client's
:class:`CardReporter` pushes a :func:`summary` to the card every ``REPORT_EVERY`` seconds
while the service runs, and ``sperse status`` reads it from the card (:func:`read_cards`).

Invariants: a summary is JSON-ready (names and counts, never a request); the card answers
with how long ago it heard (``age``, by the server's own clock, so no two clocks are
compared); a reporter never outlives its service (it ends when the service stops, or when
the Service object is gone) and waits for each push before the next (one call in flight).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from sperse._flow.dashboard import flow_snapshot

SERVICE_CARD = "sperse.service:"  # the name of a service's card on the servers

if TYPE_CHECKING:
    from sperse._cluster.cluster import Cluster
    from sperse._cluster.objects import ObjectProxy

__all__ = ["REPORT_EVERY", "CardReporter", "ServiceCard", "read_cards", "summary"]

REPORT_EVERY = 1.0  # seconds between two summaries a served service pushes to its card
REPORT_TIMEOUT = 10.0  # seconds a push may take before the next one is tried anyway


class ServiceCard:
    """A service's entry on the servers (a named remote object): its routes, and the last
    summary the client that served it pushed."""

    def __init__(self, name: str, flow: str, sources: list[Any], responds: list[Any]) -> None:
        self._routes = (name, flow, sources, responds)
        self._summary: dict[str, Any] | None = None
        self._heard = 0.0

    def routes(self) -> tuple[str, str, list[Any], list[Any]]:
        return self._routes

    def report(self, summary: dict[str, Any]) -> None:
        self._summary, self._heard = summary, time.monotonic()

    def summary(self) -> dict[str, Any] | None:
        """The last summary, with ``age``: seconds since it came (None: none came yet)."""
        if self._summary is None:
            return None
        return {**self._summary, "age": round(time.monotonic() - self._heard, 2)}


def summary(run: Any, name: str) -> dict[str, Any]:
    """What ``sperse status`` shows of the service ``name`` (its run ``run``): its flow and
    state, the requests taken in from every client and their rate per second (the requests
    source's items in), and each operator with its kind, replicas, servers, items in,
    rate and calls in flight."""
    snapshot = flow_snapshot(run, name)
    keys = ("name", "kind", "replicas", "servers", "items_in", "rate", "in_flight")
    operators = [{k: op[k] for k in keys} for op in snapshot["operators"]]
    source = next((op for op in operators if op["kind"] == "source"), None)
    return {
        "flow": snapshot["name"],
        "state": snapshot["state"],
        "requests": source["items_in"] if source is not None else 0,
        "rate": source["rate"] if source is not None else 0.0,
        "operators": operators,
    }


class CardReporter:
    """Pushes the summary of a served service to its card, at once and then every
    ``REPORT_EVERY`` seconds, on a thread of its own, until the service stops (or
    :meth:`close`)."""

    def __init__(self, service: Any, card: ObjectProxy) -> None:
        self._service = weakref.ref(service)
        self._card = card
        self._name = service.name
        self._closed = threading.Event()
        self._lock = threading.Lock()  # one push at a time
        self._thread = threading.Thread(
            target=self._reporting, name=f"sperse-service-{service.name}-card", daemon=True
        )
        self._thread.start()

    def push(self) -> dict[str, Any] | None:
        """Push a summary now and wait (up to ``REPORT_TIMEOUT``) for the card to have it:
        the summary, or None when the service no longer runs or the card did not take it."""
        with self._lock:
            svc = self._service()
            run = svc._run if svc is not None and svc.running else None
            del svc
            if run is None or self._closed.is_set():
                return None
            out = summary(run, self._name)
            try:
                pending = self._card.report(out)
            except Exception:  # the card is gone (the service is stopping)
                return None
            settled = threading.Event()
            pending._on_settle(lambda _: settled.set())
            if not settled.wait(REPORT_TIMEOUT) or pending._error is not None:
                return None
            return out

    def _reporting(self) -> None:
        while not self._closed.is_set():
            if self.push() is None and self._service() is None:
                return
            svc = self._service()
            if svc is None or not svc.running:
                return
            del svc
            self._closed.wait(REPORT_EVERY)

    def close(self) -> None:
        self._closed.set()


def read_cards(cluster: Cluster, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """The summaries on the cards of the services ``names`` on ``cluster``'s servers, by
    name (a service whose card has none yet, or could not be read, is left out). Call it
    inside ``with cluster:`` (the cards' methods are called on the cluster in use)."""
    from sperse._cluster.objects import proxy_of

    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    for name in names:
        found = cluster.backend.objects(SERVICE_CARD + name)
        if not found:
            continue
        pending = proxy_of(found[0], cluster).summary()
        try:
            got = pending.result(max(0.1, deadline - time.monotonic()))
        except Exception:  # gone meanwhile, or too slow: shown without its summary
            continue
        if isinstance(got, dict):
            out[name] = got
    return out
