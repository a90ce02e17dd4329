"""``ClusterBackend``: many ``sperse server``s, from a fixed list or a coordinator.

One ``SperseBackend`` per server does the talking; this class decides where each task
goes (the ``Router``: constraints, pins, locality, load, round robin) and keeps what a
task needs to go elsewhere when its server is lost.

Scheduling: a task is sent to a server only while the server has room, fewer than
``_depth(workers)`` tasks of this client in flight there; the rest wait here, in order, and
are sent as tasks end. So a long map keeps every server fed, a server that joins mid-run
gets the tasks still waiting, and a lost server takes few tasks down with it. Tasks whose
server is lost (its stream broke for good, or the coordinator dropped it) run again on
another eligible server, at most ``max_reroutes`` times, unless they were pinned to it or
use a value only it held: those fail with ``ServerLost``.

Threads: every member's events arrive on its own I/O thread. All scheduling state is
under ``_lock``; sub-backends are called, and events forwarded, outside it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sperse._backends.sperse import (
    DEFAULT_INLINE_LIMIT,
    EmbeddedServer,
    SperseBackend,
    TaskOutputLog,
)
from sperse._core import (
    BackendEvent,
    CallTask,
    Done,
    ErrorInfo,
    EventSink,
    Failed,
    ObjectCall,
    ObjectCreate,
    ObjectInfo,
    ServerInfo,
    StatementTask,
    TaskSpec,
)
from sperse._core.routing import Busy, Router, check_placement, input_locations
from sperse._wire.urls import parse_url
from sperse.errors import NoMatchingServer, SerializationError, ServerUnavailable, SperseError

__all__ = ["ClusterBackend", "is_coordinator"]

log = logging.getLogger("sperse.cluster")


def _depth(workers: int) -> int:
    """Tasks of this client in flight on a server: its workers busy, as many queued behind."""
    return 2 * max(1, workers) + 2


@dataclass(eq=False, slots=True)
class _Member:
    name: str
    address: str
    backend: SperseBackend
    joined: float = 0.0  # the coordinator's join time: a change means a restarted server
    alive: bool = True
    inflight: set[str] = field(default_factory=set)
    # What the router sees, rebuilt only when `inflight` changes: a decision among 100
    # servers must not build 100 ServerInfo.
    info: ServerInfo = field(default_factory=lambda: ServerInfo(""))
    depth: int = 0  # tasks of this client it may have in flight

    def __post_init__(self) -> None:
        welcome = self.backend.servers()
        base = welcome[0] if welcome else ServerInfo(self.name)
        self.info = replace(base, address=self.address, busy=0)
        self.depth = _depth(base.workers)

    def add(self, task_id: str) -> None:
        self.inflight.add(task_id)
        self.info = replace(self.info, busy=len(self.inflight))

    def discard(self, task_id: str) -> None:
        self.inflight.discard(task_id)
        self.info = replace(self.info, busy=len(self.inflight))


@dataclass(eq=False, slots=True)
class _Flight:
    spec: TaskSpec
    member: _Member | None = None  # None: waiting here
    reroutes: int = 0
    key: str = ""  # its placement, as text: tasks alike share a decision

    def __post_init__(self) -> None:
        self.key = str(self.spec.placement)


class ClusterBackend:
    """Runs tasks on many servers: ``urls`` (a fixed list), or the members a
    ``coordinator`` lists, followed live as servers join and leave."""

    balances_load = True  # map/reduce need not pin chunks to servers: this backend spreads them

    def __init__(
        self,
        urls: Sequence[str] = (),
        *,
        coordinator: str | None = None,
        token: str,
        tls_ca: bytes | None = None,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 5.0,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        max_reroutes: int = 3,
        processes: Sequence[EmbeddedServer] = (),
    ) -> None:
        """``processes``: servers this backend owns, stopped by ``close``."""
        if not urls and coordinator is None:
            raise ValueError("give server urls, or a coordinator")
        self._urls = [parse_url(u) for u in urls]
        self._coordinator = coordinator
        self._token = token
        self._tls_ca = tls_ca
        self._connect_timeout = connect_timeout
        self._reconnect_timeout = reconnect_timeout
        self._inline_limit = inline_limit
        self._max_reroutes = max_reroutes
        self._processes = list(processes)
        self._sink: EventSink | None = None
        self._lock = threading.Lock()
        self._members: dict[str, _Member] = {}
        self._connecting: set[str] = set()  # names being connected (coordinator mode)
        self._flights: dict[str, _Flight] = {}
        self._waiting: collections.deque[str] = collections.deque()  # task ids, in order
        self._router = Router()
        self._pending_failures: list[Failed] = []  # found under _lock, emitted outside it
        self._watch: Any = None
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        """Connect to every server (raises for a server of a fixed list that does not
        answer, or a coordinator that refuses the token)."""
        self._sink = sink
        if self._coordinator is not None:
            from sperse._coordinator.client import MembershipWatch

            self._watch = MembershipWatch(
                self._coordinator,
                self._token,
                tls_ca=self._tls_ca,
                on_change=self._on_membership,
                connect_timeout=self._connect_timeout,
            )
            members = self._watch.start()
            self._join([(m.name, m.address, m.joined) for m in members], strict=False)
            return
        try:
            self._join([("", address, 0.0) for address in self._urls], strict=True)
        except BaseException:
            self.close()
            raise

    def _join(self, wanted: Sequence[tuple[str, str, float]], *, strict: bool) -> None:
        """Connect to servers, in parallel. ``strict``: the first failure is raised."""
        errors: list[BaseException] = []
        joined: list[_Member] = []

        def connect(name: str, address: str, since: float) -> None:
            try:
                joined.append(_Member(name, address, self._open(address), since))
            except BaseException as exc:
                errors.append(exc)
                log.warning("cannot connect to server %s at %s: %s", name, address, exc)
            finally:
                with self._lock:
                    self._connecting.discard(name)

        threads = [
            threading.Thread(target=connect, args=w, name=f"sperse-join-{w[1]}", daemon=True)
            for w in wanted
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with self._lock:
            unused = []  # two urls for one server, or this backend closed meanwhile
            for member in joined:
                member.name = member.backend.name
                old = self._members.get(member.name)
                if self._closed or (old is not None and old.alive):
                    unused.append(member)
                    continue
                self._members[member.name] = member
            sends = self._pump() if not self._closed else []
        for member in unused:
            member.backend.close()
        if strict and errors:
            raise errors[0]
        self._send(sends)

    def _open(self, address: str) -> SperseBackend:
        backend = SperseBackend(
            address,
            token=self._token,
            tls_ca=self._tls_ca,
            tls=self._tls_ca is not None,
            connect_timeout=self._connect_timeout,
            reconnect_timeout=self._reconnect_timeout,
            inline_limit=self._inline_limit,
            locate=self._locate,
        )
        backend.start(functools.partial(self._on_event, backend))
        return backend

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            members = list(self._members.values())
        if self._watch is not None:
            self._watch.close()
        closers = [
            threading.Thread(target=m.backend.close, name="sperse-close", daemon=True)
            for m in members
        ]
        for thread in closers:
            thread.start()
        for thread in closers:
            thread.join(10)
        for process in self._processes:
            process.stop()

    # ---- membership ----------------------------------------------------------------

    def _on_membership(self, members: Sequence[Any]) -> None:
        """A coordinator's snapshot (on the watch's thread): connect to new servers, drop
        the ones that left (their tasks go elsewhere)."""
        listed = {m.name: m for m in members}
        with self._lock:
            if self._closed:
                return
            gone = [
                m
                for name, m in self._members.items()
                if m.alive and (name not in listed or listed[name].joined != m.joined)
            ]
            new = [
                (m.name, m.address, m.joined)
                for m in members
                if m.name not in self._connecting
                and (
                    m.name not in self._members
                    or not self._members[m.name].alive
                    or self._members[m.name].joined != m.joined
                )
            ]
            self._connecting.update(name for name, _, _ in new)
        for member in gone:
            self._lose(member, "it left the cluster (the coordinator no longer lists it)")
        if new:
            threading.Thread(
                target=self._join, args=(new,), kwargs={"strict": False}, daemon=True
            ).start()

    def _lose(self, member: _Member, why: str) -> None:
        """``member`` is gone: its tasks go elsewhere or fail; its connection closes."""
        with self._lock:
            if not member.alive or self._closed:
                return
            member.alive = False
            self._router.forget(member.name)
            flights = [self._flights[t] for t in member.inflight if t in self._flights]
            member.inflight.clear()
            member.info = replace(member.info, busy=0)
            failed: list[Failed] = []
            for flight in flights:
                flight.member = None
                reason = self._cannot_reroute(flight, member.name)
                if reason:
                    del self._flights[flight.spec.task_id]
                    failed.append(self._lost_event(flight, member.name, f"{why}; {reason}"))
                else:
                    flight.reroutes += 1
                    self._waiting.appendleft(flight.spec.task_id)
            sends = self._pump()
        moved = len(flights) - len(failed)
        log.warning(
            "server %s lost: %s; %s moved elsewhere, %s failed",
            member.name,
            why,
            _count(moved, "task"),
            _count(len(failed), "task"),
        )
        for event in failed:
            self._emit(event)
        self._send(sends)
        threading.Thread(target=member.backend.close, name="sperse-close", daemon=True).start()

    def _cannot_reroute(self, flight: _Flight, server: str) -> str:
        """Why a task of a lost server cannot run elsewhere ("" if it can)."""
        spec = flight.spec
        if spec.placement.pin == server:
            return f"it was pinned to {server}"
        if flight.reroutes >= self._max_reroutes:
            return f"it was moved {flight.reroutes} times already"
        if server in input_locations(_inputs(spec)):
            return f"it uses a value that only {server} held"
        return ""

    def _lost_event(self, flight: _Flight, server: str, why: str) -> Failed:
        return Failed(
            flight.spec.task_id,
            server,
            ErrorInfo("server_lost", "ServerLost", f"lost with server {server}: {why}"),
        )

    def _locate(self, name: str) -> str | None:
        member = self._members.get(name)
        return member.address if member is not None and member.alive else None

    # ---- scheduling ----------------------------------------------------------------

    def _live(self) -> list[_Member]:
        return [m for m in self._members.values() if m.alive]

    def _pump(self) -> list[tuple[_Member, list[TaskSpec]]]:
        """Assign waiting tasks to servers with room (under ``_lock``); returns the sends.

        Tasks whose placement found no room are kept in order; later tasks with the same
        placement are not tried again in this pass (one failed decision per placement)."""
        if not self._waiting:
            return []
        members = self._live()
        room = {m.name: m.depth - len(m.inflight) for m in members}
        by_name = {m.name: m for m in members}
        sends: dict[str, list[TaskSpec]] = {}
        kept: collections.deque[str] = collections.deque()
        failed: list[Failed] = []
        blocked: set[str] = set()  # placements that found no room in this pass
        while self._waiting:
            task_id = self._waiting.popleft()
            flight = self._flights.get(task_id)
            if flight is None:
                continue
            if not any(r > 0 for r in room.values()):
                kept.append(task_id)
                kept.extend(self._waiting)
                self._waiting.clear()
                break
            if flight.key in blocked:
                kept.append(task_id)
                continue
            spec = flight.spec
            servers = [by_name[n].info for n, r in room.items() if r > 0]
            what = spec.label or spec.task_id
            try:
                chosen = self._router.pick_server(
                    spec.placement, servers, input_locations(_inputs(spec)), what=what
                )
            except NoMatchingServer:
                try:  # none with room, or none at all?
                    check_placement(spec.placement, [m.info for m in members], what)
                except NoMatchingServer as exc:
                    del self._flights[task_id]
                    failed.append(
                        Failed(task_id, "", ErrorInfo("no_server", "NoMatchingServer", str(exc)))
                    )
                    continue
                blocked.add(flight.key)
                kept.append(task_id)
                continue
            if isinstance(chosen, Busy):
                blocked.add(flight.key)
                kept.append(task_id)
                continue
            member = by_name[chosen.name]
            room[member.name] -= 1
            self._assign(flight, member, sends)
        self._waiting = kept
        self._pending_failures.extend(failed)
        return [(by_name[name], specs) for name, specs in sends.items()]

    def _assign(self, flight: _Flight, member: _Member, sends: dict[str, list[TaskSpec]]) -> None:
        spec = flight.spec
        self._router.reserve(member.name, spec.placement.resources)
        flight.member = member
        member.add(spec.task_id)
        sends.setdefault(member.name, []).append(spec)

    def _send(
        self, sends: Sequence[tuple[_Member, list[TaskSpec]]], *, raise_: bool = False
    ) -> None:
        """Hand assigned tasks to their servers (outside ``_lock``). Work that cannot be
        pickled fails (or, from ``submit``, raises); a server lost meanwhile is ``_lose``."""
        for event in self._take_failures():
            self._emit(event)
        error: SerializationError | None = None
        for member, specs in sends:
            try:
                member.backend.submit(specs)
            except SerializationError as exc:
                with self._lock:
                    for spec in specs:
                        self._finish(spec.task_id, member)
                    more = self._pump()
                if raise_:
                    error = error or exc
                else:
                    for spec in specs:
                        info = ErrorInfo("serialization", type(exc).__name__, str(exc))
                        self._emit(Failed(spec.task_id, member.name, info))
                self._send(more)
            except SperseError as exc:  # lost before they went: _lose moves them on
                self._lose(member, str(exc))
        if error is not None:
            raise error

    def _take_failures(self) -> list[Failed]:
        with self._lock:
            failures, self._pending_failures = self._pending_failures, []
        return failures

    def _finish(self, task_id: str, member: _Member | None) -> _Flight | None:
        """The task is over (under ``_lock``): forget it, free its room and resources."""
        flight = self._flights.pop(task_id, None)
        if flight is not None and member is not None:
            member.discard(task_id)
            self._router.release(member.name, flight.spec.placement.resources)
        return flight

    def _on_event(self, backend: SperseBackend, event: BackendEvent) -> None:
        """An event of one server (on its I/O thread)."""
        with self._lock:
            flight = self._flights.get(event.task_id)
            member = flight.member if flight is not None else None
            if member is None or member.backend is not backend:
                return  # a task moved elsewhere, cancelled, or ended already
            lost = isinstance(event, Failed) and event.error.kind == "server_lost"
            sends: list[tuple[_Member, list[TaskSpec]]] = []
            if isinstance(event, Done | Failed) and not lost:
                self._finish(event.task_id, member)
                sends = self._pump()
        if lost:
            self._lose(member, event.error.message)  # type: ignore[union-attr]
            return
        self._emit(event)
        self._send(sends)

    def _emit(self, event: BackendEvent) -> None:
        sink = self._sink
        if sink is not None and not self._closed:
            sink(event)

    # ---- the Backend protocol ------------------------------------------------------

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        with self._lock:
            if self._closed:
                raise ServerUnavailable("this cluster is closed")
            members = self._live()
            if not members:
                raise NoMatchingServer(
                    "no server in the cluster: start one (sperse server --join COORDINATOR, "
                    "or sperse up)"
                )
            infos = [m.info for m in members]
            for spec in specs:
                check_placement(spec.placement, infos, spec.label or spec.task_id)
            direct: dict[str, list[TaskSpec]] = {}
            by_name = {m.name: m for m in members}
            for spec in specs:
                flight = self._flights[spec.task_id] = _Flight(spec)
                pinned = by_name.get(spec.placement.pin or "")
                if pinned is not None and not spec.placement.resources:
                    # Nothing to choose (a remote object's calls): straight to its server,
                    # which queues it. Held back here, it would only wait longer.
                    self._assign(flight, pinned, direct)
                else:
                    self._waiting.append(spec.task_id)
            sends = [(by_name[name], group) for name, group in direct.items()] + self._pump()
        try:
            self._send(sends, raise_=True)
        except BaseException:
            for spec in specs:
                self.cancel(spec.task_id)
            raise

    def cancel(self, task_id: str) -> None:
        with self._lock:
            flight = self._flights.get(task_id)
            if flight is None:
                return
            member = flight.member
            if member is None:  # still waiting here: it never started
                self._flights.pop(task_id, None)
                with contextlib.suppress(ValueError):
                    self._waiting.remove(task_id)
                return
        member.backend.cancel(task_id)

    def release(self, object_ids: Iterable[str]) -> None:
        ids = list(object_ids)
        for member in self._live():
            member.backend.release(ids)

    def servers(self) -> list[ServerInfo]:
        with self._lock:
            return [m.info for m in self._live()]

    def stats(self) -> dict[str, int]:
        """Every server's counters, summed."""
        total: dict[str, int] = {}
        for counters in self.server_stats().values():
            for key, value in counters.items():
                total[key] = total.get(key, 0) + value
        return total

    def server_stats(self) -> dict[str, dict[str, int]]:
        """Each server's counters, by name."""
        with self._lock:
            members = self._live()
        return {m.name: m.backend.stats() for m in members}

    def objects(self, name: str = "") -> list[ObjectInfo]:
        """The remote objects of every server (named ``name``, if given)."""
        with self._lock:
            members = self._live()
        return [info for m in members for info in m.backend.objects(name)]

    def log_id(self, task_id: str, server: str) -> str | None:
        """The key of a task's log on ``server`` (see ``SperseBackend.log_id``)."""
        member = self._members.get(server)
        return member.backend.log_id(task_id) if member is not None else None

    def logs(self, task: str, timeout: float | None = 10.0) -> TaskOutputLog | None:
        """What a task printed, from whichever server of the cluster kept it."""
        with self._lock:
            members = self._live()
        for member in members:
            found = member.backend.logs(task, timeout)
            if found is not None:
                return found
        return None

    def backend_of(self, name: str) -> SperseBackend:
        """The connection to one server (for its ``stats``, ``transport``, ...)."""
        member = self._members.get(name)
        if member is None or not member.alive:
            raise SperseError(f"no server {name!r} in this cluster")
        return member.backend


