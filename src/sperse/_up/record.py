"""The record of the running ``sperse up``: ``record_dir()/cluster.json``.

Invariants:

- Once its cluster is ready, ``sperse up`` records it in ``record_dir()/cluster.json``
  (directory 0700, file 0600, replaced atomically): the coordinator's URL, the path of a
  token file, and its own pid; never the token itself. Without ``--token-file`` the token
  goes to ``token-<pid>`` (0600) beside it.
- The record is removed when that ``sperse up`` stops, unless a later one has replaced it;
  a record whose pid is not running is stale and is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sperse._up.cluster import LocalCluster
from sperse.errors import ServerUnavailable

__all__ = [
    "RECORD_NAME",
    "START_HINT",
    "ClusterRecord",
    "forget_record",
    "record_dir",
    "recorded",
    "recorded_cluster",
    "write_private",
    "write_record",
]

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


def write_private(path: Path, text: str) -> None:
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


def write_record(url: str, token: str, token_file: str | None, directory: Path) -> ClusterRecord:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # mkdir leaves an existing directory's mode as it was
    _sweep_token_files(directory)
    pid = os.getpid()
    if token_file is None:
        generated = directory / f"token-{pid}"
        write_private(generated, token + "\n")
        token_file = str(generated)
    record = ClusterRecord(url, os.path.abspath(token_file), pid, directory / RECORD_NAME)
    fields = {"url": record.url, "token_file": record.token_file, "pid": record.pid}
    write_private(record.path, json.dumps(fields, indent=2) + "\n")
    return record


def forget_record(record: ClusterRecord, *, token_written: bool) -> None:
    """Remove ``record`` unless a later ``sperse up`` has replaced it, and the token file
    if ``write_record`` wrote it (one given with ``--token-file`` stays)."""
    with contextlib.suppress(OSError, ValueError):
        if _read_record(record.path).pid == record.pid:
            record.path.unlink()
    if token_written:
        with contextlib.suppress(OSError):
            os.unlink(record.token_file)


@contextlib.contextmanager
def recorded(cluster: LocalCluster, token_file: str | None) -> Iterator[ClusterRecord | None]:
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
        record = write_record(cluster.url, cluster.token, token_file, directory)
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
        forget_record(record, token_written=token_file is None)
