"""What a client of a coordinator uses: ``MembershipWatch`` (a live view of the servers, for
the many-servers backend) and ``members`` (one snapshot, for ``sperse status``).

Both read the ``Watch`` stream with sync gRPC; errors of grpc (classified by
:mod:`sperse._wire.errors`) are translated here, in ``_translate`` only: a refused token is
``AuthenticationError``; nothing answering, or an address that is not a coordinator
(``UNIMPLEMENTED``: a ``sperse server``), is ``ServerUnavailable``.

A ``MembershipWatch`` reads on a thread of its own. After its first snapshot it never raises:
when the stream breaks it keeps the last snapshot, logs one warning per outage, and
reconnects (a new channel each time, so gRPC's own reconnect backoff never grows beyond
ours) after a capped exponential backoff, until closed. A stream breaking says nothing of
the servers: they keep working without the coordinator. Each snapshot comes with the
coordinator's ``settling`` flag: a coordinator that has just (re)started lists only the
servers that have re-joined it so far, and a server missing from its list has not left.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc

from sperse._wire import pb
from sperse._wire.errors import GrpcErrorKind, classify
from sperse._wire.sperse_pb2_grpc import CoordinatorStub
from sperse._wire.urls import parse_url
from sperse.errors import AuthenticationError, ServerUnavailable, SperseError

__all__ = ["MemberInfo", "MembershipWatch", "members"]

log = logging.getLogger("sperse.client")

BACKOFF_MIN = 0.1  # seconds before the first reconnection attempt
BACKOFF_MAX = 5.0
CLOSE_TIMEOUT = 5.0  # how long close() waits for the watch thread

_CHANNEL_OPTIONS = [
    # A coordinator whose host vanished sends no FIN: find out within half a minute.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A server of the cluster, as the coordinator last heard of it. ``joined`` and
    ``last_heartbeat`` are seconds since the epoch by the coordinator's clock."""

    name: str
    address: str
    tags: frozenset[str]
    resources: Mapping[str, float]
    workers: int
    busy: int
    queued: int
    objects: int
    object_bytes: int
    sessions: int
    joined: float
    last_heartbeat: float
    tls: bool
    instance: str = ""  # the server's own id, the same across its joins ("": an old server)
    named: tuple[str, ...] = ()  # the names of the remote objects it holds that have one

    @property
    def url(self) -> str:
        return f"sperse://{self.address}"

    @classmethod
    def from_wire(cls, member: pb.Member) -> MemberInfo:
        return cls(
            name=member.name,
            address=member.address,
            tags=frozenset(member.tags),
            resources=MappingProxyType(dict(member.resources)),
            workers=member.workers,
            busy=member.busy,
            queued=member.queued,
            objects=member.objects,
            object_bytes=member.object_bytes,
            sessions=member.sessions,
            joined=member.joined,
            last_heartbeat=member.last_heartbeat,
            tls=member.tls,
            instance=member.instance,
            named=tuple(o.name for o in member.named_objects),
        )


def _snapshot(membership: pb.Membership) -> list[MemberInfo]:
    return [MemberInfo.from_wire(member) for member in membership.members]


def _channel(address: str, tls_ca: bytes | None) -> Any:
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca)
        return grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
    return grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)


def _translate(exc: grpc.RpcError, address: str) -> SperseError:
    """The one place where grpc's errors (classified by :mod:`sperse._wire.errors`) become
    Sperse's, for coordinator clients."""
    failure = classify(exc)
    if failure.kind is GrpcErrorKind.REFUSED_TOKEN:
        return AuthenticationError(
            f"the coordinator at {address} refused the token: pass the cluster token, the one "
            "it was started with (token=..., --token, --token-file, SPERSE_TOKEN or "
            "SPERSE_TOKEN_FILE)"
        )
    if failure.kind is GrpcErrorKind.WRONG_SERVICE:
        return ServerUnavailable(
            f"{address} is not a sperse coordinator (it does not know the Coordinator "
            "service; a sperse server, perhaps): give the address that `sperse coordinator` "
            "or `sperse up` printed"
        )
    if failure.kind is GrpcErrorKind.UNREACHABLE:
        return ServerUnavailable(
            f"no coordinator answered at {address} ({failure}): is `sperse "
            "coordinator` running there, and are the host and port right?"
        )
    return ServerUnavailable(f"the coordinator at {address} failed: {failure}")


def members(
    address: str, token: str, *, tls_ca: bytes | None = None, timeout: float = 10.0
) -> list[MemberInfo]:
    """The servers of the cluster whose coordinator is at ``address`` (``sperse://HOST:PORT``
    or ``HOST:PORT``), once. Raises ``AuthenticationError`` or ``ServerUnavailable``."""
    address = parse_url(address)
    channel = _channel(address, tls_ca)
    try:
        call = CoordinatorStub(channel).Watch(  # type: ignore[no-untyped-call]
            pb.WatchRequest(token=token), timeout=timeout
        )
        try:
            return _snapshot(next(call))
        except grpc.RpcError as exc:
            raise _translate(exc, address) from exc
        except StopIteration:
            raise ServerUnavailable(
                f"the coordinator at {address} ended the stream before sending the membership:"
                " is it stopping?"
            ) from None
        finally:
            call.cancel()
    finally:
        channel.close()


