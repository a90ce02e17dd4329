"""``connect``: the one place that picks and builds concrete backends (the composition root),
and ``current``, the cluster in use here."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from sperse._backends.client_share import ClientShare
from sperse._backends.multi import ClusterBackend, is_coordinator
from sperse._backends.sperse import Compression, EmbeddedServer, NotAServer, SperseBackend
from sperse._cluster.cluster import Cluster, default, in_use, replace_default
from sperse._cluster.share import CoordinatorShare
from sperse._core import (
    Backend,
    pip_requirements,
)
from sperse._core.nested import WORKER_CA_ENV, WORKER_SERVER_ENV, nested_backend, worker_token
from sperse.errors import AuthenticationError, ServerLost

__all__ = ["connect", "current", "look", "worker_cluster"]


def connect(
    url: str | Sequence[str] | None = None,
    token: str | None = None,
    *,
    backend: Backend | Literal["ray", "local", "memory"] | None = None,
    workers: int | None = None,
    tags: Sequence[str] = (),
    token_file: str | os.PathLike[str] | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    env: Mapping[str, object] | None = None,
    dashboard: bool = False,
    dashboard_port: int = 0,
    share_workspace: bool | None = None,
    transport: Literal["auto", "grpc"] = "auto",
    compression: Literal["gzip", "deflate"] | None = None,
) -> Cluster:
    """Connect to a cluster and make it the default for ``@sperse.remote`` and workspaces.

    ``env={"pip": ["pkg==1.2", ...]}``: what remote work needs installed; each server
    installs it once, cached by content, and runs the work in workers that have it (a task's
    own ``env`` replaces it). A server that cannot install it fails the work with
    ``EnvUnavailable``, quoting pip. On sperse servers only.

    - ``connect()`` starts an embedded ``sperse server`` as a child process on
      a random loopback port, with ``workers`` worker processes (one per core
      by default) and ``tags``; it stops when this process exits.
    - ``connect("sperse://host:port", token=...)`` joins a running server, or the
      servers a coordinator lists there (``sperse coordinator``, ``sperse up``),
      following them as they join and leave. ``connect([url, url, ...])`` uses a
      fixed list of servers. The token may also come from ``token_file`` or the
      ``SPERSE_TOKEN`` or ``SPERSE_TOKEN_FILE`` environment variables; servers of
      one cluster share it. ``tls_ca`` (a PEM file) turns on TLS and names the
      certificate authority to trust.
    - ``connect(backend=...)`` uses a backend object (``sperse.LocalBackend``);
      ``connect(backend="local")`` the in-process pool of ``workers`` processes (no server:
      for unit tests and debugging); ``connect(backend="memory")`` runs everything in this
      process, in ``workers`` threads (default 1: the same order on every run), objects,
      callbacks and ``sperse.state()`` included (``MemoryBackend``).
    - ``connect(backend="ray")`` runs remote work as Ray tasks (docs/ray.md): on the Ray this
      machine runs, or on a local Ray started here (``workers`` CPUs, ``tags`` as custom
      resources). With ``url``, on the Ray at that address, as ``ray.init`` takes it:
      ``HOST:PORT`` of a head, ``"auto"``, ``ray://HOST:PORT`` (Ray Client). A ``ray://``
      url alone, ``connect("ray://HOST:PORT")``, means the same.

    ``dashboard=True`` serves this client's dashboard (docs/dashboard.md) on 127.0.0.1, port
    ``dashboard_port`` (0: a free one): its servers, tasks, remote objects and the graph of
    its workspaces, live; ``cluster.dashboard.url`` is the address to open (it carries the
    token: the cluster's, or a new one in-process). ``share_workspace`` (default: as
    ``dashboard``) publishes every workspace's graph to it; ``share_workspace=True`` without
    ``dashboard`` on a coordinator's cluster publishes them, and this process's flow runs,
    to the coordinator's dashboard (with the cluster's token: only that cluster's dashboard
    shows them).

    ``transport="grpc"`` sends every byte to sperse servers over gRPC, even to a server on
    this host, where the default (``"auto"``) uses shared memory files and a Unix socket:
    for hosts where those are unwelcome, and to measure the path between machines on one
    (``bench/remote.py --transport grpc``). ``compression="gzip"`` (or ``"deflate"``)
    compresses what this client sends to sperse servers over gRPC (off by default: on a
    fast network it costs more CPU than it saves; bench/README.md has the figures).

    A previous default cluster is closed.
    """
    if url is not None and not isinstance(url, str | list | tuple):
        hint = "; pass a backend as connect(backend=...)" if hasattr(url, "submit") else ""
        raise TypeError(
            "connect: url must be an address such as 'sperse://host:port' or a list of them, "
            f"not {type(url).__name__}{hint}"
        )
    if transport not in ("auto", "grpc"):
        raise ValueError(f"transport must be 'auto' or 'grpc', not {transport!r}")
    if compression not in (None, "gzip", "deflate"):
        raise ValueError(f"compression must be None, 'gzip' or 'deflate', not {compression!r}")
    pip_requirements(env)  # a wrong env is an error before anything starts
    token_used: list[str] = []
    title = _title(url, backend)
    ray_url = isinstance(url, str) and url.startswith("ray://")
    if backend == "ray" or (backend is None and ray_url):
        if url is not None and not isinstance(url, str):
            raise ValueError("the Ray backend takes one address, not a list")
        backend = _ray_backend(url, workers, tags)
    elif backend is None:
        backend = _backend_for(
            url,
            token,
            workers,
            tags,
            token_file,
            tls_ca,
            token_used,
            shm=_shm_of(transport),
            compression=compression,
        )
    elif backend in ("local", "memory"):
        backend = _in_process_backend(backend, workers)
    elif isinstance(backend, str):
        raise ValueError(
            f"unknown backend {backend!r}: pass a Backend object, 'ray', 'local' or 'memory'"
        )
    try:
        cluster = Cluster(backend, env=env)
    except (NotAServer, ServerLost):
        # A coordinator that came up since it was asked what was there refuses the session
        # (UNIMPLEMENTED; or, when its answer races the Hello being written, only INTERNAL).
        ca = Path(tls_ca).read_bytes() if tls_ca is not None else None
        if not isinstance(url, str) or not isinstance(backend, SperseBackend) or not token_used:
            raise
        if not is_coordinator(url, tls_ca=ca):
            raise
        coordinator = ClusterBackend(
            coordinator=url,
            token=token_used[0],
            tls_ca=ca,
            shm=_shm_of(transport),
            compression=compression,
        )
        cluster = Cluster(coordinator, env=env)
    if share_workspace and not dashboard:
        _share_with_coordinator(cluster, token_used)
    if dashboard:
        from sperse._cluster.dashboard import serve_dashboard  # starlette, uvicorn: when asked

        try:
            serve_dashboard(
                cluster,
                token=token_used[0] if token_used else None,
                port=dashboard_port,
                title=title,
                share_workspace=share_workspace is not False,
            )
        except BaseException:
            cluster.close()
            raise
    old = replace_default(cluster)
    if old is not None:
        old.close()
    return cluster


def _share_with_coordinator(cluster: Cluster, token_used: list[str]) -> None:
    """``share_workspace=True`` without a dashboard of its own: the workspaces' graphs and
    the flow runs go to the coordinator's dashboard (docs/dashboard.md)."""
    backend = cluster.backend
    coordinator = backend.coordinator if isinstance(backend, ClusterBackend) else None
    if not isinstance(backend, ClusterBackend) or coordinator is None or not token_used:
        cluster.close()
        raise ValueError(
            "share_workspace=True without dashboard=True shares workspaces with a "
            "coordinator's dashboard: connect to the coordinator (the address `sperse up` or "
            "`sperse coordinator` prints), or pass dashboard=True for this client's own"
        )
    share = CoordinatorShare(ClientShare(coordinator, token_used[0], tls_ca=backend.tls_ca))
    cluster.share_workspace = share.publish_workspace
    cluster.on_close(share.close)


