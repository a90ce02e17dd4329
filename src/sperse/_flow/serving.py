"""Services, the client side: ``Flow.serve`` starts one, ``sperse.service`` finds one, and
a :class:`Service` sends requests and settles their Pendings with the answers.

A request is an :class:`~sperse._flow.service.Envelope`: the client session's id (random,
one per ``Service`` object), a request id, the value, and an idempotency key. How it
travels depends on where the service runs:

- **In this process** (``routes.InProcess``): the envelope is pushed into the requests
  source's queue; the in-process executor calls :meth:`Service._answered` with what the
  respond replica emits.
- **On servers** (``routes.OnServers``): the envelope goes straight from this client to the
  host of a requests replica (``request(channel, seq, batch)``, one channel per client, so
  a client's requests stay in order; gathered into one delivery under load). The respond replica's host keeps each answer in a
  mailbox per client; this client long-polls each respond replica's ``take`` while it has
  requests waiting. An answer goes from the server that made it to the client that asked:
  never through the coordinator or the client that started the service.

``scale``/``move`` (the client that served it) reshape the running service: the executor
quiesces it, rebuilds the replicas for the new plan and hands keyed state over by key
(:mod:`sperse._flow.reshape`, on servers :mod:`sperse._flow.rehost`).

``stop()`` (the client that served it) drains: new requests raise ``ServiceStopped``; those
sent already reach the requests replicas, then the source ends, every request in flight
is answered, and the flow ends.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sperse._cluster.cluster import Cluster, default, detached, in_use
from sperse._cluster.objects import ObjectProxy, RemoteClass, get_object
from sperse._cluster.pending import Pending
from sperse._flow.awaits import is_async
from sperse._flow.calls import CALLING
from sperse._flow.cards import SERVICE_CARD, CardReporter, ServiceCard
from sperse._flow.local import PushQueue
from sperse._flow.nested import Nested, nested_depth, time_left
from sperse._flow.routes import InProcess, OnServers, Route
from sperse._flow.service import Answer, Envelope, Swap
from sperse.errors import (
    ServiceStopped,
    TaskTimeout,
    UnknownObject,
    UsageError,
    did_you_mean,
)

if TYPE_CHECKING:
    from sperse._flow.plan import LogicalPlan, Node, PhysicalPlan
    from sperse._lang.placement import Placement


class RunLike(Protocol):
    """The run of a service's flow (``api.Run``), as a Service uses it."""

    _handle: Any
    plan: PhysicalPlan
    started_at: float
    ended_at: float | None

    def done(self) -> bool: ...

    def hosts(self) -> list[dict[str, Any]]: ...

    def result(self, timeout: float | None = None) -> Any: ...

    def operators(self) -> list[Any]: ...


__all__ = ["SERVICE_CARD", "Service", "ServiceCard", "service", "services", "start_service"]

STOP_TIMEOUT = 60.0  # seconds stop() waits for the requests in flight to be answered
_CARD = SERVICE_CARD
_COPY = "sperse.service-copy:"  # its copies, for remote code to find on its own server
SWAPPABLE = frozenset({"map", "map_async", "key_by", "scan", "map_values", "inspect"})