def is_coordinator(url: str, *, tls_ca: bytes | None = None, timeout: float = 5.0) -> bool:
    """Whether a coordinator answers at ``url`` (else: a server, or nothing, which the
    server's client then reports). One call with no token: a coordinator refuses it
    (UNAUTHENTICATED), a server does not know the method (UNIMPLEMENTED)."""
    import grpc

    from sperse._wire import pb

    address = parse_url(url)
    if tls_ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=tls_ca)
        channel = grpc.secure_channel(address, creds)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        watch = channel.unary_stream(
            "/sperse.v1.Coordinator/Watch",
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.Membership.FromString,
        )
        try:
            for _ in watch(pb.WatchRequest(), timeout=timeout, wait_for_ready=False):
                return True  # pragma: no cover - a coordinator answers no token with an error
        except grpc.RpcError as exc:
            return bool(exc.code() == grpc.StatusCode.UNAUTHENTICATED)
    return False


def _inputs(spec: TaskSpec) -> list[Any]:
    work = spec.work
    if isinstance(work, CallTask | ObjectCall | ObjectCreate):
        return [*work.args, *work.kwargs.values()]
    if isinstance(work, StatementTask):
        return list(work.inputs.values())
    return []


def _count(n: int, noun: str) -> str:
    """``1 task``, ``2 tasks``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
