"""``CoordinatorServer``: the cluster registry over gRPC (service ``Coordinator``).

Invariants:

- The configuration is checked before anything listens (``CoordinatorConfigError``), with
  the server's rules: no listening beyond loopback without TLS unless ``insecure``.
- Every RPC checks the cluster token first (``hmac.compare_digest``) and ends UNAUTHENTICATED
  without reading anything else of a request that does not carry it.
- The membership is a :class:`~sperse._coordinator.registry.Registry`, touched only on the
  server's event loop. A sweep task removes members silent for ``heartbeat_timeout``; it runs
  every ``heartbeat_timeout / 4`` (at most once a second, at least every 50 ms), so a dead
  server is gone within ``1.25 * heartbeat_timeout``.
- ``Watch`` sends the whole membership at once, then again after every join, leave and
  removal, and at most once per ``LOAD_INTERVAL`` when only the load changed.
- For its first ``heartbeat_timeout`` a coordinator is *settling*: it may have been
  restarted, and the servers that were registered with the one before re-join at their next
  heartbeat (told ``known=False``), so its snapshots say ``settling`` (a server missing from
  them has not left); the sweep that ends it sends every watcher a snapshot without it.
- ``stop()`` ends every ``Watch`` stream first (watchers see the stream end and reconnect
  elsewhere or later), then the gRPC server, then the sweep task. It is idempotent.
- One log line per join, leave and removal, with the reason. Tokens are never logged.
- With a dashboard, a join reply asks the server to report its tasks (``report_tasks``);
  ``ReportTasks`` feeds them to the dashboard (:mod:`~sperse._coordinator.tasks`). Without
  one, servers send none, and a report is answered without being read further.
- ``Share``: a client's workspace graph or flow run, for the dashboard's Workspace and Flows
  pages (:mod:`~sperse._coordinator.workspaces`); answered ``shown=False`` without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn

import grpc
import grpc.aio

from sperse._coordinator.registry import Change, NameTaken, Registry
from sperse._coordinator.tasks import apply_report, server_gone
from sperse._coordinator.workspaces import apply_share
from sperse._dashboard.hub import Hub
from sperse._dashboard.serve import DashboardConfig, DashboardError, DashboardServer
from sperse._server.config import ServerConfigError, is_loopback
from sperse._server.logs import _value  # one format for every sperse log line
from sperse._server.server import add_port
from sperse._tokens import new_token
from sperse._wire import pb
from sperse._wire.sperse_pb2_grpc import add_CoordinatorServicer_to_server

__all__ = [
    "LOAD_INTERVAL",
    "CoordinatorConfig",
    "CoordinatorConfigError",
    "CoordinatorServer",
    "check_config",
]

log = logging.getLogger("sperse.coordinator")

_Context = Any  # grpc.aio.ServicerContext: grpc ships no type hints

LOAD_INTERVAL = 1.0  # seconds between two snapshots sent for load changes alone

_GRPC_OPTIONS = [
    ("grpc.so_reuseport", 0),  # two coordinators must never share a port unnoticed
    ("grpc.keepalive_time_ms", 20_000),  # find dead watchers
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def log_event(level: int, event: str, **fields: object) -> None:
    if log.isEnabledFor(level):
        parts = [f"event={event}"]
        parts.extend(f"{key}={_value(value)}" for key, value in fields.items())
        log.log(level, " ".join(parts))


class CoordinatorConfigError(ServerConfigError):
    """The coordinator cannot start with this configuration (the message says how to fix it)."""


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """How a coordinator listens and authenticates. ``token`` empty: a random one
    (``CoordinatorServer.token``)."""

    host: str = "127.0.0.1"
    port: int = 0
    token: str = field(default="", repr=False)  # a secret: never in logs or reprs
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure: bool = False
    heartbeat_timeout: float = 5.0
    log_level: str = "INFO"
    dashboard_port: int | None = None  # None: no dashboard; 0: a free port
    dashboard_host: str = "127.0.0.1"

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_key)


def check_config(config: CoordinatorConfig) -> None:
    """Raise ``CoordinatorConfigError`` for a configuration the coordinator must not run
    with."""
    if not is_loopback(config.host) and not config.tls and not config.insecure:
        raise CoordinatorConfigError(
            f"refusing to listen on {config.host!r} without TLS: anyone who can reach the port "
            "could watch the cluster token go by and join servers of their own. Give "
            "--tls-cert and --tls-key, or listen on 127.0.0.1 and reach it through a tunnel "
            "(ssh -L), or pass --insecure if the network is private and trusted."
        )
    if bool(config.tls_cert) != bool(config.tls_key):
        given, missing = (
            ("--tls-cert", "--tls-key") if config.tls_cert else ("--tls-key", "--tls-cert")
        )
        raise CoordinatorConfigError(f"{given} was given without {missing}: TLS needs both files")
    for path in (config.tls_cert, config.tls_key):
        if path and not os.path.isfile(path):
            raise CoordinatorConfigError(f"TLS file {path!r} does not exist or is not a file")
    if not 0 <= config.port <= 65535:
        raise CoordinatorConfigError(f"port {config.port} is not between 0 and 65535")
    if config.dashboard_port is not None and not 0 <= config.dashboard_port <= 65535:
        raise CoordinatorConfigError(
            f"--dashboard-port {config.dashboard_port} is not between 0 and 65535"
        )
    if (
        config.dashboard_port is not None
        and not is_loopback(config.dashboard_host)
        and not config.tls
        and not config.insecure
    ):
        raise CoordinatorConfigError(
            f"refusing to serve the dashboard on {config.dashboard_host!r} without TLS: the "
            "token would cross the network in clear text. Give --tls-cert and --tls-key, or "
            "keep it on 127.0.0.1 and reach it through a tunnel (ssh -L)."
        )
    if not config.heartbeat_timeout > 0:
        raise CoordinatorConfigError(
            f"--heartbeat-timeout must be more than 0 seconds, not {config.heartbeat_timeout}"
        )
    if not isinstance(logging.getLevelName(config.log_level.upper()), int):
        raise CoordinatorConfigError(
            f"unknown log level {config.log_level!r}: use debug, info, warning or error"
        )


def member_json(member: pb.Member) -> dict[str, object]:
    """A member as the dashboard's cluster page shows it."""
    return {
        "name": member.name,
        "address": member.address,
        "tags": sorted(member.tags),
        "resources": dict(member.resources),
        "workers": member.workers,
        "busy": member.busy,
        "queued": member.queued,
        "objects": member.objects,
        "object_bytes": member.object_bytes,
        "sessions": member.sessions,
        "rss": member.rss,
        "workers_rss": member.workers_rss,
        "store_keys": member.store_keys,
        "store_bytes": member.store_bytes,
        "remote_objects": member.remote_objects,
        "joined": member.joined,
        "last_heartbeat": member.last_heartbeat,
        "tls": member.tls,
    }


