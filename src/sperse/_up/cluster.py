"""``LocalCluster``: a coordinator and servers on this machine, as child processes.

Invariants:

- Every child listens on 127.0.0.1, runs in a process group of its own (Ctrl-C in the
  terminal is ``sperse up``'s to handle: it stops the children in order) and gets the
  cluster token on its standard input, never on a command line. Each child keeps reading
  its stdin and stops by itself when it closes: if this process dies, so does the cluster.
- A ``LocalCluster`` is ready when the coordinator and every server have printed their
  ready line; a server prints it only after the coordinator has registered it.
- ``close()`` stops the servers, then the coordinator, each by its own pid: stdin closed,
  then SIGTERM after ``STOP_TIMEOUT``, then SIGKILL. It is idempotent.
- A ``LocalCluster`` records nothing (``sperse up`` does: :mod:`sperse._up.record`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from sperse._tokens import new_token
from sperse.errors import ServerUnavailable

__all__ = ["KILL_TIMEOUT", "STOP_TIMEOUT", "ClusterProcess", "LocalCluster", "ServerSpec"]

STOP_TIMEOUT = 10.0  # seconds a child has to stop by itself once its stdin closes
KILL_TIMEOUT = 2.0  # then after SIGTERM, before SIGKILL


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server to start: ``cwd`` is its working directory (created if missing)."""

    name: str
    tags: frozenset[str] = frozenset()
    resources: Mapping[str, float] = field(default_factory=dict)
    workers: int = 1
    cwd: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", frozenset(self.tags))
        resources = {str(k): float(v) for k, v in self.resources.items()}
        object.__setattr__(self, "resources", MappingProxyType(resources))


@dataclass(eq=False, slots=True)
class ClusterProcess:
    """A child process of a ``LocalCluster``: the coordinator (``spec`` None) or a server."""

    name: str
    process: subprocess.Popen[bytes]
    url: str = ""
    dashboard: str = ""  # the coordinator's dashboard URL (with the token), when it serves one
    spec: ServerSpec | None = None
    expected_exit: bool = False  # stopped or killed by us: not to be reported

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def tags(self) -> frozenset[str]:
        return self.spec.tags if self.spec is not None else frozenset()

    @property
    def workers(self) -> int:
        return self.spec.workers if self.spec is not None else 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def __repr__(self) -> str:
        return f"<ClusterProcess {self.name} pid={self.pid} {self.url or 'starting'}>"


def _spawn(
    name: str,
    args: list[str],
    token: str,
    *,
    cwd: str | None = None,
    stderr: int | IO[Any] | None = None,
) -> ClusterProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=cwd,
        start_new_session=True,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(token.encode() + b"\n")
        process.stdin.flush()
    except BrokenPipeError:
        pass  # it died already: wait_ready says so
    return ClusterProcess(name, process)


def _wait_ready(child: ClusterProcess, deadline: float) -> str:
    """The URL of ``child``'s ready line; ``ServerUnavailable`` if it exits or times out.
    A ``... dashboard at URL`` line before it goes to ``child.dashboard``."""
    stdout = child.process.stdout
    assert stdout is not None
    buffered = b""
    while True:
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            text = line.decode(errors="replace").strip()
            if " dashboard at " in text:
                child.dashboard = text.rsplit(" dashboard at ", 1)[1]
                continue
            if " ready at " not in text:
                raise ServerUnavailable(f"{child.name} said {text!r} instead of its ready line")
            return text.rsplit(" ready at ", 1)[1]
        left = deadline - time.monotonic()
        if child.process.poll() is not None or left <= 0:
            why = (
                f"exited with code {child.process.returncode}"
                if child.process.poll() is not None
                else "did not print its ready line in time"
            )
            raise ServerUnavailable(
                f"{child.name} (pid {child.pid}) of the local cluster did not start: it {why}; "
                "its error output is above"
            )
        readable, _, _ = select.select([stdout], [], [], left)
        if readable:
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:  # stdout closed: poll() tells the exit code next turn
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(KILL_TIMEOUT)
                continue
            buffered += chunk