class Service:
    """A running service: ``request(x)`` returns a Pending of its answer at once.

    Made by ``Flow.serve(name)`` (the owner, which may ``stop`` it) or
    ``sperse.service(name)`` (any client of the cluster)."""

    def __init__(self, name: str, flow: str, cluster: Cluster, *, owner: RunLike | None) -> None:
        self.name = name
        self.flow = flow
        self.cluster = cluster
        self.client = uuid.uuid4().hex  # this client session's return address
        self._run = owner
        self._route: Route | None = None
        self._lock = threading.Lock()
        self._reshaping = threading.Lock()  # one scale/move at a time
        self._rids = itertools.count()
        self._waiting: dict[int, Pending[Any]] = {}
        self._by_key: dict[Any, Pending[Any]] = {}
        self._stopped = False
        self._failure: BaseException | None = None
        self.sent = 0
        self.answered = 0
        self.started_at = time.monotonic()
        self.generation = 0  # served by this process: the count of services served then
        self._shared = False  # the client that this process's async operators' calls share
        self._reporter: CardReporter | None = None  # served on servers: pushes to its card
        self.retries = 0  # request's default: sends again of a request lost with a server

    # ---- the public API ------------------------------------------------------------------

    def request(
        self, x: Any, timeout: float | None = None, key: Any = None, retries: int | None = None
    ) -> Pending[Any]:
        """Send ``x`` to the service; a Pending of its answer, at once. ``timeout``: the
        Pending fails with ``TaskTimeout`` if no answer came within that many seconds.
        ``key``: an idempotency key: a request sent again with the same key (a retry) is
        not run again; it gets the same Pending, so the same answer. ``retries`` (default:
        this Service's ``retries``): how many times it is sent again when it was lost with
        a server on its way through operators that keep no state (else it fails with
        ``ServerLost``). Raises ``ServiceStopped`` once the service was stopped."""
        if key is not None:
            with self._lock:
                known = self._by_key.get(key)
            if known is not None:
                return known
        if self._stopped:
            failure = self._failure
            why = f" (it failed: {failure})" if failure is not None else ""
            raise ServiceStopped(
                f"service {self.name!r} has stopped{why}: it takes no more requests; serve "
                "the flow again (a new Flow) to start it again"
            ) from failure
        route = self._route
        assert route is not None
        depth = nested_depth(self.name)
        if depth and timeout is None:
            timeout = time_left()  # a call's request ends with the call, at the latest
        with self._lock:
            rid = next(self._rids)
            label = f"{self.name}.request#{rid}"
            pending: Pending[Any] = (
                Pending(self.cluster, label=label) if not depth else Nested(self.cluster, label)
            )
            self._waiting[rid] = pending
            if key is not None:
                self._by_key[key] = pending
            self.sent += 1
        envelope = Envelope(self.client, rid, x, key=key, depth=depth)
        try:
            route.send(envelope, self.retries if retries is None else retries)
        except BaseException:
            with self._lock:
                self._waiting.pop(rid, None)
                if key is not None:
                    self._by_key.pop(key, None)
            raise
        if timeout is not None:
            _DEADLINES.add(time.monotonic() + timeout, self, rid, timeout)
        return pending

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the service, draining it: new requests raise ``ServiceStopped``, those in
        flight are answered, then the flow ends (only the client that served it)."""
        run = self._run
        if run is None:
            raise UsageError(
                f"service {self.name!r} was started by another client: only the client that "
                "served it can stop it"
            )
        self._stopped = True
        route = self._route
        assert route is not None
        route.drain(timeout)
        try:
            run.result(timeout)
        finally:
            if self._reporter is not None:
                self._reporter.close()
            route.close()  # the run ended once every answer was received: none is left
            _SERVICES.pop(self.name, None)
            self._fail_waiting(
                ServiceStopped(f"service {self.name!r} stopped before answering this request")
            )

    def close(self) -> None:
        """Stop listening for answers (a client of a service it did not start); requests
        still waiting fail with ``ServiceStopped``."""
        if self._run is not None:
            self.stop()
            return
        self._stopped = True
        if self._route is not None:
            self._route.close()
        self._fail_waiting(ServiceStopped(f"this client of service {self.name!r} was closed"))

    def update(self, name: str, fn: Callable[..., Any], timeout: float | None = 60.0) -> None:
        """Swap the function of the operator called ``name`` for ``fn`` in every replica,
        between two batches: its keyed state is kept, and no request is lost or answered
        twice (the requests before the swap get the old function, those after the new).
        Returns once every replica has it (the client that served it)."""
        run = self._owned("update")
        plan = run.plan
        node = self._operator(run, name)
        if node.kind not in SWAPPABLE:
            raise ValueError(f"{name}: a {node.kind} has no function to update")
        if not callable(fn):
            raise TypeError(f"update({name!r}, fn): fn must be callable, not {fn!r}")
        if is_async(fn) != (node.kind == "map_async"):
            what = "an async" if node.kind == "map_async" else "a plain"
            raise TypeError(
                f"update({name!r}, fn): {name!r} is {what} operator, and fn must be so too "
                "(an async def function for an async map, a plain one otherwise)"
            )
        event = Swap(name, fn)
        handle = run._handle
        if isinstance(handle, HasHosts):
            proxies = handle.proxies()
            stage = plan.stages[plan.stage_of[node.id]]
            calls = [proxies[(stage.id, r)].swap(name, fn) for r in range(stage.replicas)]
            for call in calls:
                call.result(timeout)
        elif not handle.swap(event, timeout):
            raise TimeoutError(f"update of {name!r} was not applied within {timeout} s")
        node_args = (fn, *node.args[1:]) if node.kind != "scan" else (node.args[0], fn)
        plan.logical.set_args(node.id, node_args)

    def scale(self, name: str, replicas: int | str, timeout: float | None = 60.0) -> None:
        """Run the operator called ``name`` as ``replicas`` replicas (an int, or
        ``"per_server"``) from now on: at a batch boundary, with nothing in flight, its
        keyed state is repartitioned by key over the new replicas; no request is lost or
        answered twice, and the requests of one key are still answered in order. Returns
        once the service runs so (the client that served it)."""
        self._reshape("scale", name, None, replicas, timeout)

    def move(self, name: str, on: str, timeout: float | None = 60.0) -> None:
        """Run the operator called ``name`` where ``on`` says (a placement as ``.on(...)``
        and ``remote[...]`` take it: ``"gpu & !slow"``, ``"@server-2"``) from now on, its
        keyed state carried over, as ``scale`` does (the client that served it)."""
        from sperse._lang.placement import parse_placement

        if not isinstance(on, str) or not on:
            raise TypeError(f"move({name!r}, on=...): on is a placement such as '@server-2'")
        self._reshape("move", name, parse_placement(on), None, timeout)

    def _reshape(
        self,
        verb: str,
        name: str,
        placement: Placement | None,
        replicas: int | str | None,
        timeout: float | None,
    ) -> None:
        run = self._owned(verb)
        logical = run.plan.logical
        node = self._operator(run, name)
        if node.kind in ("source", "respond"):
            raise ValueError(
                f"{verb}({name!r}): a service's {node.kind} cannot be reshaped (its clients "
                "send to and take answers from its replicas); reshape the operators between"
            )
        handle = run._handle
        if not isinstance(handle, Reshapes):
            raise UsageError(
                f"service {self.name!r} runs on an executor that cannot {verb} its "
                "operators (the in-process and the server executors can)"
            )
        if not self.running:
            raise ServiceStopped(f"service {self.name!r} has stopped: there is nothing to {verb}")
        with self._reshaping:
            node = self._operator(run, name)  # as the last reshape left it
            was = (node.placement, node.replicas)
            logical.place(node.id, placement, replicas)  # type: ignore[arg-type]
            try:
                plan = handle.reshape(logical, timeout)
            except BaseException:
                logical.place(node.id, *was)
                raise
            if plan is not None:
                run.plan = plan
        if plan is None and not self.running:
            raise ServiceStopped(f"service {self.name!r} stopped before its {verb} was applied")
        if plan is None:
            raise TimeoutError(
                f"{verb} of {name!r} was not applied within {timeout} s (it may still be)"
            )

    def _owned(self, verb: str) -> RunLike:
        run = self._run
        if run is None:
            raise UsageError(
                f"service {self.name!r} was started by another client: only the client that "
                f"served it can {verb} it"
            )
        return run

    def _operator(self, run: RunLike, name: str) -> Node:
        nodes = {n.name: n for n in run.plan.logical.nodes}
        node = nodes.get(name)
        if node is None:
            raise ValueError(
                f"service {self.name!r} has no operator called {name!r}" + did_you_mean(name, nodes)
            )
        return node

    @property
    def running(self) -> bool:
        return not self._stopped and (self._run is None or not self._run.done())

    @property
    def waiting(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._waiting)

    def operators(self) -> list[Any]:
        """The service's operators as ``OperatorStats`` (the client that served it)."""
        return self._run.operators() if self._run is not None else []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Service {self.name!r}: {state}, {self.sent} requests, {self.waiting} waiting>"

    # ---- answers -------------------------------------------------------------------------

    def _answered(self, answers: list[Answer]) -> None:
        """Settle the Pendings of ``answers`` (any thread)."""
        for answer in answers:
            if answer.client != self.client:
                continue
            with self._lock:
                pending = self._waiting.pop(answer.rid, None)
                if pending is not None:
                    self.answered += 1
            if pending is None:
                continue  # timed out already
            if answer.error is not None:
                pending._settle(error=answer.error.to_exception(self.flow))
            else:
                pending._settle(answer.value)

    def _failed(self, rid: int, error: BaseException) -> None:
        with self._lock:
            pending = self._waiting.pop(rid, None)
        if pending is not None:
            pending._settle(error=error)
        if self._shared and isinstance(error, ServiceStopped) and self._route is not None:
            self._stopped = True  # gone: the next sperse.service(name) in a call looks again
            self._route.close()

    def _timed_out(self, rid: int, timeout: float) -> None:
        self._failed(
            rid,
            TaskTimeout(
                f"request #{rid} to service {self.name!r} got no answer within {timeout} s"
            ),
        )

    def _ended(self, responded: Pending[Any]) -> None:
        """The service's run ended (its respond sink settled): after ``stop``, or failed
        (a server lost): the requests still waiting fail with why."""
        self._stopped = True
        error = responded._error
        if error is not None:
            self._failure = error
            self._fail_waiting(error)

    def _fail_waiting(self, error: BaseException) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for pending in waiting.values():
            pending._settle(error=error)