class MembershipWatch:
    """The live membership of a cluster: ``start()`` blocks until the first snapshot, then a
    thread keeps ``members()`` and ``settling`` current and calls ``on_change`` (on that
    thread) with every later snapshot and its ``settling`` flag. ``close()`` ends it."""

    def __init__(
        self,
        address: str,
        token: str,
        *,
        tls_ca: bytes | None = None,
        on_change: Callable[[list[MemberInfo], bool], None] | None = None,
        connect_timeout: float = 10.0,
        wait_settled: bool = False,
    ) -> None:
        self.address = parse_url(address)
        self._wait_settled = wait_settled
        self._token = token
        self._tls_ca = tls_ca
        self._on_change = on_change
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._members: list[MemberInfo] = []
        self._settling = False
        self._closed = threading.Event()
        self._first = threading.Event()  # the first snapshot, or the error, is here
        self._answered = threading.Event()  # a snapshot came, if only an empty settling one
        self._error: SperseError | None = None
        self._call: Any = None  # the current Watch call: close() cancels it
        self._thread: threading.Thread | None = None
        self.streams = 0  # Watch streams that sent a snapshot: 1, then one more per reconnect

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def start(self) -> list[MemberInfo]:
        """Blocks until the first Membership; raises AuthenticationError (token refused),
        ServerUnavailable (nothing answers, or it is not a coordinator: UNIMPLEMENTED).

        With ``wait_settled``: a coordinator that has only just started lists no one until
        servers (re-)join; its empty, settling list is not taken as the first while it
        settles (up to the connect timeout), so that work sent at once finds the servers
        that are there."""
        if self._thread is not None:
            raise RuntimeError("this MembershipWatch was started already")
        self._thread = threading.Thread(
            target=self._run, name=f"sperse-watch-{self.address}", daemon=True
        )
        self._thread.start()
        if not self._first.wait(self._connect_timeout) and self._answered.is_set():
            self._first.set()  # still settling, with no one: that is the membership
        if not self._first.is_set():
            self.close()
            raise ServerUnavailable(
                f"no coordinator answered at {self.address} within {self._connect_timeout:g} s:"
                " is `sperse coordinator` running there, and are the host and port right?"
            )
        if self._error is not None:
            self.close()
            raise self._error
        return self.members()

    def members(self) -> list[MemberInfo]:
        """The latest snapshot (the last one received while the stream is broken)."""
        with self._lock:
            return list(self._members)

    @property
    def settling(self) -> bool:
        """Whether the coordinator said, with the latest snapshot, that it has only just
        started (servers missing from it may still re-join)."""
        with self._lock:
            return self._settling

    def close(self) -> None:
        """Stop watching; idempotent. Waits (boundedly) for the watch thread to end."""
        self._closed.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_TIMEOUT)
            if thread.is_alive():
                log.warning("the membership watch of %s did not end in time", self.address)

    def __enter__(self) -> MembershipWatch:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.members())} members"
        return f"<MembershipWatch {self.address}: {state}>"

    # ---- the watch thread ---------------------------------------------------------------

    def _stream(self, channel: Any) -> Iterator[pb.Membership]:
        with self._lock:
            if self._closed.is_set():
                return iter(())
            self._call = CoordinatorStub(channel).Watch(  # type: ignore[no-untyped-call]
                pb.WatchRequest(token=self._token)
            )
            call: Iterator[pb.Membership] = self._call
        return call

    def _run(self) -> None:
        delay = BACKOFF_MIN
        outage = False
        while not self._closed.is_set():
            channel = _channel(self.address, self._tls_ca)
            try:
                fresh = True
                for membership in self._stream(channel):
                    if fresh:
                        self.streams += 1
                        fresh = False
                    self._receive(_snapshot(membership), membership.settling)
                    delay = BACKOFF_MIN
                    if outage:
                        log.info("the membership watch of %s is back", self.address)
                        outage = False
                problem = "the coordinator ended the stream"
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    return
                if not self._first.is_set():
                    self._fail(_translate(exc, self.address))
                    return
                problem = str(classify(exc))
            finally:
                with self._lock:
                    self._call = None
                channel.close()
            if self._closed.is_set():
                return
            if not self._first.is_set():
                self._fail(
                    ServerUnavailable(
                        f"the coordinator at {self.address} ended the stream before sending "
                        "the membership: is it stopping?"
                    )
                )
                return
            if not outage:
                log.warning(
                    "lost the membership watch of the coordinator at %s (%s); reconnecting, "
                    "with the last membership kept meanwhile",
                    self.address,
                    problem,
                )
                outage = True
            self._closed.wait(delay)  # the backoff; close() ends it at once
            delay = min(delay * 2, BACKOFF_MAX)

    def _receive(self, snapshot: list[MemberInfo], settling: bool) -> None:
        with self._lock:
            self._members = snapshot
            self._settling = settling
        if not self._first.is_set():
            self._answered.set()
            if not (self._wait_settled and settling and not snapshot):
                self._first.set()
            return
        if self._on_change is not None:
            try:
                self._on_change(list(snapshot), settling)
            except Exception:  # a bug in the callback must not end the watch
                log.exception("the on_change callback of the membership watch raised")

    def _fail(self, error: SperseError) -> None:
        self._error = error
        self._first.set()
