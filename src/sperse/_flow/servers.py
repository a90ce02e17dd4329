"""The server executor: a flow's replicas on servers, one remote object each.

:class:`OnServers` places every stage replica on a server (the stage's placement, resolved
against ``cluster.servers()`` by the rules of ``remote[...]``; replicas spread over the
matching servers round-robin, ``"per_server"`` one per matching server) and creates a
:class:`~sperse._flow.host.ReplicaHost` there pinned to it (a Ray actor on Ray). Once
every host exists, each is given the proxies of the hosts it sends to and started: batches
then go from host to host directly (see :mod:`sperse._flow.host` for the transport).

The **driver** (a thread of this process, as in Renoir) keeps the run's
:class:`~sperse._flow.control.Controller`: it long-polls each host's ``watch`` for its
reports and counts, turns the controller's ``Deliver`` actions into deliveries on the
``ctl`` channel, and holds the sinks' outcomes until the run is over. It feeds the sources
built in this process (``source(iterable)``, ``queue()``), dealt over their replicas one
batch at a time with the same credits as every channel; ``read_lines`` sources read their
files on their own servers.

**Failure** (:mod:`sperse._flow.hostloss`). A host whose creation, ``watch``, or a delivery
to it fails (its server or worker died), or that stays silent for ``silence`` seconds, fails
the run with ``FlowFailed`` naming its operators and its server. With ``restart=N`` such a
failure (not an operator's own error) starts the flow again from its sources on new hosts,
avoiding the servers that failed while others match, up to N more times; the sinks settle
only from the attempt that ended the run, so a result is never a mixture of attempts.
Sources that are iterators or queues are kept as they are read, to be read again.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sperse._cluster.cluster import Cluster
from sperse._cluster.objects import ObjectProxy, RemoteClass
from sperse._cluster.pending import Pending
from sperse._core import ErrorInfo, ServerInfo
from sperse._core.routing import check_placement, eligible
from sperse._flow.control import Controller, RoundDone
from sperse._flow.feed import ClientFeed
from sperse._flow.host import ReplicaHost, lost_info
from sperse._flow.hostloss import LOST, check_time, delivery_failed, fail_host, reported
from sperse._flow.messages import (
    Batch,
    Cancel,
    Deliver,
    End,
    FlowError,
    ReplicaEvent,
    Settle,
    Stopped,
)
from sperse._flow.plan import LogicalPlan, PhysicalPlan
from sperse._flow.rehost import Reshaping, planned, rehost, shippable
from sperse._flow.service import Answer
from sperse._flow.transport import (
    BATCH_ITEMS,
    LINGER,
    MAX_BATCH_ITEMS,
    WINDOW,
    BatchSizes,
    Credits,
    Packed,
)
from sperse._lang.placement import Placement
from sperse._serialize import RemoteValue, dumps
from sperse.errors import SerializationError

__all__ = ["OnServers"]

Key = tuple[int, int]  # (stage, replica)
FINISH_TIMEOUT = 5.0  # seconds the hosts have to give their final counts
CLIENTS = 64  # a service's host takes this many clients' calls at once (x window)


class OnServers:
    """The :class:`~sperse._flow.api.Executor` that runs a flow on ``cluster``'s servers.

    ``window``: un-acknowledged deliveries per channel; ``batch_items``/``linger``: when a
    host sends a buffer (items, seconds), ``max_batch_items``: how big a delivery may grow
    when the receiver handles items fast (``transport.BatchSize``; equal to
    ``batch_items``: fixed); ``restart``: how many times a run lost to a server
    starts again; ``heartbeat``: how long a host's ``watch`` waits for a report; ``silence``:
    how long a host may not answer before the run fails; ``ready_timeout``: how long hosts
    may take to be created."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        window: int = WINDOW,
        batch_items: int = BATCH_ITEMS,
        max_batch_items: int = MAX_BATCH_ITEMS,
        linger: float = LINGER,
        restart: int = 0,
        heartbeat: float = 0.25,
        silence: float = 30.0,
        ready_timeout: float = 120.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.cluster = cluster
        self.window = window
        self.batch_items = batch_items
        self.max_batch_items = max_batch_items
        self.linger = linger
        self.restart = restart
        self.heartbeat = heartbeat
        self.silence = silence
        self.ready_timeout = ready_timeout

    def per_server(self, placement: Placement) -> int:
        """What ``replicas="per_server"`` means for an operator placed by ``placement``."""
        servers = self.cluster.servers()
        check_placement(placement, servers, "a flow operator")
        return len(eligible(placement, servers))

    def start(
        self,
        plan: PhysicalPlan,
        settle: Callable[[Settle], None],
        done: Callable[[Stopped], None],
        answer: Callable[[list[Answer]], None] | None = None,
    ) -> _Driver:
        """``answer`` is not used: a service's clients take its answers from the hosts of
        its respond replicas (:mod:`sperse._flow.serving`)."""
        return _Driver(self, plan, settle, done)