class _Deadlines:
    """The requests' timeouts, for every Service of this process: one thread, started on
    first use, that fails each request still waiting at its deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[Service], int, float]] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, svc: Service, rid: int, timeout: float) -> None:
        with self._cond:
            heapq.heappush(
                self._heap, (deadline, next(self._order), weakref.ref(svc), rid, timeout)
            )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sperse-service-timeouts", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, ref, rid, timeout = heapq.heappop(self._heap)
            svc = ref()
            if svc is not None:
                svc._timed_out(rid, timeout)


_DEADLINES = _Deadlines()


@runtime_checkable
class Reshapes(Protocol):
    """A run that can take a new plan while it runs (``Service.scale``/``move``)."""

    def reshape(self, logical: LogicalPlan, timeout: float | None) -> PhysicalPlan | None: ...


@runtime_checkable
class HasHosts(Protocol):
    """A run on servers, as a service needs it (``servers._Driver``)."""

    def proxies(self) -> dict[tuple[int, int], ObjectProxy]: ...

    def keep(self, proxy: ObjectProxy) -> None: ...


# -- starting and finding ----------------------------------------------------------------------

_SERVICES: dict[str, Service] = {}  # the services this process serves, by name
_ALL: weakref.WeakSet[Service] = weakref.WeakSet()  # and every Service object here
_SERVED = itertools.count(1)  # Service.generation of the services this process serves


def start_service(
    name: str,
    flow: str,
    cluster: Cluster,
    plan: PhysicalPlan,
    start: Callable[[Callable[[list[Answer]], None]], RunLike],
    responded: Pending[Any],
) -> Service:
    """Start ``plan`` (of the flow called ``flow``) as the service ``name``: ``start(answer)``
    starts its run, with ``answer`` to call with the answers an in-process executor makes."""
    if name in _SERVICES and _SERVICES[name].running:
        raise ValueError(f"a service called {name!r} is running already here: stop it first")
    node = next(n for n in plan.logical.nodes if n.kind == "source")
    push: PushQueue = node.args[1]
    holder: list[Service] = []

    def answer(answers: list[Answer]) -> None:
        holder[0]._answered(answers)

    run = start(answer)
    svc = Service(name, flow, cluster, owner=run)
    holder.append(svc)
    handle = run._handle
    if not isinstance(handle, HasHosts):
        svc._route = InProcess(push)
    else:
        proxies = handle.proxies()  # waits for the hosts to start
        sources, responds = _of(plan, proxies, "source"), _of(plan, proxies, "respond")
        svc._route = OnServers(svc, sources, responds, push)
        weakref.finalize(svc, svc._route.close)
        # The card on the first server and a copy on each other one: remote code (an async
        # operator's call) looks for either on the server it runs on.
        names = [f"@{s.name}" for s in cluster.servers()]
        cards = [(_CARD, names[0] if names else None)] + [(_COPY, on) for on in names[1:]]
        ready, main_card = [], None
        for prefix, on in cards:
            card = RemoteClass(ServiceCard).options(name=prefix + name, on=on)
            made = card.create_on(cluster, (name, flow, sources, responds), {})
            handle.keep(made)
            if prefix == _CARD:
                main_card = made
            created = threading.Event()
            made._when_ready(functools.partial(_set, created))
            ready.append(created)
        deadline = time.monotonic() + 60.0
        for created in ready:  # so that sperse.service finds it as soon as serve returns
            created.wait(max(0.0, deadline - time.monotonic()))
        if main_card is not None:  # its operators, replicas and rates, for sperse status
            svc._reporter = CardReporter(svc, main_card)
    responded._on_settle(svc._ended)  # the run ended: stopped, or failed
    _SERVICES[name] = svc
    _ALL.add(svc)
    svc.generation = next(_SERVED)
    return svc


def _set(event: threading.Event, _: object) -> None:
    event.set()


def _of(plan: PhysicalPlan, proxies: dict[tuple[int, int], ObjectProxy], kind: str) -> list[Any]:
    """The hosts of the replicas of the operator of ``kind`` (the first one), in order."""
    node = next(n for n in plan.logical.nodes if n.kind == kind)
    stage = plan.stages[plan.stage_of[node.id]]
    return [proxies[(stage.id, r)] for r in range(stage.replicas)]


def service(name: str) -> Service:
    """The running service ``name``: served by this process, or found on the servers of the
    current cluster (served by any of its clients)."""
    if CALLING.get() is not None:
        return _called(name)
    here = in_use() or default() or detached()
    mine = _SERVICES.get(name)
    if mine is not None and mine.running and mine.cluster is here:
        return mine
    return _found(name, here)


def _called(name: str) -> Service:
    """``service(name)`` in an async operator's call: served by this process (a flow in
    process), else one client of it per process, kept (a host's calls share it), found on
    the cluster its code runs in (a server's worker: that server's)."""
    from sperse._cluster.connect import current

    mine = _SERVICES.get(name)
    if mine is not None and mine.running:
        return mine
    with _CALLED_LOCK:
        known = _CALLED.get(name)
        if known is None or not known.running:
            known = _CALLED[name] = _found(name, current(), (_CARD, _COPY))
            known._shared = True
        return known


_CALLED: dict[str, Service] = {}  # the clients of services that calls in this process use
_CALLED_LOCK = threading.Lock()


def _found(name: str, here: Cluster, prefixes: tuple[str, ...] = (_CARD,)) -> Service:
    """A client of the service ``name`` served on ``here``'s servers, by its card (named
    with the first of ``prefixes`` found)."""
    from sperse._cluster.connect import current

    if not here.servers():
        raise UnknownObject(
            f"no service called {name!r} is running in this process, and there is no "
            f"cluster with servers to look on: serve a flow with f.serve({name!r}) first"
        )
    for prefix in prefixes:
        with contextlib.suppress(UnknownObject):
            card = get_object(prefix + name)
            break
    else:
        raise UnknownObject(
            f"no service called {name!r} is running on this cluster: serve a flow with "
            f"f.serve({name!r}) first (sperse.services() lists those of this process)"
        )
    found = card.routes().result(60)
    _, flow, sources, responds = found
    cluster = current()
    svc = Service(name, flow, cluster, owner=None)
    svc._route = OnServers(svc, sources, responds, None)
    weakref.finalize(svc, svc._route.close)  # its threads end with it
    _ALL.add(svc)
    return svc


def services() -> list[Service]:
    """The Service objects of this process that are still referenced (what ``%services``
    shows), the oldest first."""
    return sorted(_ALL, key=lambda s: s.started_at)
