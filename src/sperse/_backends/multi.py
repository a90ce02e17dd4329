"""``ClusterBackend``: many ``sperse server``s, from a fixed list or a coordinator.

The shell around the pure :class:`~sperse._backends.dispatch.Dispatcher`, which decides where
each task goes (the ``Router``: constraints, pins, locality, load, round robin), which tasks
wait for room, and what becomes of the tasks of a lost server. This class does the rest: one
``SperseBackend`` per server does the talking; connections are opened in parallel threads;
the membership of a coordinator is followed live.

Threads: every member's events arrive on its own I/O thread. The dispatcher is touched only
under ``_lock``; servers are called, and events forwarded, outside it.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from sperse._backends.dispatch import Decision, Dispatcher, MemberId
from sperse._backends.membership import MemberInfo, MembershipWatch
from sperse._backends.sperse import (
    DEFAULT_INLINE_LIMIT,
    Compression,
    EmbeddedServer,
    SperseBackend,
    TaskOutputLog,
)
from sperse._core import (
    BackendEvent,
    Done,
    ErrorInfo,
    EventSink,
    Failed,
    ObjectInfo,
    ServerInfo,
    TaskSpec,
)
from sperse._wire.urls import parse_url
from sperse.errors import SerializationError, ServerUnavailable, SperseError

__all__ = ["ClusterBackend", "is_coordinator"]

log = logging.getLogger("sperse.cluster")


@dataclass(frozen=True, slots=True)
class _Connection:
    name: str
    backend: SperseBackend


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
        shm: bool | None = None,
        compression: Compression = None,
    ) -> None:
        """``processes``: servers this backend owns, stopped by ``close``. ``shm`` as
        :class:`SperseBackend` takes it, for every server."""
        if not urls and coordinator is None:
            raise ValueError("give server urls, or a coordinator")
        self._urls = [parse_url(u) for u in urls]
        self._coordinator = coordinator
        self._token = token
        self._tls_ca = tls_ca
        self._connect_timeout = connect_timeout
        self._reconnect_timeout = reconnect_timeout
        self._inline_limit = inline_limit
        self._processes = list(processes)
        self._shm = shm
        self._compression: Compression = compression
        self._sink: EventSink | None = None
        self._lock = threading.Lock()
        self._dispatcher = Dispatcher(max_reroutes=max_reroutes)
        self._connections: dict[MemberId, _Connection] = {}
        self._members: dict[SperseBackend, MemberId] = {}
        self._watch: MembershipWatch | None = None
        self._closed = False

    @property
    def coordinator(self) -> str | None:
        """The coordinator's address (None: a fixed list of servers)."""
        return self._coordinator

    @property
    def tls_ca(self) -> bytes | None:
        return self._tls_ca

    @property
    def watch(self) -> MembershipWatch | None:
        """The live membership of the coordinator (None: a fixed list of servers)."""
        return self._watch

    # ---- lifecycle -----------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        """Connect to every server (raises for a server of a fixed list that does not
        answer, or a coordinator that refuses the token)."""
        self._sink = sink
        if self._coordinator is not None:
            self._watch = MembershipWatch(
                self._coordinator,
                self._token,
                tls_ca=self._tls_ca,
                on_change=self._on_membership,
                connect_timeout=self._connect_timeout,
                wait_settled=True,  # a coordinator just (re)started: its servers re-join
            )
            members = self._watch.start()
            self._join([_listed(m) for m in members], strict=False)
            return
        try:
            self._join([("", address, "") for address in self._urls], strict=True)
        except BaseException:
            self.close()
            raise

    def _join(self, wanted: Sequence[tuple[str, str, str]], *, strict: bool) -> None:
        """Connect to servers ``(name, address, instance)``, in parallel. ``strict``: the
        first failure is raised."""
        errors: list[BaseException] = []
        joined: list[tuple[str, str, SperseBackend]] = []

        def connect(name: str, address: str, instance: str) -> None:
            try:
                joined.append((address, instance, self._open(address)))
            except BaseException as exc:
                errors.append(exc)
                log.warning("cannot connect to server %s at %s: %s", name, address, exc)
            finally:
                with self._lock:
                    self._dispatcher.connect_ended(name)

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
            for address, instance, backend in joined:
                name = backend.name
                welcome = backend.servers()
                base = welcome[0] if welcome else ServerInfo(name)
                info = replace(base, address=address)
                member = None if self._closed else self._dispatcher.join(name, info, instance)
                if member is None:
                    unused.append(backend)
                    continue
                self._connections[member] = _Connection(name, backend)
                self._members[backend] = member
            decision = self._dispatcher.pump() if not self._closed else Decision()
        for backend in unused:
            backend.close()
        if strict and errors:
            raise errors[0]
        self._carry_out(decision)

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
            shm=self._shm,
            compression=self._compression,
        )
        backend.start(functools.partial(self._on_event, backend))
        return backend

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            backends = [c.backend for c in self._connections.values()]  # lost ones too
        if self._watch is not None:
            self._watch.close()
        closers = [
            threading.Thread(target=backend.close, name="sperse-close", daemon=True)
            for backend in backends
        ]
        for thread in closers:
            thread.start()
        for thread in closers:
            thread.join(10)
        for process in self._processes:
            process.stop()

    # ---- membership ----------------------------------------------------------------

    def _on_membership(self, members: Sequence[MemberInfo], settling: bool) -> None:
        """A coordinator's snapshot (on the watch's thread): connect to new servers, drop
        the ones that left (their tasks go elsewhere). A settling coordinator has just
        started: the servers it does not list yet are kept (see ``Dispatcher.membership``)."""
        with self._lock:
            if self._closed:
                return
            listed = [_listed(m) for m in members]
            change = self._dispatcher.membership(listed, settling=settling)
        for member in change.gone:
            self._lose(member, "it left the cluster (the coordinator no longer lists it)")
        if change.connect:
            threading.Thread(
                target=self._join,
                args=(list(change.connect),),
                kwargs={"strict": False},
                daemon=True,
            ).start()

    def _lose(self, member: MemberId, why: str) -> None:
        """``member`` is gone: its tasks go elsewhere or fail; its connection closes."""
        with self._lock:
            if self._closed:
                return
            decision = self._dispatcher.lose(member, why)
        if decision is None:
            return
        connection = self._connections[member]
        failed = sum(1 for f in decision.failed if f.error.kind == "server_lost")
        log.warning(
            "server %s lost: %s; %s moved elsewhere, %s failed",
            connection.name,
            why,
            _count(decision.moved, "task"),
            _count(failed, "task"),
        )
        self._carry_out(decision)
        threading.Thread(target=connection.backend.close, name="sperse-close", daemon=True).start()

    def _locate(self, name: str) -> str | None:
        return self._dispatcher.locate(name)

    # ---- carrying out decisions ------------------------------------------------------

    def _carry_out(self, decision: Decision, *, raise_: bool = False) -> None:
        """Emit the decision's failures, then hand assigned tasks to their servers (outside
        ``_lock``). Work that cannot be pickled fails (or, from ``submit``, raises); a server
        lost meanwhile is ``_lose``."""
        for event in decision.failed:
            self._emit(event)
        error: SerializationError | None = None
        for member, specs in decision.sends:
            connection = self._connections[member]
            try:
                connection.backend.submit(specs)
            except SerializationError as exc:
                with self._lock:
                    more = self._dispatcher.finish([s.task_id for s in specs], member)
                if raise_:
                    error = error or exc
                else:
                    for spec in specs:
                        info = ErrorInfo("serialization", type(exc).__name__, str(exc))
                        self._emit(Failed(spec.task_id, connection.name, info))
                self._carry_out(more)
            except SperseError as exc:  # lost before they went: _lose moves them on
                self._lose(member, str(exc))
        if error is not None:
            raise error

    def _on_event(self, backend: SperseBackend, event: BackendEvent) -> None:
        """An event of one server (on its I/O thread)."""
        with self._lock:
            member = self._members.get(backend)
            if member is None or not self._dispatcher.is_current(event.task_id, member):
                return  # a task moved elsewhere, cancelled, or ended already
            lost = isinstance(event, Failed) and event.error.kind == "server_lost"
            decision = Decision()
            if isinstance(event, Done | Failed) and not lost:
                decision = self._dispatcher.finish([event.task_id], member)
        if lost:
            self._lose(member, event.error.message)  # type: ignore[union-attr]
            return
        self._emit(event)
        self._carry_out(decision)

    def _emit(self, event: BackendEvent) -> None:
        sink = self._sink
        if sink is not None and not self._closed:
            sink(event)

    def _live(self) -> list[SperseBackend]:
        """The live members' connections (safe without ``_lock``, as ``release`` calls it:
        a member joined this instant may be missing)."""
        connections = [self._connections.get(m) for m in self._dispatcher.live()]
        return [c.backend for c in connections if c is not None]

    # ---- the Backend protocol ------------------------------------------------------

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        with self._lock:
            if self._closed:
                raise ServerUnavailable("this cluster is closed")
            decision = self._dispatcher.submit(specs)
        try:
            self._carry_out(decision, raise_=True)
        except BaseException:
            for spec in specs:
                self.cancel(spec.task_id)
            raise

    def cancel(self, task_id: str) -> None:
        with self._lock:
            member = self._dispatcher.cancel(task_id)
            if member is None:  # unknown, or still waiting here: it never started
                return
            backend = self._connections[member].backend
        backend.cancel(task_id)

    def release(self, object_ids: Iterable[str]) -> None:
        ids = list(object_ids)
        for backend in self._live():
            backend.release(ids)

    def servers(self) -> list[ServerInfo]:
        with self._lock:
            return self._dispatcher.infos()

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
            connections = [self._connections[m] for m in self._dispatcher.live()]
        return {c.name: c.backend.stats() for c in connections}

    def objects(self, name: str = "") -> list[ObjectInfo]:
        """The remote objects of every server (named ``name``, if given)."""
        with self._lock:
            backends = self._live()
        return [info for backend in backends for info in backend.objects(name)]

    def log_id(self, task_id: str, server: str) -> str | None:
        """The key of a task's log on ``server`` (see ``SperseBackend.log_id``)."""
        member = self._dispatcher.member(server)
        connection = self._connections.get(member) if member is not None else None
        return connection.backend.log_id(task_id) if connection is not None else None

    def logs(self, task: str, timeout: float | None = 10.0) -> TaskOutputLog | None:
        """What a task printed, from whichever server of the cluster kept it."""
        with self._lock:
            backends = self._live()
        for backend in backends:
            found = backend.logs(task, timeout)
            if found is not None:
                return found
        return None

    def backend_of(self, name: str) -> SperseBackend:
        """The connection to one server (for its ``stats``, ``transport``, ...)."""
        member = self._dispatcher.member(name, alive=True)
        connection = self._connections.get(member) if member is not None else None
        if connection is None:
            raise SperseError(f"no server {name!r} in this cluster")
        return connection.backend


def is_coordinator(url: str, *, tls_ca: bytes | None = None, timeout: float = 5.0) -> bool:
    """Whether a coordinator answers at ``url`` (else: a server, or nothing, which the
    server's client then reports). One call with no token: a coordinator refuses it
    (UNAUTHENTICATED), a server does not know the method (UNIMPLEMENTED)."""
    import grpc

    from sperse._wire import pb
    from sperse._wire.errors import GrpcErrorKind, classify

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
            return classify(exc).kind is GrpcErrorKind.REFUSED_TOKEN
    return False


def _listed(member: MemberInfo) -> tuple[str, str, str]:
    """``(name, address, instance)`` of a listed server; a server too old to send its
    instance is told by its join time (a coordinator restart then looks like its restart)."""
    return (member.name, member.address, member.instance or f"joined at {member.joined!r}")


def _count(n: int, noun: str) -> str:
    """``1 task``, ``2 tasks``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
