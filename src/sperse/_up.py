"""``sperse up``: a coordinator and N servers on this machine, as child processes, in one
command; and ``LocalCluster``, the same thing as a context manager.

Invariants:

- Every child listens on 127.0.0.1, runs in a process group of its own (Ctrl-C in the
  terminal is ``sperse up``'s to handle: it stops the children in order) and gets the
  cluster token on its standard input, never on a command line. Each child keeps reading
  its stdin and stops by itself when it closes: if this process dies, so does the cluster.
- A ``LocalCluster`` is ready when the coordinator and every server have printed their
  ready line; a server prints it only after the coordinator has registered it.
- ``close()`` stops the servers, then the coordinator, each by its own pid: stdin closed,
  then SIGTERM after ``STOP_TIMEOUT``, then SIGKILL. It is idempotent.
- ``sperse up`` exits 0 after Ctrl-C or SIGTERM; a child that dies meanwhile is reported on
  standard error and the rest go on. Exit 1 when the cluster cannot start, 2 for wrong
  options or configuration.
- Once its cluster is ready, ``sperse up`` records it in ``record_dir()/cluster.json``
  (directory 0700, file 0600, replaced atomically): the coordinator's URL, the path of a
  token file, and its own pid; never the token itself. Without ``--token-file`` the token
  goes to ``token-<pid>`` (0600) beside it. The record is removed when that ``sperse up``
  stops, unless a later one has replaced it; a record whose pid is not running is stale and
  is never used. ``LocalCluster`` records nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from sperse._tokens import new_token
from sperse.errors import ServerUnavailable, SperseError

__all__ = [
    "ClusterProcess",
    "ClusterRecord",
    "LocalCluster",
    "ServerSpec",
    "build_parser",
    "main",
    "record_dir",
    "recorded_cluster",
]

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
    """The URL of ``child``'s ready line; ``ServerUnavailable`` if it exits or times out."""
    stdout = child.process.stdout
    assert stdout is not None
    line = b""
    while not line.endswith(b"\n"):
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
            line += chunk
    text = line.decode(errors="replace").strip()
    if " ready at " not in text:
        raise ServerUnavailable(f"{child.name} said {text!r} instead of its ready line")
    return text.rsplit(" ready at ", 1)[1]


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
    ) -> None:
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
        args = ["sperse._coordinator", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--token-stdin", "--heartbeat-timeout", str(heartbeat_timeout)]
        args += ["--log-level", coordinator_log_level or log_level]
        self.coordinator = _spawn("the coordinator", args, self.token, stderr=stderr)
        try:
            deadline = time.monotonic() + ready_timeout
            self.coordinator.url = _wait_ready(self.coordinator, deadline)
            self.url = self.coordinator.url
            self._start_servers(specs)
        except BaseException:
            self.close()
            raise

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


# ---- the record of the running `sperse up` ----------------------------------------------

RECORD_NAME = "cluster.json"
START_HINT = "start one with `sperse up --servers 2`"


def record_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``sperse up`` records its cluster: ``$XDG_RUNTIME_DIR/sperse``, a per-user
    directory that the system empties at logout (so no record outlives a reboot, after which
    its pid may be another process's), else ``$XDG_STATE_HOME/sperse``, else
    ``~/.local/state/sperse``. Relative values are ignored, as the XDG specification says."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return Path(runtime) / "sperse"
    state = env.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "sperse"


def _running(pid: int) -> bool:
    """Whether this user has a process ``pid``: one of another user is not a ``sperse up``
    of this user's record."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    """What a ``sperse up`` wrote in ``path``: its coordinator, its token file, its pid."""

    url: str
    token_file: str
    pid: int
    path: Path

    def alive(self) -> bool:
        """Whether the ``sperse up`` that wrote it still runs."""
        return _running(self.pid)

    def describe(self) -> str:
        return f"{self.url}, `sperse up` pid {self.pid}, recorded in {self.path}"


def _read_record(path: Path) -> ClusterRecord:
    """The record in ``path``; ``ValueError`` saying what is wrong with it, ``OSError``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError("it is not a JSON object")
    url, token_file, pid = data.get("url"), data.get("token_file"), data.get("pid")
    if not isinstance(url, str) or not url.startswith("sperse://"):
        raise ValueError(f"its url {url!r} is not sperse://HOST:PORT")
    if not isinstance(token_file, str) or not token_file:
        raise ValueError(f"its token_file {token_file!r} is not a path")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError(f"its pid {pid!r} is not a process id")
    return ClusterRecord(url, token_file, pid, path)


def recorded_cluster(
    directory: Path | None = None, *, or_else: str = "give the coordinator's URL"
) -> ClusterRecord:
    """The cluster of the running ``sperse up``, from its record. ``ServerUnavailable``
    when there is none, or only a stale one, saying so; ``or_else`` is the other way to
    name a cluster, for that message."""
    path = (record_dir() if directory is None else directory) / RECORD_NAME
    try:
        record = _read_record(path)
    except FileNotFoundError:
        raise ServerUnavailable(
            f"no cluster recorded by `sperse up` (in {path}): {START_HINT}, or {or_else}"
        ) from None
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ServerUnavailable(
            f"no cluster recorded by `sperse up`: {path} cannot be used: {why}; delete it "
            f"and {START_HINT}, or {or_else}"
        ) from None
    if not record.alive():
        raise ServerUnavailable(
            f"no cluster recorded by `sperse up`: the one in {path} is stale (its `sperse up`, "
            f"pid {record.pid}, is no longer running, and its cluster at {record.url} stopped "
            f"with it); {START_HINT}, or {or_else}"
        )
    return record


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically with mode 0600: a temporary file beside it (which mkstemp
    creates 0600), then ``os.replace``. A reader sees the old file or the new one."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _sweep_token_files(directory: Path) -> None:
    """Remove the ``token-<pid>`` files of ``sperse up`` processes that are gone (killed)."""
    for path in directory.glob("token-*"):
        pid = path.name.removeprefix("token-")
        if pid.isdigit() and int(pid) > 0 and not _running(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()


def _write_record(url: str, token: str, token_file: str | None, directory: Path) -> ClusterRecord:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # mkdir leaves an existing directory's mode as it was
    _sweep_token_files(directory)
    pid = os.getpid()
    if token_file is None:
        generated = directory / f"token-{pid}"
        _write_private(generated, token + "\n")
        token_file = str(generated)
    record = ClusterRecord(url, os.path.abspath(token_file), pid, directory / RECORD_NAME)
    fields = {"url": record.url, "token_file": record.token_file, "pid": record.pid}
    _write_private(record.path, json.dumps(fields, indent=2) + "\n")
    return record


def _forget_record(record: ClusterRecord, *, token_written: bool) -> None:
    """Remove ``record`` unless a later ``sperse up`` has replaced it, and the token file
    if ``_write_record`` wrote it (one given with ``--token-file`` stays)."""
    with contextlib.suppress(OSError, ValueError):
        if _read_record(record.path).pid == record.pid:
            record.path.unlink()
    if token_written:
        with contextlib.suppress(OSError):
            os.unlink(record.token_file)


@contextlib.contextmanager
def _recorded(cluster: LocalCluster, token_file: str | None) -> Iterator[ClusterRecord | None]:
    """The record of ``cluster`` while the block runs (None if it could not be written: the
    cluster runs anyway, and standard error says so)."""
    directory = record_dir()
    with contextlib.suppress(ServerUnavailable):
        previous = recorded_cluster(directory)
        print(
            f"sperse up: another `sperse up` is running ({previous.describe()}); `sperse "
            "status` and `--up` will mean this new cluster until it stops",
            file=sys.stderr,
        )
    try:
        record = _write_record(cluster.url, cluster.token, token_file, directory)
    except OSError as exc:
        print(
            f"sperse up: cannot record the cluster in {directory}: {exc.strerror}; "
            "`sperse status` and `--up` will not find it: give them its URL",
            file=sys.stderr,
        )
        yield None
        return
    try:
        yield record
    finally:
        _forget_record(record, token_written=token_file is None)


# ---- the command ------------------------------------------------------------------------


class _ConfigError(Exception):
    """Wrong options or configuration: exit 2 with this message."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sperse up",
        description="Start a local cluster: a coordinator and servers on 127.0.0.1, as child "
        "processes, until Ctrl-C. Prints the coordinator's URL and how to connect, and records "
        "both in $XDG_RUNTIME_DIR/sperse/cluster.json (else ~/.local/state/sperse/) for "
        "`sperse status` and `sperse run --up`.",
    )
    parser.add_argument(
        "--servers",
        type=int,
        default=None,
        metavar="N",
        help="how many servers (default 2, or one per --tags entry)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="W", help="worker processes per server (1)"
    )
    parser.add_argument(
        "--tags",
        default=None,
        metavar="LIST",
        help="the servers' tags, one comma-separated entry per server, '+' joining several: "
        "'gpu+fast,db,' = server 1 gpu and fast, server 2 db, server 3 none",
    )
    parser.add_argument(
        "--name-prefix", default=None, metavar="PREFIX", help="server names (default server-)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="the coordinator's port (default 0: any free one)"
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a server silent this long is dropped (default 5)",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="the cluster token: read from PATH, or a new one written there (mode 0600); "
        "default: a new one in a 0600 file beside the cluster's record",
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="[coordinator] port, heartbeat_timeout; [[server]] name, tags, resources, "
        "workers, cwd (relative to the file)",
    )
    return parser


def _token(path: str | None) -> tuple[str, str]:
    """The token, and a note on where it came from (for stderr; empty: none)."""
    if path is None:
        return new_token(), ""
    if os.path.exists(path):
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _ConfigError(f"cannot read the token file {path!r}: {exc.strerror}") from exc
        if not token:
            raise _ConfigError(f"the token file {path!r} is empty: delete it to get a new token")
        return token, ""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise _ConfigError(f"cannot create the token file {path!r}: {exc.strerror}") from exc
    token = new_token()
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)  # exactly 0600, whatever the umask
        file.write(token + "\n")
    return token, f"wrote a new cluster token to {path} (mode 0600)"


def _split_tags(text: str) -> list[frozenset[str]]:
    return [
        frozenset(t.strip() for t in entry.split("+") if t.strip()) for entry in text.split(",")
    ]


_SERVER_KEYS = {"name", "tags", "resources", "workers", "cwd"}
_COORDINATOR_KEYS = {"port", "heartbeat_timeout"}


def _load_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise _ConfigError(f"cannot read {path!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _server_spec(entry: object, index: int, base: Path, prefix: str, workers: int) -> ServerSpec:
    where = f"[[server]] number {index + 1}"
    if not isinstance(entry, dict):
        raise _ConfigError(f"{where} is not a table")
    unknown = set(entry) - _SERVER_KEYS
    if unknown:
        raise _ConfigError(
            f"{where}: unknown keys {sorted(unknown)}; a server has {sorted(_SERVER_KEYS)}"
        )
    name = entry.get("name", f"{prefix}{index + 1}")
    tags = entry.get("tags", [])
    resources = entry.get("resources", {})
    count = entry.get("workers", workers)
    cwd = entry.get("cwd")
    if not isinstance(name, str) or not name:
        raise _ConfigError(f"{where}: name must be a non-empty string")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _ConfigError(f"{where} ({name}): tags must be a list of strings")
    if not isinstance(resources, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in resources.values()
    ):
        raise _ConfigError(f"{where} ({name}): resources must be a table of numbers")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise _ConfigError(f"{where} ({name}): workers must be a whole number, at least 1")
    if cwd is not None and not isinstance(cwd, str):
        raise _ConfigError(f"{where} ({name}): cwd must be a string (a directory)")
    directory = None if cwd is None else str((base / cwd).resolve())
    return ServerSpec(name, frozenset(tags), resources, count, directory)


@dataclass(frozen=True, slots=True)
class _Plan:
    specs: list[ServerSpec]
    port: int
    heartbeat_timeout: float


def _plan(args: argparse.Namespace) -> _Plan:
    """What to start, from the options and the TOML file (options given win)."""
    config = _load_config(args.config) if args.config else {}
    unknown = set(config) - {"coordinator", "server"}
    if unknown:
        raise _ConfigError(f"{args.config}: unknown tables {sorted(unknown)}")
    coordinator = config.get("coordinator", {})
    if not isinstance(coordinator, dict) or set(coordinator) - _COORDINATOR_KEYS:
        raise _ConfigError(f"{args.config}: [coordinator] takes only {sorted(_COORDINATOR_KEYS)}")
    port = args.port if args.port is not None else coordinator.get("port", 0)
    timeout = args.heartbeat_timeout
    if timeout is None:
        timeout = coordinator.get("heartbeat_timeout", 5.0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise _ConfigError(f"the coordinator's port must be between 0 and 65535, not {port!r}")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise _ConfigError(f"heartbeat_timeout must be a positive number, not {timeout!r}")
    workers = args.workers if args.workers is not None else 1
    if workers < 1:
        raise _ConfigError(f"--workers must be at least 1, not {workers}")
    prefix = args.name_prefix if args.name_prefix is not None else "server-"
    entries = config.get("server", [])
    if entries:
        if args.servers is not None or args.tags is not None:
            raise _ConfigError(
                f"{args.config} lists its servers ([[server]]): --servers and --tags do not "
                "apply; change the file instead"
            )
        if not isinstance(entries, list):
            raise _ConfigError(f"{args.config}: server must be an array of tables: [[server]]")
        base = Path(args.config).resolve().parent
        specs = [_server_spec(e, i, base, prefix, workers) for i, e in enumerate(entries)]
    else:
        tags = _split_tags(args.tags) if args.tags is not None else []
        count = args.servers if args.servers is not None else max(2, len(tags))
        if count < 1:
            raise _ConfigError(f"--servers must be at least 1, not {count}")
        if len(tags) > count:
            raise _ConfigError(
                f"--tags has {len(tags)} entries for {count} servers: give one entry per "
                f"server (an empty one for no tags), or --servers {len(tags)}"
            )
        tags += [frozenset()] * (count - len(tags))
        specs = [ServerSpec(f"{prefix}{i + 1}", tags[i], workers=workers) for i in range(count)]
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _ConfigError(f"two servers are named {', '.join(duplicates)}: names must differ")
    return _Plan(specs, port, float(timeout))


def _describe(server: ClusterProcess) -> str:
    spec = server.spec
    assert spec is not None
    tags = ",".join(sorted(spec.tags)) or "-"
    parts = [f"  {server.name}  {server.url}  tags: {tags}  workers: {spec.workers}"]
    parts.append(f"pid: {server.pid}")
    if spec.resources:
        parts.append(
            "resources: " + ",".join(f"{k}={v:g}" for k, v in sorted(spec.resources.items()))
        )
    if spec.cwd:
        parts.append(f"cwd: {spec.cwd}")
    return "  ".join(parts)


def _announce(cluster: LocalCluster, record: ClusterRecord | None, token_file: str | None) -> None:
    print(f"sperse cluster ready at {cluster.url}")
    for server in cluster.servers:
        print(_describe(server))
    if record is not None:
        print(f'connect: sperse.connect("{cluster.url}", token_file="{record.token_file}")')
        print("status:  sperse status")
        print("run:     sperse run --up script.py   (the prompt: sperse --up)")
    elif token_file is not None:
        print(f'connect: sperse.connect("{cluster.url}", token_file="{token_file}")')
        print(f"status:  sperse status {cluster.url} --token-file {token_file}")
    else:
        print(f'connect: sperse.connect("{cluster.url}", token="{cluster.token}")')
        print(f"status:  SPERSE_TOKEN={cluster.token} sperse status {cluster.url}")
    print("Ctrl-C stops the cluster.", flush=True)


def _report(child: ClusterProcess) -> None:
    code = child.process.returncode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    if child.spec is None:
        rest = "the servers go on, but no client can find them through it"
    else:
        rest = "the rest of the cluster goes on"
    print(
        f"sperse up: {child.name} (pid {child.pid}) {how}; {rest} (Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )


def _run_until_stopped(cluster: LocalCluster, stop: list[int]) -> None:
    """Wait for a signal (``stop`` gets its number), reporting children that die."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write)
    try:
        while not stop:
            select.select([read], [], [], 0.5)  # a signal wakes it; else check the children
            with contextlib.suppress(BlockingIOError):
                os.read(read, 512)
            for child in cluster.exited():
                _report(child)
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = _plan(args)
        token, note = _token(args.token_file)
    except _ConfigError as exc:
        print(f"sperse up: error: {exc}", file=sys.stderr)
        return 2
    if note:
        print(f"sperse up: {note}", file=sys.stderr)
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cluster = LocalCluster(
                plan.specs,
                heartbeat_timeout=plan.heartbeat_timeout,
                port=plan.port,
                token=token,
                coordinator_log_level="info",
            )
        except (SperseError, OSError) as exc:
            print(f"sperse up: error: the cluster did not start: {exc}", file=sys.stderr)
            return 1
        with cluster:
            if not stop:
                with _recorded(cluster, args.token_file) as record:
                    _announce(cluster, record, args.token_file)
                    _run_until_stopped(cluster, stop)
            print("sperse up: stopping the cluster", file=sys.stderr, flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
