"""``Joiner``: a server's membership in a coordinator (``sperse server --join HOST:PORT``).

It runs on the server's event loop and uses the server's own token as the cluster token.

Invariants:

- ``start()`` returns once the coordinator has registered the server, or raises
  ``ServerConfigError``: at once when the coordinator refuses the token or the name (or is
  not a coordinator), after ``start_timeout`` seconds of retries (with backoff) when nothing
  answers. The server then does not run.
- After that it never raises: a heartbeat every ``heartbeat_interval`` (the coordinator's
  word) carries the server's load; a failed one logs one warning per outage and the next
  one tries again (the channel's own reconnect backoff is capped at ``RECONNECT_MAX``, so
  a coordinator back after a long outage is reached within a second or so); ``known=False``
  (the coordinator dropped the server, or restarted) makes it join again at once.
- The member carries an ``instance`` id, random, picked once per server process and sent
  with every join: a coordinator restart makes the server join again as the same instance
  (clients keep their sessions with it), a server restart as another.
- With a ``TaskFeed``, when the coordinator's join reply asks for tasks (``report_tasks``:
  it shows them on its dashboard), the feed is handed to the server (``use_feed``) and its
  notes go to the coordinator in ``ReportTasks`` batches: at most ``REPORT_NOTES`` per
  message, at most one message per ``REPORT_INTERVAL`` and one in flight; notes of a report
  that fails are counted as dropped with the next one (the buffer stays bounded, the task
  path never waits on the coordinator). A coordinator that does not ask gets none, and the
  server notes nothing.
- ``stop()`` ends the heartbeats, then says Leave (within ``LEAVE_TIMEOUT``) if the
  coordinator last knew the server as this one, and closes the channel. Idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Callable

import grpc
import grpc.aio

from sperse._server.config import ServerConfig, ServerConfigError
from sperse._server.logs import log_event
from sperse._server.task_feed import TaskFeed
from sperse._wire import pb
from sperse._wire.errors import GrpcErrorKind, GrpcFailure, classify
from sperse._wire.sperse_pb2_grpc import CoordinatorStub

__all__ = [
    "LEAVE_TIMEOUT",
    "RECONNECT_MAX",
    "REPORT_INTERVAL",
    "REPORT_NOTES",
    "Joiner",
    "advertised_address",
]

LEAVE_TIMEOUT = 1.0
REPORT_INTERVAL = 0.1  # seconds: notes gather this long before a report goes
REPORT_NOTES = 5000  # notes in one ReportTasks message at most
_RETRY_MIN, _RETRY_MAX = 0.1, 2.0  # backoff between join attempts at start
_INTERVAL_MIN, _INTERVAL_MAX = 0.05, 60.0  # what we accept as a heartbeat interval
RECONNECT_MAX = 1.0  # seconds: gRPC's reconnect backoff grows to 120 s by default
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", int(_RETRY_MIN * 1000)),
    ("grpc.min_reconnect_backoff_ms", int(_RETRY_MIN * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(RECONNECT_MAX * 1000)),
]


def advertised_address(host: str, port: int) -> str:
    """The address to register for a server bound to ``host``: the host name for a wildcard
    address, which no one can connect to."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _join_address(join: str) -> str:
    return join.removeprefix("sperse://").rstrip("/")


