"""``SperseServer``: a gRPC server, its sessions and its worker processes, as one async
context manager.

Invariants:

- The configuration is checked before anything listens (``ServerConfigError``).
- ``start()`` returns once the port listens; the worker processes start in the background
  and tasks wait for them in the pool's queue: a server is ready in the time it takes to bind.
- ``stop()`` (and leaving ``async with``) ends every stream (queued events are sent first,
  within ``grace``), every session, and the workers: when it returns, every worker process
  has exited. It is idempotent.
- Beside the gRPC port, a server with shared memory on also listens on an abstract Unix
  socket (:mod:`sperse._server.local`) that it offers to clients on its host only.
- With ``join`` (a coordinator), ``start()`` ends by registering there (a refusal stops the
  server: ``ServerConfigError``) and ``stop()`` begins by leaving (:mod:`sperse._server.join`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from types import TracebackType

import grpc
import grpc.aio

from sperse._core.nested import WORKER_CA_ENV, WORKER_SERVER_ENV
from sperse._server import local
from sperse._server.config import ServerConfig, ServerConfigError, check_config, default_name
from sperse._server.core import ServerCore, ServerStats
from sperse._server.join import Joiner
from sperse._server.logs import log, log_event
from sperse._server.memory import rss, rss_total
from sperse._server.service import SessionService
from sperse._server.store import StateStore, start_state_store
from sperse._server.task_feed import TaskFeed
from sperse._tokens import new_token
from sperse._wire import MAX_MESSAGE, pb
from sperse._wire.calls import add_service

__all__ = ["NAMED_OBJECTS_SENT", "SperseServer"]

NAMED_OBJECTS_SENT = 100  # named remote objects a heartbeat lists at most

_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.so_reuseport", 0),  # two servers must never share a port unnoticed
    # Find dead clients (a crashed laptop sends no FIN) so their sessions start their grace.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def add_port(
    server: grpc.aio.Server,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    error: type[ServerConfigError] = ServerConfigError,
) -> int:
    """Have ``server`` listen on ``host:port`` (with TLS when given the certificate and key
    files, both checked by the caller's config check); the port chosen. Raises ``error``
    saying what to fix (the server's, or the coordinator's)."""
    bracketed = f"[{host}]" if ":" in host else host
    target = f"{bracketed}:{port}"

    def read(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise error(f"cannot read the TLS {what} {path!r}: {exc.strerror}") from exc

    try:
        if tls_cert and tls_key:
            credentials = grpc.ssl_server_credentials(
                [(read(tls_key, "key"), read(tls_cert, "certificate"))]
            )
            bound: int = server.add_secure_port(target, credentials)
        else:
            bound = server.add_insecure_port(target)
    except RuntimeError as exc:
        raise error(
            f"cannot listen on {target}: {exc}. Is another process using the port? Choose "
            "another --port, or 0 for any free one"
        ) from exc
    return bound


class SperseServer:
    """A sperse server. ``async with SperseServer(config) as server:`` listens on
    ``server.address`` until the block ends."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.token = config.token or new_token()
        self._grpc: grpc.aio.Server | None = None
        self._core: ServerCore | None = None
        self._service: SessionService | None = None
        self._local: local.LocalServer | None = None
        self.state_store: StateStore | None = None  # sperse.state() of its tasks
        self._port = 0
        self._name = config.name
        self._stopping = False
        self._closed = asyncio.Event()
        self._joiner: Joiner | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen when the config said 0)."""
        return self._port

    @property
    def name(self) -> str:
        return self._name

    @property
    def local_address(self) -> str:
        """Its same-host socket's (an abstract Unix socket's name), or "" without one."""
        return self._local.address if self._local is not None else ""

    @property
    def address(self) -> str:
        host = self.config.host
        return f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"

    async def start(self) -> None:
        if self._grpc is not None:
            raise RuntimeError("this SperseServer was started already")
        config = self.config
        check_config(config)
        log.setLevel(config.log_level.upper())
        server = grpc.aio.server(options=_GRPC_OPTIONS)
        port = add_port(server, config.host, config.port, config.tls_cert, config.tls_key)
        self._port = port
        self._name = config.name or default_name(port)
        self._core = ServerCore(config, self._name, asyncio.get_running_loop())
        self._core.worker_env = self._worker_env(port)
        self._core.worker_token = self.token
        self._service = SessionService(config, self.token, self._core, port)
        add_service(self._service, server)
        self._grpc = server
        # The workers first (they start in the background, the port is known): they are
        # forked meanwhile. Before the pool: its workers inherit the store's address (see
        # _server.store).
        store = self.state_store = start_state_store(
            config.max_value_size, self._worker_pids, asyncio.get_running_loop()
        )
        self._core.start()
        try:
            await server.start()
        except Exception as exc:  # it cannot listen after all: nothing is left running
            await server.stop(None)
            await self._core.close()
            if store is not None:
                store.stop()
            raise ServerConfigError(f"cannot start listening on {self.address}: {exc}") from exc
        if config.shm and local.available():
            listener = local.LocalServer(self._service)
            try:
                await listener.start()
            except OSError as exc:
                log_event(logging.WARNING, "local_listener_failed", error=exc)
            else:
                self._local = listener
                self._service.local_address = listener.address
        log_event(
            logging.INFO,
            "server_started",
            name=self._name,
            address=self.address,
            workers=config.worker_count,
            tls=config.tls,
            tags=",".join(sorted(config.tags)) or "-",
        )
        if config.join:  # last: registered only once it serves; a refusal stops it
            try:
                joiner = Joiner.for_server(
                    config,
                    self.token,
                    self._name,
                    port,
                    self.load,
                    feed=TaskFeed(),
                    use_feed=self._use_feed,
                )
                await joiner.start()
            except BaseException:
                await self.stop()
                raise
            self._joiner = joiner

    def _worker_env(self, port: int) -> dict[str, str]:
        """Where remote code reaches this server: its address (loopback when it listens on
        every interface). The cluster token goes to the workers apart (``worker_token``:
        remote code is trusted with it, as the client that sent it is), not in their
        environment, which every process a task starts inherits."""
        host = self.config.host
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        env = {WORKER_SERVER_ENV: f"{host}:{port}"}
        if self.config.tls_cert:
            env[WORKER_CA_ENV] = os.path.abspath(self.config.tls_cert)
        return env

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop: streams flush and end (cancelled after ``grace`` seconds), sessions end,
        workers exit."""
        if self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        try:
            if self._joiner is not None:  # first: clients stop picking this server
                await self._joiner.stop()
            if self._service is not None:
                self._service.stop()
            stopping = []
            if self._grpc is not None:
                stopping.append(self._grpc.stop(grace))
            if self._local is not None:
                stopping.append(self._local.stop(grace))
            await asyncio.gather(*stopping)
            if self._core is not None:
                await self._core.close()
            if self.state_store is not None:  # after the workers: none is left to use it
                self.state_store.stop()
            log_event(logging.INFO, "server_stopped", name=self._name)
        finally:
            self._closed.set()

    def _worker_pids(self) -> tuple[int, ...]:
        """Whose ``sperse.state()`` the store serves: the pool's and remote objects' workers."""
        if self._core is None:
            return ()
        stats = self._core.stats()
        return stats.worker_pids + stats.object_worker_pids

    def _use_feed(self, feed: TaskFeed | None) -> None:
        if self._core is not None:
            self._core.task_feed = feed

    def load(self) -> pb.Member:
        """The load fields of this server's member now (the heartbeat's): tasks, held values,
        memory, the store, remote objects (only the named ones by name). On the loop."""
        if self._core is None:
            raise RuntimeError("the server is not started")
        stats = self._core.stats()
        store = self.state_store.stats() if self.state_store is not None else None
        named = [o for o in self._core.remote_objects() if o.name][:NAMED_OBJECTS_SENT]
        return pb.Member(
            busy=stats.busy,
            queued=stats.queued,
            objects=stats.objects_total,
            object_bytes=stats.object_bytes_total,
            sessions=stats.sessions,
            rss=rss(os.getpid()),
            workers_rss=rss_total(
                stats.worker_pids + stats.object_worker_pids + stats.spare_object_pids
            ),
            store_keys=store.keys if store is not None else 0,
            store_bytes=store.bytes if store is not None else 0,
            remote_objects=stats.remote_objects,
            named_objects=[
                pb.NamedObject(
                    name=o.name,
                    type_name=o.type_name,
                    calls=o.calls,
                    restarts=o.restarts,
                    pid=o.pid,
                )
                for o in named
            ],
        )

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def stats(self) -> ServerStats:
        """A snapshot of the whole server (call it on the server's event loop)."""
        if self._core is None:
            raise RuntimeError("the server is not started")
        return self._core.stats()

    async def __aenter__(self) -> SperseServer:
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
        return f"<SperseServer {self._name!r} at {self.address}>"
