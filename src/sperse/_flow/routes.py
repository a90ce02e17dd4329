"""How a service's requests reach it and its answers come back, for one client
(:class:`~sperse._flow.serving.Service`): :class:`InProcess` through the requests source's
queue, :class:`OnServers` straight to and from the servers' hosts.

On servers, a client's requests go to the requests replica's host on a channel of its own
(numbered deliveries the host puts back in order): one at once when nothing is in flight,
else gathered into one delivery while ``IN_FLIGHT`` deliveries wait for their
acknowledgement (a delivery is acknowledged once the host has taken it in), so a busy client
sends few calls and an idle one waits for none. Answers are long-polled (``take``) from every
respond replica's host, by one thread per respond replica while requests wait: the answer
comes from the server that made it, as the return value of this client's own call. Each
take names the answers the earlier ones brought, and the host keeps each until then
(:mod:`sperse._flow.mailbox`): after answers, a poller polls once more, at once, even when
nothing waits any more.

A server lost under the service (:mod:`sperse._flow.hostloss`): the driver replaces its
hosts, and each respond replica's host of before answers a poll with what is left, then
``Moved``; the poll of a lost one fails, and its poller asks the requests replica's host
where the answers are taken now (``moved_after``). Once every poller of before has ended,
the requests sent in a delivery that the requests replica had taken (``Moved.lost``) and
still waiting were lost with the server: each fails with ``ServerLost``, or is sent again
(the same id and idempotency key) while ``Moved.retry`` and its ``retries`` allow.

The route's threads run in a copy of the context that made it: its proxies reach their
hosts through the cluster that code saw (on Ray, an async operator's call sees the nested
cluster only in its own context, and a bare thread would fall back to a local one).
"""

from __future__ import annotations

import contextvars
import threading
import time
import weakref
from typing import Any, Protocol

from sperse._cluster.objects import ObjectProxy
from sperse._cluster.pending import Pending
from sperse._flow.calls import CALLING
from sperse._flow.local import PushQueue
from sperse._flow.messages import Batch
from sperse._flow.ops import stable_hash
from sperse._flow.service import Answer, Envelope, Moved
from sperse._serialize import RemoteValue, dumps
from sperse.errors import ObjectLost, ServerLost, ServerUnavailable, ServiceStopped

__all__ = ["IN_FLIGHT", "POLL", "Client", "InProcess", "OnServers", "Route"]

POLL = 2.0  # seconds a long poll of a respond replica waits for an answer
IN_FLIGHT = 4  # a client's deliveries of requests not acknowledged at once (more wait)
RECOVERY = 300.0  # seconds a client whose respond replica was lost waits for its successor


class Client(Protocol):
    """A service's client as its route sees it (``serving.Service``)."""

    name: str
    client: str
    _run: Any
    _waiting: dict[int, Pending[Any]]

    def _answered(self, answers: list[Answer]) -> None: ...

    def _failed(self, rid: int, error: BaseException) -> None: ...

    def _fail_waiting(self, error: BaseException) -> None: ...


class Route:
    """How a service's requests reach it and its answers come back."""

    def send(self, envelope: Envelope, retries: int = 0) -> None:
        """Send ``envelope``; ``retries``: how many times it may be sent again if lost."""
        raise NotImplementedError

    def drain(self, timeout: float) -> None:
        """Every request sent so far has reached the requests source; then end it."""

    def close(self) -> None:
        """Stop taking answers."""


class InProcess(Route):
    def __init__(self, push: PushQueue) -> None:
        self._push = push

    def send(self, envelope: Envelope, retries: int = 0) -> None:
        self._push.push(envelope)

    def drain(self, timeout: float) -> None:
        self._push.close()