def look(url: str, token: str, *, tls_ca: bytes | None = None, timeout: float = 10.0) -> Cluster:
    """A client of the one server at ``url``, not made the default: for a short look at its
    remote objects (``sperse status`` reads services' cards so). Use it in ``with``."""
    backend = SperseBackend(
        url, token=token, tls_ca=tls_ca, tls=tls_ca is not None, connect_timeout=timeout
    )
    return Cluster(backend)


def _backend_for(
    url: str | Sequence[str] | None,
    token: str | None,
    workers: int | None,
    tags: Sequence[str],
    token_file: str | os.PathLike[str] | None,
    tls_ca: str | os.PathLike[str] | None,
    token_used: list[str],
    *,
    shm: bool | None,
    compression: Compression,
) -> Backend:
    if url is None:
        server = EmbeddedServer(workers=workers, tags=tags)
        token_used.append(server.token)
        try:
            return SperseBackend(
                server.address,
                token=server.token,
                process=server,
                shm=shm,
                compression=compression,
            )
        except BaseException:
            server.stop()
            raise
    secret = token or _token_from(token_file)
    token_used.append(secret)
    ca = Path(tls_ca).read_bytes() if tls_ca is not None else None
    if not isinstance(url, str):
        urls = list(url)
        if not urls:
            raise ValueError("connect([]): give at least one server url")
        return ClusterBackend(urls, token=secret, tls_ca=ca, shm=shm, compression=compression)
    if is_coordinator(url, tls_ca=ca):
        return ClusterBackend(
            coordinator=url, token=secret, tls_ca=ca, shm=shm, compression=compression
        )
    return SperseBackend(
        url, token=secret, tls_ca=ca, tls=ca is not None, shm=shm, compression=compression
    )


