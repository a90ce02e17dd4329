"""Serving the dashboard: ``DashboardServer`` on a running event loop (the coordinator's),
``DashboardThread`` on a loop of its own (a client's: its program has no loop to lend).

Invariants:

- The socket is bound before ``start`` returns (port 0: a free one, in ``port``), on
  ``host`` (127.0.0.1 unless told otherwise): a busy port or a wrong host is a
  ``DashboardError`` at once, not a log line later.
- uvicorn serves it without its own signal handling or lifespan: the host owns the
  process's signals. ``stop`` ends the live feeds first (they would keep connections open),
  then closes the sockets; it is idempotent.
- TLS when the host has it (the same certificate and key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import quote

import uvicorn

from sperse._dashboard.app import build_app
from sperse._dashboard.auth import TokenGate
from sperse._dashboard.hub import Hub

__all__ = ["DashboardConfig", "DashboardError", "DashboardServer", "DashboardThread"]


class DashboardError(Exception):
    """The dashboard cannot start (the message says why and what to do)."""


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = 0
    token: str = field(default="", repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise DashboardError(
            f"the dashboard cannot listen on {host}:{port}: {exc.strerror or exc}; choose "
            "another --dashboard-port (0: any free one)"
        ) from exc
    sock.setblocking(False)
    return sock


class DashboardServer:
    """``async with DashboardServer(hub, config) as d:`` serves ``d.url`` until the block ends."""

    def __init__(self, hub: Hub, config: DashboardConfig) -> None:
        if not config.token:
            raise DashboardError("the dashboard needs the cluster token")
        self.hub = hub
        self.config = config
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0

    @property
    def tls(self) -> bool:
        return bool(self.config.tls_cert)

    @property
    def base_url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    @property
    def url(self) -> str:
        """The address to open: it logs in (``?token=``) and sets the cookie."""
        return f"{self.base_url}?token={quote(self.config.token)}"

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("this DashboardServer was started already")
        config = self.config
        self._stopping = asyncio.Event()
        app = TokenGate(build_app(self.hub, self._stopping), config.token, secure=self.tls)
        self._sock = _bind(config.host, config.port)
        self.port = self._sock.getsockname()[1]
        uv = uvicorn.Config(
            app,
            lifespan="off",
            log_level=logging.WARNING,
            access_log=False,
            ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key,
            timeout_graceful_shutdown=2,
        )
        try:
            uv.load()
        except Exception as exc:  # a bad certificate or key
            self._sock.close()
            raise DashboardError(f"the dashboard cannot use its TLS files: {exc}") from exc
        server = uvicorn.Server(uv)
        server.lifespan = uv.lifespan_class(uv)
        self._server = server
        await server.startup(sockets=[self._sock])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        assert self._stopping is not None
        self._stopping.set()
        self.hub.wake_all()
        server.should_exit = True
        await server.shutdown(sockets=[self._sock] if self._sock is not None else None)

    async def __aenter__(self) -> DashboardServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class DashboardThread:
    """A ``DashboardServer`` on an event loop of its own, in a daemon thread: for a client.
    Started when made; ``close()`` stops it (idempotent)."""

    def __init__(self, hub: Hub, config: DashboardConfig, *, timeout: float = 10.0) -> None:
        self.hub = hub
        self._loop = asyncio.new_event_loop()
        self._server = DashboardServer(hub, config)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sperse-dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise DashboardError(f"the dashboard did not start within {timeout:g} s")
        if self._error is not None:
            self._thread.join()
            raise self._error

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def port(self) -> int:
        return self._server.port

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._server.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # the loop closed already
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