class OnServers(Route):
    """Requests to one requests replica's host, answers long-polled from every respond
    replica's host (see the module docstring)."""

    def __init__(
        self,
        service: Client,
        sources: list[ObjectProxy],
        responds: list[ObjectProxy],
        push: PushQueue | None,
    ) -> None:
        self._service = weakref.proxy(service)
        self._client = service.client
        self._name = service.name
        self._source = sources[stable_hash(service.client) % len(sources)]
        self._responds = responds
        self._push = push
        self._channel = f"req.{service.client}"
        self._seq = 0
        self._cond = threading.Condition()
        self._buffer: list[Envelope] = []
        self._inflight = 0  # deliveries not acknowledged yet
        self._unacked = 0  # requests not acknowledged yet (sent, or waiting to be)
        self._closed = False
        self._pollers: list[threading.Thread] = []
        self._epoch = 0  # the reshape whose respond replicas are polled
        self._polling_in: dict[int, int] = {}  # pollers running, per epoch
        self._notice: Moved | None = None  # the newest that told of a lost server
        self._sent: dict[int, list[Any]] = {}  # rid -> [delivery (-1: not yet), env, retries]
        self.resent = 0  # requests sent again, lost with a server
        self._context = contextvars.copy_context()
        self._context.run(CALLING.set, None)  # its threads are no call's
        self._sender = threading.Thread(
            target=self._context.copy().run,
            args=(self._sending,),
            name=f"sperse-service-{self._name}-send",
            daemon=True,
        )
        self._sender.start()

    def send(self, envelope: Envelope, retries: int = 0) -> None:
        dumps(envelope, what=f"a request to service {self._name!r}")  # raises here, not later
        with self._cond:
            self._sent[envelope.rid] = [-1, envelope, retries]
            if len(self._sent) > 2 * len(self._service._waiting) + 1024:
                waiting = self._service._waiting
                self._sent = {r: e for r, e in self._sent.items() if r in waiting or e[0] < 0}
            self._buffer.append(envelope)
            self._unacked += 1
        self._flush()
        self._poll()

    def _flush(self) -> None:
        """Send what waits in one delivery, if fewer than ``IN_FLIGHT`` are unacknowledged
        (else the sender thread sends it when one is): under load, a client's requests
        travel together; a lone request goes at once."""
        with self._cond:
            if not self._buffer or self._inflight >= IN_FLIGHT:
                return
            envelopes, self._buffer = self._buffer, []
            for envelope in envelopes:
                sent = self._sent.get(envelope.rid)
                if sent is not None:
                    sent[0] = self._seq
            try:
                pending = self._source.request(self._channel, self._seq, [Batch(0, 0, envelopes)])
            except Exception as exc:  # not sent: its number is free for the next delivery
                self._unacked -= len(envelopes)
                self._cond.notify_all()
                failed: BaseException | None = exc
            else:
                self._seq += 1
                self._inflight += 1
                failed = None
        if failed is not None:
            for envelope in envelopes:
                self._service._failed(envelope.rid, failed)
            return
        pending._on_settle(lambda p: self._acked(envelopes, p))

    def _acked(self, envelopes: list[Envelope], pending: Pending[Any]) -> None:
        with self._cond:
            self._inflight -= 1
            self._unacked -= len(envelopes)
            self._cond.notify_all()  # the sender thread sends what waited, if anything
        error = pending._error
        if error is not None:
            if isinstance(error, ObjectLost):
                error = ServiceStopped(
                    f"service {self._name!r} is not running (its requests replica is gone: {error})"
                )
            elif isinstance(error, ServerLost | ServerUnavailable):
                error = ServerLost(
                    f"service {self._name!r}: its requests replica (where clients send) was "
                    f"lost with its server, and the service with it: {error}"
                )
            for envelope in envelopes:
                self._service._failed(envelope.rid, error)
            return
        for rid in _value(pending):
            self._service._failed(
                rid,
                ServiceStopped(f"service {self._name!r} has stopped: it takes no more requests"),
            )

    def _sending(self) -> None:
        """The sender thread: sends the requests that waited for an acknowledgement."""
        while True:
            with self._cond:
                while not self._closed and not (self._buffer and self._inflight < IN_FLIGHT):
                    self._cond.wait()
                if self._closed and not self._buffer:
                    return
            self._flush()

    def _poll(self) -> None:
        """Start the long polls of the respond replicas (once)."""
        with self._cond:
            if self._pollers or self._closed:
                self._cond.notify_all()
                return
            self._polling_in[self._epoch] = len(self._responds)
            for index, proxy in enumerate(self._responds):
                thread = threading.Thread(
                    target=self._context.copy().run,
                    args=(self._polling, proxy, self._epoch),
                    name=f"sperse-service-{self._name}-{index}",
                    daemon=True,
                )
                self._pollers.append(thread)
                thread.start()

    def _polling(self, proxy: ObjectProxy, epoch: int) -> None:
        received: list[int] = []  # the answers the last take brought: the next says so
        while True:
            with self._cond:
                while not self._closed and not self._service._waiting and not received:
                    self._cond.wait(POLL)
                if self._closed:
                    return
            # After answers, the next poll goes at once (it says they were received), and
            # waits like any other: ready for the next answer, with no round trip between.
            pending = proxy.take(self._client, POLL, received)
            received = []
            if not _settled(pending).wait(POLL + 60.0):
                continue
            if pending._error is not None:
                successor = self._successor(epoch)  # lost with its server: replaced?
                if successor is not None:
                    self._ended(epoch, successor)
                    return
                try:
                    if self._service._run is not None:
                        return  # the run's end fails what waits, saying why (_ended)
                    self._service._fail_waiting(
                        ServiceStopped(
                            f"service {self._name!r}: its respond replica could not be "
                            f"reached ({pending._error})"
                        )
                    )
                except ReferenceError:
                    return
                return
            got = _value(pending)
            moved = [m for m in got if isinstance(m, Moved)]
            answers = [Answer(*a) for a in got if not isinstance(a, Moved)]
            received = [a.rid for a in answers]
            try:
                self._service._answered(answers)
            except ReferenceError:
                return
            if moved:
                self._ended(epoch, moved[0])
                return

    def _successor(self, epoch: int) -> Moved | None:
        """Where the answers are taken after ``epoch`` (the respond replica polled was lost,
        and replaced), asked of the requests replica's host; None if the service ended."""
        deadline = time.monotonic() + RECOVERY
        while not self._closed and time.monotonic() < deadline:
            pending = self._source.moved_after(epoch, POLL)
            if not _settled(pending).wait(POLL + 60.0):
                continue
            if pending._error is not None:
                return None
            moved, closing = _value(pending)
            if moved is not None or closing:
                return moved  # type: ignore[no-any-return]
        return None

    def _ended(self, epoch: int, moved: Moved) -> None:
        """A poller of ``epoch``'s respond replicas ended, told ``moved``: poll the new ones;
        once every poller of ``epoch`` has ended, settle what a lost server took."""
        with self._cond:
            self._polling_in[epoch] -= 1
            last = not self._polling_in[epoch]
            if moved.lost is not None and (
                self._notice is None or moved.epoch > self._notice.epoch
            ):
                self._notice = moved
            notice = self._notice if last else None
        self._moved(moved)
        if notice is not None and notice.epoch > epoch:
            self._lost(notice)

    def _lost(self, notice: Moved) -> None:
        """The requests lost with a server (see the module docstring): failed, or sent
        again."""
        assert notice.lost is not None
        taken = notice.lost.get(self._channel, -1)
        waiting = self._service._waiting
        with self._cond:
            lost = [(rid, s) for rid, s in self._sent.items() if 0 <= s[0] <= taken]
            again = set()
            for rid, sent in lost:
                if rid in waiting and notice.retry and sent[2] > 0:
                    sent[0], sent[2] = -1, sent[2] - 1
                    again.add(rid)
                    self.resent += 1
                    self._buffer.append(sent[1])
                    self._unacked += 1
        for rid, _ in lost:
            if rid in waiting and rid not in again:
                self._service._failed(
                    rid,
                    ServerLost(f"service {self._name!r}: request #{rid} was lost: {notice.why}"),
                )
        if again:
            self._flush()

    def _moved(self, moved: Moved) -> None:
        """The service was reshaped: its answers are taken from new respond replicas (the
        first poller told of it starts their polls; the others end)."""
        with self._cond:
            if moved.epoch <= self._epoch or self._closed:
                return
            self._epoch = moved.epoch
            self._responds = moved.responds
            self._pollers = []
        self._poll()

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._unacked:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        if self._push is not None:
            self._push.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _settled(pending: Pending[Any]) -> threading.Event:
    """An event set once ``pending`` settles (without running the client's loop here)."""
    event = threading.Event()
    pending._on_settle(lambda _: event.set())
    return event


def _value(pending: Pending[Any]) -> Any:
    value = pending._value
    if isinstance(value, RemoteValue):
        return value.fetch(60)
    return value