@dataclass(slots=True)
class _Host:
    key: Key
    server: str
    proxy: ObjectProxy
    ready: bool = False
    heard: float = 0.0  # when its watch last answered (monotonic)
    tally: dict[str, tuple[int, int]] | None = None  # items in and out per operator
    stats: dict[str, int] | None = None
    info: dict[str, Any] | None = None


class _Driver:
    """One run on servers (see the module docstring); the ``RunHandle`` of ``Flow.run``."""

    def __init__(
        self,
        config: OnServers,
        plan: PhysicalPlan,
        settle: Callable[[Settle], None],
        done: Callable[[Stopped], None],
    ) -> None:
        self._config = config
        self._cluster = config.cluster
        self._plan = plan
        self._settle = settle
        self._done = done
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stopped: Stopped | None = None
        self._finished = threading.Event()
        self._suspect: set[str] = set()
        self._lost: set[str] = set()  # servers a service lost and went on without
        self._notice: tuple[dict[str, int], str, bool] | None = None  # Moved's, of the last
        self._names: dict[int, str] = {
            s.id: " -> ".join(plan.node(n).name for n in s.nodes) for s in plan.stages
        }
        self._heads: dict[int, str] = {s.id: plan.node(s.nodes[0]).name for s in plan.stages}
        self._shipped = dumps(shippable(plan), what=f"the operators of flow {plan.logical.name!r}")
        self._feeds = [
            ClientFeed(n, plan.stages[plan.stage_of[n.id]], config.restart > 0)
            for n in plan.logical.nodes
            if n.kind == "source" and n.args[0] != "lines"
        ]
        self._attempt = 0
        self._hosts: dict[Key, _Host] = {}
        self._controller = Controller(plan)
        self._lock = threading.Lock()
        self._places = self._place(config.cluster.servers())  # raises NoMatchingServer
        self._started = threading.Event()  # the hosts were started (or the run is over)
        self._kept: list[ObjectProxy] = []  # closed with the hosts (a service's card)
        self._epoch = 0  # reshapes so far
        self._thread = threading.Thread(
            target=self._run, name=f"sperse-flow-{plan.logical.name}", daemon=True
        )
        self._thread.start()

    # ---- the RunHandle -------------------------------------------------------------------

    def wait(self, timeout: float | None) -> Stopped | None:
        self._finished.wait(timeout)
        return self._stopped

    def cancel(self) -> None:
        self._events.put(("cancel",))

    def counts(self) -> dict[str, int]:
        return {name: n_in for name, (n_in, _, _) in self.tally().items()}

    def tally(self) -> dict[str, tuple[int, int, int]]:
        """Items in, out and waiting in the hosts' inboxes (shown on a stage's first
        operator), per operator, as of the hosts' last answers."""
        out: dict[str, tuple[int, int, int]] = {}
        with self._lock:
            for host in self._hosts.values():
                for name, (n_in, n_out) in (host.tally or {}).items():
                    was = out.get(name, (0, 0, 0))
                    out[name] = (was[0] + n_in, was[1] + n_out, was[2])
                head = self._heads[host.key[0]]
                was = out.get(head, (0, 0, 0))
                out[head] = (was[0], was[1], was[2] + (host.stats or {}).get("backlog", 0))
        return out

    def rounds(self) -> list[RoundDone]:
        return list(self._controller.rounds)

    def proxies(self) -> dict[Key, ObjectProxy]:
        """Every replica's host once started (a service's routes); raises what failed the
        run if it ended first."""
        self._started.wait(self._config.ready_timeout + 5.0)
        stopped = self._stopped
        if stopped is not None and stopped.error is not None:
            raise stopped.error.to_exception(self._plan.logical.name)
        with self._lock:
            return {key: host.proxy for key, host in self._hosts.items()}

    def reshape(self, logical: LogicalPlan, timeout: float | None) -> PhysicalPlan | None:
        """Run ``logical`` from now on, its state handed over (a service's ``scale`` and
        ``move``, see :mod:`sperse._flow.rehost`); the new plan once applied, None if not
        within ``timeout``; raises what made it fail."""
        box = Reshaping()
        self._events.put(("reshape", planned(self, logical), box))  # raises a bad placement
        return box.result(timeout)

    def keep(self, proxy: ObjectProxy) -> None:
        """Close ``proxy`` with the hosts when the run ends."""
        self._kept.append(proxy)

    def hosts(self) -> list[dict[str, Any]]:
        """Every replica of the current attempt: its operators, server, process and the
        transport's counters (as of its last answer)."""
        with self._lock:
            return [
                {
                    "stage": h.key[0],
                    "replica": h.key[1],
                    "operators": self._names[h.key[0]],
                    "server": h.server,
                    "attempt": self._attempt,
                    **(h.info or {}),
                    **(h.stats or {}),
                }
                for h in self._hosts.values()
            ]

    # ---- placement -----------------------------------------------------------------------

    def _place(self, servers: list[ServerInfo]) -> dict[Key, str]:
        """A server for every stage replica: round-robin over the servers its placement
        matches (those that failed before last, while others match)."""
        places: dict[Key, str] = {}
        turn = 0
        for stage in self._plan.stages:
            check_placement(stage.placement, servers, f"flow operator {self._names[stage.id]!r}")
            matching = [s.name for s in eligible(stage.placement, servers)]
            healthy = [s for s in matching if s not in self._suspect] or matching
            for r in range(stage.replicas):
                places[(stage.id, r)] = healthy[(turn + r) % len(healthy)]
            turn += stage.replicas
        return places

    # ---- the driver thread ---------------------------------------------------------------

    def _run(self) -> None:
        stopped = Stopped(FlowError("", "", ErrorInfo("internal", "FlowFailed", "not run")))
        held: list[Settle] = []
        try:
            while True:
                held, stopped = self._run_once()
                error = stopped.error
                lost = error is not None and error.error.kind in LOST
                if not lost or self._attempt >= self._config.restart:
                    break
                if error is not None and error.server:
                    self._suspect.add(error.server)
                self._attempt += 1
                self._places = self._place(self._cluster.servers())
                self._controller = Controller(self._plan)
        except Exception as exc:  # a bug of ours: fail the run rather than hang it
            info = ErrorInfo("internal", type(exc).__name__, str(exc))
            error = FlowError("", "", info, f"the server executor failed: {exc}")
            held = [Settle(n, error=error) for n in self._plan.sinks()]
            stopped = Stopped(error)
        finally:
            self._stopped = stopped
            self._started.set()
            for settle in held:
                self._settle(settle)
            self._finished.set()
            self._done(stopped)

    def _run_once(self) -> tuple[list[Settle], Stopped]:
        """One attempt: create, start, feed and watch the hosts until the controller stops;
        close the hosts. The sinks' outcomes and how it stopped."""
        held: list[Settle] = []
        self._credits = {"client": Credits(self._config.window), "ctl": Credits(1)}
        self._sizes = BatchSizes(self._config.batch_items, self._config.max_batch_items)
        for feed in self._feeds:
            feed.begin()
        self._create()
        try:
            started = False
            deadline = time.monotonic() + self._config.ready_timeout
            while self._controller.stopped is None:
                if not started and all(h.ready for h in self._hosts.values()):
                    self._start_hosts()
                    started = True
                if started:
                    self._feed()
                waiting = started and any(not f.ended for f in self._feeds)
                try:
                    event = self._events.get(timeout=0.02 if waiting else self._config.heartbeat)
                except queue.Empty:
                    event = None
                if event is not None:
                    held += self._on_event(event)
                held += check_time(self, started, deadline)
            stopped = self._controller.stopped
            assert stopped is not None
            return held, stopped
        finally:
            self._finish()
            self._close()

    def _create(self) -> None:
        hosts = {}
        for key, server in self._places.items():
            hosts[key] = host = self._make_host(key, server)
            host.proxy._when_ready(functools.partial(self._put, "ready", host))
        with self._lock:
            self._hosts = hosts

    def _make_host(self, key: Key, server: str) -> _Host:
        stage = self._plan.stages[key[0]]
        senders = sum(i.senders for i in stage.inputs) + 1
        if self._plan.logical.is_service():  # clients' requests and long polls too
            senders += CLIENTS
        cls = RemoteClass(ReplicaHost).options(
            on=f"@{server}", max_concurrency=self._config.window * senders + 16, name=""
        )
        config = {
            "window": self._config.window,
            "batch_items": self._config.batch_items,
            "max_batch_items": self._config.max_batch_items,
            "linger": self._config.linger,
            "server": server,
            "names": self._names,
            "servers": self._places,
        }
        proxy = cls.create_on(self._cluster, (self._shipped, key[0], key[1], config), {})
        return _Host(key, server, proxy)

    def _put(self, kind: str, host: _Host, pending: Pending[Any]) -> None:
        self._events.put((kind, host, pending))

    def _start_hosts(self) -> None:
        now = time.monotonic()
        for host in self._hosts.values():
            stage = self._plan.stages[host.key[0]]
            head = self._plan.node(stage.nodes[0])
            lines = head.args[1] if head.kind == "source" and head.args[0] == "lines" else ""
            self._call(host, "start", ("started", host), self._peers(host.key), lines)
            self._call(host, "info", ("info", host))
            host.heard = now
            self._watch(host)
        self._started.set()

    def _peers(self, key: Key) -> dict[Key, ObjectProxy]:
        """The proxies of the hosts that host ``key`` sends to."""
        stage = self._plan.stages[key[0]]
        hosts = self._hosts
        peers: dict[Key, ObjectProxy] = {
            (out.stage, r): hosts[(out.stage, r)].proxy
            for out in stage.outputs
            for r in range(out.replicas)
        }
        if self._plan.node(stage.nodes[-1]).kind == "respond":
            # it tells the requests replicas (stage 0) the first answers of keys
            peers.update(
                {(0, r): hosts[(0, r)].proxy for r in range(self._plan.stages[0].replicas)}
            )
        return peers

    def _call(self, host: _Host, method: str, event: tuple[Any, ...], *args: Any) -> None:
        pending: Pending[Any] = getattr(host.proxy, method)(*args)
        pending._on_settle(lambda p: self._events.put((*event, p)))

    def _watch(self, host: _Host) -> None:
        self._call(host, "watch", ("watch", host, self._attempt), self._config.heartbeat)

    # ---- events --------------------------------------------------------------------------

    def _on_event(self, event: tuple[Any, ...]) -> list[Settle]:
        kind = event[0]
        if kind == "cancel":
            return self._control(self._controller.handle(Cancel()))
        if kind == "reshape":  # a service's scale or move: done here, between two events
            return rehost(self, event[1], event[2])
        host: _Host = event[1]
        pending: Pending[Any] = event[-1]
        if self._hosts.get(host.key) is not host:
            return []  # from an attempt that is over
        error = pending._error
        if kind == "ack":
            self._credits["client"].ack(host.key, event[2])
            if error is not None:
                return delivery_failed(self, host, event[3], error)
            if isinstance(pending._value, float):  # how long the host took: the next's size
                self._sizes[host.key].learn(event[4].items(), pending._value, event[4].size)
            return []
        if error is not None:
            what = {"ready": "could not be created", "watch": "stopped answering"}
            return fail_host(self, host, f"{what.get(kind, 'failed')}: {error}", lost_info(error))
        if kind == "ready":
            host.ready = True
        elif kind == "info":
            with self._lock:
                host.info = _value(pending)
        elif kind == "watch":
            reports, tally, stats = _value(pending)
            host.heard = time.monotonic()
            with self._lock:
                host.tally, host.stats = tally, stats
            settles: list[Settle] = []
            for report in reports:
                settles += reported(self, report)  # a service may replace lost hosts
            if self._controller.stopped is None and self._hosts.get(host.key) is host:
                self._watch(host)
            return settles
        return []

    def _control(self, actions: list[Any]) -> list[Settle]:
        settles = []
        for action in actions:
            if isinstance(action, Deliver):
                self._send(self._hosts[(action.stage, action.replica)], "ctl", [action.event])
            elif isinstance(action, Settle):
                settles.append(action)
        return settles

    def _send(
        self, host: _Host, channel: str, events: list[ReplicaEvent], credited: bool = False
    ) -> None:
        seq = self._credits[channel].send(host.key, credited)
        packed = Packed(events)
        ack = ("ack", host, seq if credited else -1, events, packed)
        try:
            pending = host.proxy.deliver(channel, seq, packed, credited)
        except SerializationError as exc:
            self._events.put((*ack, _failed(self._cluster, exc)))
            return
        if credited:
            pending._on_settle(lambda p: self._events.put((*ack, p)))
        else:
            pending._on_settle(lambda p: None if p._error is None else self._events.put((*ack, p)))

    def _feed(self) -> None:
        """Send source batches while the receiving replicas have credit."""
        moved = True
        while moved:
            moved = False
            for feed in self._feeds:
                if feed.ended or self._controller.stopped is not None:
                    continue
                host = self._hosts[(feed.stage.id, feed.turn)]
                if self._credits["client"].blocked(host.key):
                    continue
                items, ended = feed.read(self._sizes[host.key].items)
                if items:
                    self._send(host, "client", [Batch(0, 0, items, now=time.time())], True)
                    feed.turn = (feed.turn + 1) % feed.stage.replicas
                    moved = True
                if ended:
                    feed.ended = True
                    for r in range(feed.stage.replicas):
                        self._send(self._hosts[(feed.stage.id, r)], "client", [End(0, 0)])

    def _finish(self) -> None:
        """Ask every live host for its final counts (so that the last progress is exact and
        no watch is left waiting on a closed object); a bounded wait."""
        asked = set()
        for host in self._hosts.values():
            if host.ready and host.heard:
                self._call(host, "finish", ("finish", host))
                asked.add(host.key)
        deadline = time.monotonic() + FINISH_TIMEOUT
        while asked:
            try:
                event = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if event[0] == "finish":
                host, pending = event[1], event[2]
                asked.discard(host.key)
                if pending._error is None:
                    with self._lock:
                        host.tally, host.stats = _value(pending)

    def _close(self) -> None:
        for proxy in self._kept:
            with contextlib.suppress(Exception):
                proxy.close()
        for host in self._hosts.values():
            # Best effort: the owner's exit closes them too.
            with contextlib.suppress(Exception):
                host.proxy.close()


def _value(pending: Pending[Any]) -> Any:
    value = pending._value
    if isinstance(value, RemoteValue):
        return value.fetch(60)
    return value


def _failed(cluster: Cluster, error: BaseException) -> Pending[Any]:
    pending: Pending[Any] = Pending(cluster)
    pending._settle(error=error)
    return pending
