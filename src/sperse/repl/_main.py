"""What ``sperse``, ``sperse run`` and ``sperse submit`` do once their arguments are parsed.

The cluster is opened here and closed here: leaving the REPL or the end of a
script cancels the workspace's pending work and closes the cluster, which
stops an embedded server (and its workers) by its pid. A server joined with
``--connect`` keeps running; only this client leaves it.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import connect
from sperse._version import __version__
from sperse._workspace import Workspace
from sperse.errors import SperseError

if TYPE_CHECKING:
    from sperse.jobs._options import SubmitRequest

__all__ = ["ClusterOptions", "main_repl", "main_run", "main_submit"]


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Where remote work runs: a server at ``url``, in-process workers, a Ray cluster at
    ``ray`` (an address as ``ray.init`` takes it), or an embedded server."""

    url: str | None = None
    token: str | None = None
    workers: int | None = None
    local: bool = False
    ray: str | None = None
    token_file: str | None = None

    def open(self) -> Cluster:
        if self.ray is not None:
            return connect(self.ray, backend="ray", workers=self.workers)
        if self.local:
            return connect(backend="local", workers=self.workers)
        if self.url is not None:
            urls = [u for u in self.url.split(",") if u]
            target = urls if len(urls) > 1 else self.url
            return connect(target, token=self.token, token_file=self.token_file)
        return connect(workers=self.workers)


def _open(options: ClusterOptions) -> Cluster | None:
    try:
        return options.open()
    except (SperseError, ValueError, OSError) as exc:
        where = options.url or (f"Ray at {options.ray}" if options.ray else "an embedded server")
        print(f"sperse: cannot connect to {where}: {exc}", file=sys.stderr)
        return None


def _banner(cluster: Cluster) -> str:
    try:
        servers = cluster.servers()
    except SperseError:
        servers = []
    where = ", ".join(
        f"{s.name} ({s.workers} worker{'' if s.workers == 1 else 's'})" for s in servers
    )
    where = where or "no server yet"
    return (
        f"sperse {__version__} on Python {platform.python_version()}; servers: {where}\n"
        "`x = remote f(y)` runs remotely; %help lists the commands; Ctrl-D exits."
    )


def _close(ws: Workspace, cluster: Cluster) -> None:
    try:
        ws.close()
    finally:
        cluster.close()


def main_repl(options: ClusterOptions, history: Path | None = None) -> int:
    """``sperse``: the REPL until Ctrl-D."""
    from sperse.repl._app import Repl, history_path

    cluster = _open(options)
    if cluster is None:
        return 1
    ws = Workspace(cluster)
    try:
        repl = Repl(ws, history=history or history_path())
        return repl.run(_banner(cluster))
    finally:
        _close(ws, cluster)


def main_run(
    options: ClusterOptions,
    script: str,
    argv: list[str],
    *,
    interactive: bool = False,
    quiet: bool = False,
    history: Path | None = None,
) -> int:
    """``sperse run [-i] script.py args...``."""
    from sperse.repl._script import run_script
    from sperse.repl._session import Session

    cluster = _open(options)
    if cluster is None:
        return 1
    ws = Workspace(cluster)
    try:
        session = Session(ws, show_values=False, show_arrivals=not quiet)
        status = run_script(ws, script, argv, quiet=quiet, wait=not interactive, session=session)
        if not interactive or status == 2:
            return status
        session.close()  # the REPL's own session shows arrivals from now on
        from sperse.repl._app import Repl, history_path

        repl_session = Session(ws)
        return Repl(ws, history=history or history_path(), session=repl_session).run()
    finally:
        _close(ws, cluster)


def main_logs(options: ClusterOptions, log_id: str, stream: str | None = None) -> int:
    """``sperse logs LOG_ID``: what the task printed, from the server that kept it."""
    from sperse._core import SupportsLogs

    cluster = _open(options)
    if cluster is None:
        return 2
    with cluster:
        backend = cluster.backend
        if not isinstance(backend, SupportsLogs):
            print("sperse logs: this cluster's servers keep no logs", file=sys.stderr)
            return 2
        try:
            found = backend.logs(log_id)
        except SperseError as exc:
            print(f"sperse logs: {exc}", file=sys.stderr)
            return 2
    if found is None:
        print(
            f"sperse logs: no server of {options.url} has a log {log_id!r}: a log is kept "
            "10 minutes after its task ended (and only its last MiB); check the id "
            "(Pending.log_id) and the cluster",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(found.text(stream))
    if found.truncated:
        print("sperse logs: (only the last part of this log was kept)", file=sys.stderr)
    return 0


def main_submit(options: ClusterOptions, request: SubmitRequest) -> int:
    """``sperse submit ...``: the job runs on a cluster it opens with ``options`` (and opens
    again if every server is lost: a fresh embedded server, or the same URL), and closes."""
    from sperse.jobs._cli import run_submit

    return run_submit(options.open, request)