def named_objects_json(membership: pb.Membership) -> list[dict[str, object]]:
    """The named remote objects of every member, as the dashboard's objects page lists them
    (unnamed ones only counted, per server: their ids are capabilities)."""
    return [
        {
            "object_id": "",
            "name": o.name,
            "type_name": o.type_name,
            "server": m.name,
            "calls": o.calls,
            "restarts": o.restarts,
            "pid": o.pid,
        }
        for m in membership.members
        for o in m.named_objects
    ]


def _valid_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) <= 65535)


class _Service:
    """The ``Coordinator`` servicer: token check, then the registry. Runs on the loop."""

    def __init__(self, token: str, registry: Registry) -> None:
        self._token = token.encode()
        self.registry = registry
        self._changed = asyncio.Event()
        self.stopping = False
        self.hub: Hub | None = None  # the dashboard's, when there is one: servers report tasks

    # ---- helpers ----------------------------------------------------------------------

    async def _check_token(self, token: str, context: _Context) -> None:
        if not hmac.compare_digest(token.encode(), self._token):
            peer = context.peer()
            # No token at all is how clients ask "is this a coordinator?" (is_coordinator):
            # not worth a warning on the terminal of `sperse up`; a wrong one is.
            level = logging.WARNING if token else logging.DEBUG
            log_event(level, "token_refused" if token else "token_missing", peer=peer)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "wrong or missing cluster token: pass the cluster token, the one the "
                "coordinator was started with (--token, --token-file, --token-stdin); a "
                "server joins with its own token, so it must be that one",
            )

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change or heartbeat (a new event each time)."""
        return self._changed

    def notify(self) -> None:
        """Wake every watcher (each one decides whether to send)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            level = logging.WARNING if change.kind == "removed" else logging.INFO
            log_event(
                level,
                f"member_{change.kind}",
                name=change.name,
                address=change.address,
                reason=change.reason,
                members=len(self.registry),
            )
            if change.kind in ("left", "removed") and self.hub is not None:
                server_gone(self.hub, change.name, change.reason)
        if changes:
            self.notify()

    # ---- RPCs -------------------------------------------------------------------------

    async def Join(self, request: pb.JoinRequest, context: _Context) -> pb.JoinReply:
        await self._check_token(request.token, context)
        member = request.member
        if not member.name:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a member needs a name")
        if not _valid_address(member.address):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{member.address!r} is not HOST:PORT: give the address clients reach the "
                "server at (sperse server --advertise HOST:PORT)",
            )
        try:
            change = self.registry.join(member)
        except NameTaken as taken:
            log_event(
                logging.WARNING,
                "join_refused",
                name=member.name,
                address=member.address,
                reason=f"the name is held by the live member at {taken.address}",
            )
            await _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"the name {member.name!r} is taken by the server at {taken.address}, which is "
                "alive: give this server another name (sperse server --name NAME), or stop "
                "the other one first",
            )
        self.apply([change])
        return pb.JoinReply(
            heartbeat_interval=self.registry.timeout / 5, report_tasks=self.hub is not None
        )

    async def ReportTasks(self, request: pb.TaskReport, context: _Context) -> pb.TaskReportReply:
        await self._check_token(request.token, context)
        if request.server not in self.registry:
            return pb.TaskReportReply(known=False)
        if self.hub is not None:
            apply_report(self.hub, request)
        return pb.TaskReportReply(known=True)

    async def Share(self, request: pb.ClientShare, context: _Context) -> pb.ShareReply:
        await self._check_token(request.token, context)
        hub = self.hub
        if hub is None:
            return pb.ShareReply(shown=False)
        return pb.ShareReply(shown=apply_share(hub, request), flows_watched=hub.flow_viewers > 0)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: _Context) -> pb.HeartbeatReply:
        await self._check_token(request.token, context)
        known = self.registry.heartbeat(request.member)
        if known:
            self.notify()  # watchers send the new load within LOAD_INTERVAL
        return pb.HeartbeatReply(known=known)

    async def Leave(self, request: pb.LeaveRequest, context: _Context) -> pb.LeaveReply:
        await self._check_token(request.token, context)
        change = self.registry.leave(request.name)
        self.apply([change] if change is not None else [])
        return pb.LeaveReply()

    async def Watch(
        self, request: pb.WatchRequest, context: _Context
    ) -> AsyncIterator[pb.Membership]:
        await self._check_token(request.token, context)
        loop = asyncio.get_running_loop()
        registry = self.registry
        while not self.stopping:
            members_seen, load_seen = registry.members_version, registry.load_version
            yield registry.snapshot()
            sent = loop.time()
            while not self.stopping and registry.members_version == members_seen:
                changed = self._changed
                if registry.load_version != load_seen:
                    delay = sent + LOAD_INTERVAL - loop.time()
                    if delay <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await changed.wait()
                else:
                    await changed.wait()


