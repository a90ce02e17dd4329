"""``sperse up``: start a local cluster, record it, announce it, and stop it on Ctrl-C.

Invariants:

- ``sperse up`` exits 0 after Ctrl-C or SIGTERM; a child that dies meanwhile is reported on
  standard error and the rest go on. Exit 1 when the cluster cannot start, 2 for wrong
  options or configuration.
- The cluster is recorded (:mod:`sperse._up.record`) while it runs, and only once it is
  ready.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys

from sperse._up.cluster import ClusterProcess, LocalCluster
from sperse._up.options import ConfigError, build_parser, read_plan, read_token
from sperse._up.record import ClusterRecord, recorded
from sperse.errors import SperseError

__all__ = ["main"]


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
    if cluster.dashboard:
        secret_file = record.token_file if record is not None else token_file
        if secret_file is None:
            print(f"dashboard: {cluster.dashboard}")
        else:  # the token stays in its 0600 file: the page asks for it once (?token=)
            base = cluster.dashboard.split("?", 1)[0]
            print(f"dashboard: {base}  (open {base}?token=TOKEN once, TOKEN from {secret_file})")
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
        plan = read_plan(args)
        token, note = read_token(args.token_file)
    except ConfigError as exc:
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
                dashboard_port=plan.dashboard_port,
            )
        except (SperseError, OSError) as exc:
            print(f"sperse up: error: the cluster did not start: {exc}", file=sys.stderr)
            return 1
        with cluster:
            if not stop:
                with recorded(cluster, args.token_file) as record:
                    _announce(cluster, record, args.token_file)
                    _run_until_stopped(cluster, stop)
            print("sperse up: stopping the cluster", file=sys.stderr, flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