class Joiner:
    """Keeps one server registered with the coordinator at ``coordinator`` (HOST:PORT)."""

    def __init__(
        self,
        coordinator: str,
        token: str,
        member: pb.Member,
        load: Callable[[], pb.Member],
        *,
        tls_ca: bytes | None = None,
        start_timeout: float = 10.0,
        feed: TaskFeed | None = None,
        use_feed: Callable[[TaskFeed | None], None] | None = None,
    ) -> None:
        """``load``: the server's load now, as a member's load fields (busy, queued, memory,
        store, named objects). ``feed`` and ``use_feed``: report tasks when asked (above)."""
        self.coordinator = _join_address(coordinator)
        self._token = token
        self._member = member  # what does not change: name, address, tags, resources, ...
        self._load = load
        self._feed = feed
        self._use_feed = use_feed
        self._reporter: asyncio.Task[None] | None = None
        self.reports_sent = 0
        self._tls_ca = tls_ca
        self._start_timeout = start_timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: CoordinatorStub | None = None
        self._task: asyncio.Task[None] | None = None
        self._interval = 1.0
        self._registered = False  # the coordinator last said it knows this server
        self._stopped = False

    @classmethod
    def for_server(
        cls,
        config: ServerConfig,
        token: str,
        name: str,
        port: int,
        load: Callable[[], pb.Member],
        *,
        feed: TaskFeed | None = None,
        use_feed: Callable[[TaskFeed | None], None] | None = None,
    ) -> Joiner:
        """The joiner of a server with this configuration, name and bound port."""
        member = pb.Member(
            name=name,
            address=_join_address(config.advertise) or advertised_address(config.host, port),
            tags=sorted(config.tags),
            resources=dict(config.resources),
            workers=config.worker_count,
            tls=config.tls,
            instance=secrets.token_hex(8),
        )
        tls_ca = None
        if config.join_tls_ca:
            try:
                with open(config.join_tls_ca, "rb") as file:
                    tls_ca = file.read()
            except OSError as exc:
                raise ServerConfigError(
                    f"cannot read --join-ca {config.join_tls_ca!r}: {exc.strerror}"
                ) from exc
        return cls(config.join, token, member, load, tls_ca=tls_ca, feed=feed, use_feed=use_feed)

    @property
    def name(self) -> str:
        return self._member.name

    def _loaded(self) -> pb.Member:
        """The member with the server's load now."""
        member = pb.Member()
        member.CopyFrom(self._member)
        member.MergeFrom(self._load())
        return member

    def _take_interval(self, reply: pb.JoinReply) -> None:
        interval = reply.heartbeat_interval or 1.0
        self._interval = min(_INTERVAL_MAX, max(_INTERVAL_MIN, interval))
        self._report(reply.report_tasks)

    def _report(self, wanted: bool) -> None:
        """Start (or stop) reporting tasks, as the coordinator's reply asks."""
        feed = self._feed if wanted else None
        if feed is None or self._use_feed is None:
            if self._reporter is not None:
                self._reporter.cancel()
                self._reporter = None
                if self._use_feed is not None:
                    self._use_feed(None)
            return
        if self._reporter is None:
            self._use_feed(feed)
            self._reporter = asyncio.create_task(self._reports(feed), name="task-reports")

    # ---- start -------------------------------------------------------------------------

    async def start(self) -> None:
        """Join; raise ``ServerConfigError`` if the coordinator refuses or never answers."""
        if self._channel is not None:
            raise RuntimeError("this Joiner was started already")
        if self._tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._tls_ca)
            self._channel = grpc.aio.secure_channel(
                self.coordinator, credentials, options=_CHANNEL_OPTIONS
            )
        else:
            self._channel = grpc.aio.insecure_channel(self.coordinator, options=_CHANNEL_OPTIONS)
        self._stub = CoordinatorStub(self._channel)  # type: ignore[no-untyped-call]
        try:
            await self._first_join()
        except BaseException:
            await self._close_channel()
            raise
        self._task = asyncio.create_task(self._heartbeats(), name="coordinator-heartbeats")

    async def _first_join(self) -> None:
        assert self._stub is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        delay = _RETRY_MIN
        while True:
            left = deadline - loop.time()
            request = pb.JoinRequest(token=self._token, member=self._loaded())
            try:
                reply = await self._stub.Join(request, timeout=max(0.1, min(left, 5.0)))
            except grpc.aio.AioRpcError as exc:
                failure = classify(exc)
                if failure.kind is GrpcErrorKind.UNREACHABLE and loop.time() + delay < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                raise ServerConfigError(self._refusal(failure)) from None
            break
        self._take_interval(reply)
        self._registered = True
        log_event(
            logging.INFO,
            "joined",
            coordinator=self.coordinator,
            name=self.name,
            address=self._member.address,
            heartbeat_interval=self._interval,
        )

    def _refusal(self, failure: GrpcFailure) -> str:
        details, where = failure.details, self.coordinator
        if failure.kind is GrpcErrorKind.REFUSED_TOKEN:
            return (
                f"the coordinator at {where} refused this server's token: a server joins "
                "with its own token, so start it with the cluster token, the one the "
                "coordinator was given (--token, --token-file or --token-stdin)"
            )
        if failure.kind is GrpcErrorKind.EXISTS:
            return f"the coordinator at {where} refused the name {self.name!r}: {details}"
        if failure.kind is GrpcErrorKind.UNREACHABLE:
            return (
                f"no coordinator answered at {where} within {self._start_timeout:g} s "
                f"({details}): is `sperse coordinator` running there, and is --join right?"
            )
        if failure.kind is GrpcErrorKind.WRONG_SERVICE:
            return (
                f"{where} is not a sperse coordinator: --join takes the address that "
                "`sperse coordinator` printed, not a server's"
            )
        return f"the coordinator at {where} refused to register this server: {failure}"

    # ---- heartbeats --------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        stub = self._stub
        assert stub is not None
        outage = False
        while True:
            await asyncio.sleep(self._interval)
            timeout = max(1.0, 2 * self._interval)
            try:
                request = pb.HeartbeatRequest(token=self._token, member=self._loaded())
                reply = await stub.Heartbeat(request, timeout=timeout)
                if not reply.known:
                    self._registered = False
                    join = pb.JoinRequest(token=self._token, member=self._loaded())
                    self._take_interval(await stub.Join(join, timeout=timeout))
                    self._registered = True
                    log_event(
                        logging.INFO,
                        "joined_again",
                        coordinator=self.coordinator,
                        name=self.name,
                        reason="the coordinator no longer knew this server",
                    )
            except grpc.aio.AioRpcError as exc:
                if not outage:
                    log_event(
                        logging.WARNING,
                        "heartbeat_failed",
                        coordinator=self.coordinator,
                        name=self.name,
                        error=str(classify(exc)),
                        hint="the server keeps working and keeps trying",
                    )
                outage = True
                continue
            if outage:
                log_event(logging.INFO, "heartbeat_resumed", coordinator=self.coordinator)
                outage = False

    # ---- task reports ------------------------------------------------------------------

    async def _reports(self, feed: TaskFeed) -> None:
        stub = self._stub
        assert stub is not None
        lost = 0  # notes of reports that failed: dropped, counted with the next one
        outage = False
        while True:
            await feed.ready.wait()
            await asyncio.sleep(REPORT_INTERVAL)  # let a batch gather
            request = pb.TaskReport(token=self._token, server=self.name, dropped=lost)
            feed.fill(request, REPORT_NOTES)
            try:
                await stub.ReportTasks(request, timeout=max(1.0, 2 * self._interval))
            except grpc.aio.AioRpcError as exc:
                lost = len(request.notes) + request.dropped
                if not outage:
                    log_event(
                        logging.WARNING,
                        "task_report_failed",
                        coordinator=self.coordinator,
                        error=str(classify(exc)),
                        hint="the coordinator's dashboard misses these tasks' events",
                    )
                outage = True
                continue
            lost = 0
            outage = False
            self.reports_sent += 1

    # ---- stop --------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop heartbeating, Leave, close the channel. Never raises; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._task, self._reporter):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        if self._reporter is not None and self._use_feed is not None:
            self._use_feed(None)
        if self._stub is not None and self._registered:
            # Only when registered: the name may have passed to another server meanwhile.
            try:
                async with asyncio.timeout(LEAVE_TIMEOUT):
                    await self._stub.Leave(pb.LeaveRequest(token=self._token, name=self.name))
                log_event(logging.INFO, "left", coordinator=self.coordinator, name=self.name)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                log_event(
                    logging.WARNING,
                    "leave_failed",
                    coordinator=self.coordinator,
                    error=(
                        f"no answer within {LEAVE_TIMEOUT:g} s"
                        if isinstance(exc, TimeoutError)
                        else str(classify(exc))
                    ),
                    hint="the coordinator removes this server when its heartbeats stop",
                )
        await self._close_channel()

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