async def _abort(context: _Context, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # pragma: no cover


class CoordinatorServer:
    """A coordinator. ``async with CoordinatorServer(config) as c:`` listens on ``c.address``
    until the block ends."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.token = config.token or new_token()
        self._grpc: grpc.aio.Server | None = None
        self._service: _Service | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._port = 0
        self._stopping = False
        self._closed = asyncio.Event()
        self._dashboard: DashboardServer | None = None
        self._feeder: asyncio.Task[None] | None = None

    @property
    def dashboard_url(self) -> str:
        """The dashboard's address with the token (``""``: no dashboard)."""
        return self._dashboard.url if self._dashboard is not None else ""

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen when the config said 0)."""
        return self._port

    @property
    def address(self) -> str:
        host = self.config.host
        return f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"

    def members(self) -> pb.Membership:
        """The membership now (call it on the coordinator's event loop)."""
        if self._service is None:
            raise RuntimeError("the coordinator is not started")
        return self._service.registry.snapshot()

    async def start(self) -> None:
        if self._grpc is not None:
            raise RuntimeError("this CoordinatorServer was started already")
        config = self.config
        check_config(config)
        log.setLevel(config.log_level.upper())
        server = grpc.aio.server(options=_GRPC_OPTIONS)
        port = add_port(
            server,
            config.host,
            config.port,
            config.tls_cert,
            config.tls_key,
            CoordinatorConfigError,
        )
        self._port = port
        self._service = _Service(self.token, Registry(config.heartbeat_timeout))
        add_CoordinatorServicer_to_server(self._service, server)  # type: ignore[no-untyped-call]
        self._grpc = server
        try:
            await server.start()
        except Exception as exc:  # a bad certificate or key shows up here
            await server.stop(None)
            raise CoordinatorConfigError(
                f"cannot start listening on {self.address}: {exc}"
            ) from exc
        self._sweeper = asyncio.create_task(self._sweep(), name="coordinator-sweep")
        if config.dashboard_port is not None:
            try:
                await self._start_dashboard()
            except BaseException:
                await self.stop(None)
                raise
        log_event(
            logging.INFO,
            "coordinator_started",
            address=self.address,
            tls=config.tls,
            heartbeat_timeout=config.heartbeat_timeout,
        )

    async def _start_dashboard(self) -> None:
        config = self.config
        assert config.dashboard_port is not None
        hub = Hub(f"coordinator at {self.address}")
        hub.has_tasks = True
        objects: list[dict[str, object]] = []
        hub.objects_named_only = True
        hub.objects = lambda: list(objects)  # refreshed by _feed_dashboard, on the loop
        dashboard = DashboardServer(
            hub,
            DashboardConfig(
                host=config.dashboard_host,
                port=config.dashboard_port,
                token=self.token,
                tls_cert=config.tls_cert,
                tls_key=config.tls_key,
            ),
        )
        try:
            await dashboard.start()
        except DashboardError as exc:
            raise CoordinatorConfigError(str(exc)) from exc
        self._dashboard = dashboard
        assert self._service is not None
        self._service.hub = hub
        self._feeder = asyncio.create_task(
            self._feed_dashboard(hub, objects), name="coordinator-dashboard"
        )
        log_event(logging.INFO, "dashboard_started", address=dashboard.base_url)

    async def _feed_dashboard(self, hub: Hub, objects: list[dict[str, object]]) -> None:
        """The membership into the dashboard, after every change and heartbeat (and the
        named objects, which the objects page reads from another thread: replaced whole)."""
        assert self._service is not None
        service = self._service
        while True:
            changed = service.changed
            membership = service.registry.snapshot()
            hub.servers(member_json(m) for m in membership.members)
            objects[:] = named_objects_json(membership)
            await changed.wait()

    async def _sweep(self) -> None:
        assert self._service is not None
        service = self._service
        interval = min(1.0, max(0.05, self.config.heartbeat_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            registry = service.registry
            settling = registry.settling
            service.apply(registry.sweep())
            if settling and not registry.settling:
                log_event(logging.INFO, "settled", members=len(registry))
                service.notify()  # watchers send a snapshot that is no longer settling

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop: watch streams end, then the server (calls cancelled after ``grace``)."""
        if self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        try:
            if self._service is not None:
                self._service.stopping = True
                self._service.notify()
            if self._dashboard is not None:
                await self._dashboard.stop()
            if self._grpc is not None:
                await self._grpc.stop(grace)
            for task in (self._sweeper, self._feeder):
                if task is not None:
                    task.cancel()
                    await asyncio.wait([task])
            log_event(logging.INFO, "coordinator_stopped", address=self.address)
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> CoordinatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<CoordinatorServer at {self.address}>"