def _shm_of(transport: str) -> bool | None:
    """``SperseBackend``'s ``shm`` for a ``transport``: None lets a server on this host use
    shared memory and its Unix socket; False never does."""
    return False if transport == "grpc" else None


def _title(url: str | Sequence[str] | None, backend: object) -> str:
    """What the dashboard's header says it is."""
    if url is None and backend is None:
        return "a client on its embedded server"
    if url is None:
        return f"a client on {backend if isinstance(backend, str) else type(backend).__name__}"
    return f"a client of {url if isinstance(url, str) else ', '.join(url)}"


def _in_process_backend(kind: str, workers: int | None) -> Backend:
    # Imported here, not above: what every connect() would load for backends it rarely
    # wants (the pool's and the server store's modules, about 65 ms).
    if kind == "local":
        from sperse._backends.local import LocalBackend

        return LocalBackend(workers)
    from sperse._backends.memory import MemoryBackend

    return MemoryBackend(workers or 1)


def _ray_backend(url: str | None, workers: int | None, tags: Sequence[str]) -> Backend:
    from sperse._backends.ray import RayBackend

    return RayBackend(url, num_cpus=workers, resources=dict.fromkeys(tags, 1.0))


def _token_from(token_file: str | os.PathLike[str] | None) -> str:
    path = token_file or os.environ.get("SPERSE_TOKEN_FILE")
    if path:
        return Path(path).read_text().strip()
    env = os.environ.get("SPERSE_TOKEN")
    if env:
        return env
    raise AuthenticationError(
        "no token to connect with: pass connect(url, token=...), token_file=..., or set "
        "SPERSE_TOKEN (the server printed its token when it started, or read it from its "
        "--token-file)"
    )


def current() -> Cluster:
    """The cluster in use here: the innermost ``with cluster:``, else the default one; in
    remote code (a worker of a server), the server it runs on (nested work)."""
    return in_use() or _nested_cluster() or default() or worker_cluster() or connect()


def _nested_cluster() -> Cluster | None:
    """While a task of an in-process backend (Ray) runs here: the cluster its nested work
    goes to (``sperse._core.nested``), made once per backend factory."""
    factory = nested_backend()
    if factory is None:
        return None
    with _worker_lock:
        cluster = _nested_clusters.get(factory)
        if cluster is None or cluster.closed:
            cluster = _nested_clusters[factory] = Cluster(factory())
    return cluster


_worker_clusters: dict[str, Cluster] = {}
_nested_clusters: dict[object, Cluster] = {}
_worker_lock = threading.Lock()


def worker_cluster(address: str = "") -> Cluster | None:
    """In a worker of a ``sperse server``: this process's connection to the server at
    ``address`` (default: its own), made once. None anywhere else."""
    own = os.environ.get(WORKER_SERVER_ENV)
    token = worker_token()
    if not own or not token:
        return None
    target = address or own
    with _worker_lock:
        cluster = _worker_clusters.get(target)
        if cluster is None or cluster.closed:
            name = f"worker {os.getpid()} of {own}"
            ca_file = os.environ.get(WORKER_CA_ENV)
            ca = Path(ca_file).read_bytes() if ca_file else None
            backend = SperseBackend(target, token=token, client_name=name, tls_ca=ca)
            cluster = Cluster(backend)
            _worker_clusters[target] = cluster
    return cluster


@atexit.register
def _close_default() -> None:
    cluster = default()
    if cluster is not None:
        cluster.drain()
        cluster.close()