def _stop(children: Sequence[ClusterProcess]) -> None:
    """Stop ``children`` together, each by its own pid: stdin closed, SIGTERM, SIGKILL."""
    from sperse._serialize import shm

    for child in children:
        child.expected_exit = True
        if child.process.stdin is not None:
            with contextlib.suppress(OSError):
                child.process.stdin.close()
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(max(0.0, deadline - time.monotonic()))
    late = [child for child in children if child.alive()]
    for child in late:
        child.process.terminate()
    deadline = time.monotonic() + KILL_TIMEOUT
    for child in late:
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
    for child in children:
        if child.process.stdout is not None:
            child.process.stdout.close()
        if child.spec is not None:  # a server that was killed leaves its files behind
            shm.sweep(shm.server_prefix(child.pid))


def _cwds(
    cwd: str | os.PathLike[str] | Sequence[str | os.PathLike[str] | None] | None, count: int
) -> list[str | None]:
    if cwd is None or isinstance(cwd, str | os.PathLike):
        return [None if cwd is None else os.fspath(cwd)] * count
    cwds = [None if c is None else os.fspath(c) for c in cwd]
    if len(cwds) != count:
        raise ValueError(f"cwd has {len(cwds)} entries for {count} servers: give one per server")
    return cwds


class LocalCluster:
    """A coordinator and servers on this machine, as child processes.

    ``servers`` is a count (named ``name_prefix`` + 1, 2, ...; ``tags``, ``cwd`` per server)
    or a list of ``ServerSpec``. ``with LocalCluster(3) as cluster:`` ... ``cluster.url`` is
    the coordinator, ``cluster.token`` the cluster token, ``cluster.servers`` the servers.
    """

    def __init__(
        self,
        servers: int | Sequence[ServerSpec] = 2,
        *,
        tags: Sequence[Iterable[str]] = (),
        workers: int = 1,
        heartbeat_timeout: float = 5.0,
        cwd: str | os.PathLike[str] | Sequence[str | os.PathLike[str] | None] | None = None,
        port: int = 0,
        token: str | None = None,
        name_prefix: str = "server-",
        log_level: str = "warning",
        coordinator_log_level: str | None = None,
        ready_timeout: float = 30.0,
        stderr: int | IO[Any] | None = None,
        dashboard_port: int | None = None,
    ) -> None:
        """``dashboard_port``: the coordinator serves the dashboard there (0: a free port;
        None: no dashboard); ``dashboard`` is then its URL, token included."""
        if isinstance(servers, int):
            if len(tags) > servers:
                raise ValueError(f"{len(tags)} tag lists for {servers} servers")
            all_tags = [frozenset(t) for t in tags] + [frozenset()] * (servers - len(tags))
            specs = [
                ServerSpec(f"{name_prefix}{i + 1}", all_tags[i], workers=workers, cwd=where)
                for i, where in enumerate(_cwds(cwd, servers))
            ]
        else:
            specs = list(servers)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"server names must differ: {names}")
        self.token = token or new_token()
        self.heartbeat_timeout = heartbeat_timeout
        self.servers: list[ClusterProcess] = []
        self._log_level = log_level
        self._ready_timeout = ready_timeout
        self._stderr = stderr
        self._closed = False
        self._gone: list[ClusterProcess] = []  # servers killed or stopped singly
        self._coordinator_args = ["--token-stdin", "--heartbeat-timeout", str(heartbeat_timeout)]
        self._coordinator_args += ["--log-level", coordinator_log_level or log_level]
        if dashboard_port is not None:
            self._coordinator_args += ["--dashboard-port", str(dashboard_port)]
        self.coordinator = self._start_coordinator(port)
        try:
            deadline = time.monotonic() + ready_timeout
            self.coordinator.url = _wait_ready(self.coordinator, deadline)
            self.url = self.coordinator.url
            self._start_servers(specs)
        except BaseException:
            self.close()
            raise

    def _start_coordinator(self, port: int) -> ClusterProcess:
        args = ["sperse._coordinator", "--host", "127.0.0.1", "--port", str(port)]
        return _spawn(
            "the coordinator", args + self._coordinator_args, self.token, stderr=self._stderr
        )

    @property
    def dashboard(self) -> str:
        """The dashboard's URL, token included ("" without one)."""
        return self.coordinator.dashboard

    @property
    def address(self) -> str:
        """The coordinator's HOST:PORT."""
        return self.url.removeprefix("sperse://")

    def _start_servers(self, specs: Sequence[ServerSpec]) -> list[ClusterProcess]:
        """Start the servers together, then wait for each one's ready line."""
        started = []
        for spec in specs:
            args = ["sperse.server", "--host", "127.0.0.1", "--port", "0", "--token-stdin"]
            args += ["--name", spec.name, "--workers", str(spec.workers)]
            args += ["--join", self.address, "--log-level", self._log_level]
            for tag in sorted(spec.tags):
                args += ["--tag", tag]
            for key, value in spec.resources.items():
                args += ["--resource", f"{key}={value:g}"]
            if spec.cwd is not None:
                Path(spec.cwd).mkdir(parents=True, exist_ok=True)
            child = _spawn(spec.name, args, self.token, cwd=spec.cwd, stderr=self._stderr)
            child.spec = spec
            self.servers.append(child)
            started.append(child)
        deadline = time.monotonic() + self._ready_timeout
        for child in started:
            child.url = _wait_ready(child, deadline)
        return started

    def server(self, name: str) -> ClusterProcess:
        for child in self.servers:
            if child.name == name:
                return child
        known = ", ".join(c.name for c in self.servers) or "none"
        raise KeyError(f"no server {name!r} in this cluster (servers: {known})")

    def add_server(
        self,
        name: str,
        *,
        tags: Iterable[str] = (),
        workers: int = 1,
        resources: Mapping[str, float] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> ClusterProcess:
        """Start one more server, which joins the running coordinator; returns once it has."""
        if self._closed:
            raise RuntimeError("this LocalCluster is closed")
        if any(child.name == name for child in self.servers):
            raise ValueError(f"there is a server {name!r} already: choose another name")
        spec = ServerSpec(
            name, frozenset(tags), resources or {}, workers, None if cwd is None else str(cwd)
        )
        try:
            (child,) = self._start_servers([spec])
        except BaseException:
            failed = [c for c in self.servers if c.name == name]
            _stop(failed)
            self.servers = [c for c in self.servers if c.name != name]
            raise
        return child

    def kill_server(self, name: str) -> ClusterProcess:
        """SIGKILL the server ``name`` (by its pid) and wait for it: a crash, for tests of
        failures. It leaves without saying Leave: the coordinator drops it after
        ``heartbeat_timeout``."""
        child = self.server(name)
        child.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.process.wait()
        self.servers.remove(child)
        _stop([child])  # closes its pipes, sweeps its shared memory files
        return child

    def stop_server(self, name: str) -> ClusterProcess:
        """Stop the server ``name`` gracefully (it leaves the coordinator)."""
        child = self.server(name)
        self.servers.remove(child)
        _stop([child])
        return child

    def restart_coordinator(self) -> ClusterProcess:
        """SIGKILL the coordinator (by its pid), then start a new one on the same port with
        the same token: a crash and a restart, for tests. The new one knows no server until
        each re-joins (within a heartbeat); returns once it listens."""
        if self._closed:
            raise RuntimeError("this LocalCluster is closed")
        old = self.coordinator
        old.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(old.pid, signal.SIGKILL)
        old.process.wait()
        _stop([old])  # closes its pipes
        port = int(self.address.rsplit(":", 1)[1])
        self.coordinator = self._start_coordinator(port)
        self.coordinator.url = _wait_ready(self.coordinator, time.monotonic() + self._ready_timeout)
        return self.coordinator

    def exited(self) -> list[ClusterProcess]:
        """The children that died since the last call without being stopped by this object."""
        dead = []
        for child in [self.coordinator, *self.servers]:
            if not child.expected_exit and not child.alive():
                child.expected_exit = True  # reported once
                dead.append(child)
        return dead

    def close(self) -> None:
        """Stop every server, then the coordinator (each by its pid). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            _stop(self.servers)
        finally:
            _stop([self.coordinator])

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.servers)} servers"
        return f"<LocalCluster {getattr(self, 'url', '?')}: {state}>"
