"""Throughput of ``sperse.state()``, the per-server store, side by side with other ways to
share a counter between worker processes on this machine.

Scenario: 2 tasks at once, on a server with 2 worker processes, each doing ``--ops``
(20,000) operations in a loop after a warm-up; ops/s = all operations of both tasks / the
time from the first task's start to the last one's end (clocks read inside the workers).
Operations: ``incr`` (the target: ≥ 20,000 ops/s from 2 workers together), ``get`` of a
number, ``set`` of a small tuple (pickled in the worker), ``update`` (a lock, a read, a
write: two round trips).

Side by side, with the same 2 processes and loop:

- a floor: the same round trip with no store behind it, a Unix-socket ping-pong against an
  epoll echo loop on a thread (the shape of the store, minus its work);
- ``multiprocessing.Manager().dict()`` with a manager lock around each ``+= 1`` (the
  standard library's shared dict);
- with ``--compare``, a Ray actor holding the counter (Ray's way to share state), each
  worker calling ``ray.get(counter.incr.remote())``, when Ray is installed.

Run: ``.venv/bin/python bench/state.py [--ops N] [--backend server|local|both] [--compare]
[--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import platform
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

TARGET = 20_000  # incr ops/s from 2 workers together
WORKERS = 2
OPS = ("incr", "get", "set", "update")

perf = time.perf_counter  # CLOCK_MONOTONIC on Linux: comparable across processes


# ---- the work, run in the workers (shipped by value from __main__) ----------------------


def state_loop(op: str, n: int, key: str) -> tuple[float, float]:
    import sperse

    s = sperse.state()
    s.set(key, 0)
    for _ in range(200):  # warm-up: connection made, code paths hot
        s.get(key)
    t0 = perf()
    if op == "incr":
        for _ in range(n):
            s.incr(key)
    elif op == "get":
        for _ in range(n):
            s.get(key)
    elif op == "set":
        value = ("a", 1, 2.5)
        for _ in range(n):
            s.set(key, value)
    elif op == "update":
        s.set(key, 0)
        for _ in range(n):
            s.update(key, lambda v: v + 1)
    return t0, perf()


def rate(spans: list[tuple[float, float]], ops: int) -> float:
    start = min(t0 for t0, _ in spans)
    end = max(t1 for _, t1 in spans)
    return ops * len(spans) / (end - start)


def run_sperse(backend: str, n: int) -> dict[str, float]:
    import sperse

    if backend == "local":
        cluster = sperse.Cluster(sperse.LocalBackend(WORKERS))
    else:
        cluster = sperse.connect(workers=WORKERS)
    loop = sperse.remote(state_loop)
    results: dict[str, float] = {}
    with cluster:
        # Both workers up and connected to the store before the clock starts.
        sperse.gather(*[loop("get", 10, f"warm-{i}") for i in range(2 * WORKERS)], timeout=60)
        for op in OPS:
            count = n if op != "update" else max(1, n // 2)
            # incr: one key for both, they contend as counters do; the others: a key each.
            keys = ["counter"] * 2 if op == "incr" else [f"{op}-{i}" for i in range(2)]
            spans = sperse.gather(*[loop(op, count, key) for key in keys], timeout=300)
            results[op] = rate(spans, count)
    return results


# ---- floor: a ping-pong against an epoll echo thread -------------------------------------


def _echo(listener: socket.socket, stop: threading.Event) -> None:
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    peers: dict[int, socket.socket] = {}
    while not stop.is_set():
        for fd, _ in epoll.poll(0.1):
            if fd == listener.fileno():
                peer, _ = listener.accept()
                peer.setblocking(False)
                peers[peer.fileno()] = peer
                epoll.register(peer.fileno(), select.EPOLLIN)
                continue
            peer = peers[fd]
            data = peer.recv(65536)
            if not data:
                epoll.unregister(fd)
                peers.pop(fd).close()
            else:
                peer.send(data)
    for peer in peers.values():
        peer.close()
    epoll.close()


def _ping(address: bytes, n: int, out: Any) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    message = b"\0" * 24  # an incr request is 24 bytes, its reply 12
    for _ in range(200):
        sock.sendall(message)
        sock.recv(65536)
    t0 = perf()
    for _ in range(n):
        sock.sendall(message)
        sock.recv(65536)
    out.put((t0, perf()))
    sock.close()


def run_floor(n: int) -> float:
    address = f"\0sperse-bench-echo-{os.getpid()}".encode()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(8)
    stop = threading.Event()
    thread = threading.Thread(target=_echo, args=(listener, stop), daemon=True)
    thread.start()
    try:
        return _two_processes(_ping, (address, n), n)
    finally:
        stop.set()
        thread.join()
        listener.close()


# ---- multiprocessing.Manager ------------------------------------------------------------


def _manager_incr(shared: Any, lock: Any, n: int, out: Any) -> None:
    t0 = perf()
    for _ in range(n):
        with lock:
            shared["count"] += 1
    out.put((t0, perf()))


def run_manager(n: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        shared = manager.dict(count=0)
        lock = manager.Lock()
        ops = _two_processes(_manager_incr, (shared, lock, n), n)
        assert shared["count"] == 2 * n
        return ops


def _two_processes(target: Callable[..., None], args: tuple[Any, ...], n: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    processes = [ctx.Process(target=target, args=(*args, out)) for _ in range(2)]
    for p in processes:
        p.start()
    spans = [out.get(timeout=300) for _ in processes]
    for p in processes:
        p.join()
    return rate(spans, n)


# ---- Ray ---------------------------------------------------------------------------------


def run_ray(n: int) -> float | None:
    if importlib.util.find_spec("ray") is None:
        return None
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import logging

    import ray

    ray.init(
        num_cpus=WORKERS,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:

        @ray.remote(num_cpus=0)
        class Counter:
            def __init__(self) -> None:
                self.count = 0

            def incr(self) -> int:
                self.count += 1
                return self.count

        @ray.remote
        def loop(counter: Any, count: int) -> tuple[float, float]:
            for _ in range(50):
                ray.get(counter.incr.remote())
            t0 = perf()
            for _ in range(count):
                ray.get(counter.incr.remote())
            return t0, perf()

        counter = Counter.remote()  # type: ignore[attr-defined]
        spans = ray.get([loop.remote(counter, n) for _ in range(2)])
        return rate(spans, n)
    finally:
        ray.shutdown()


# ---- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=20_000, help="operations per task")
    parser.add_argument("--backend", choices=("server", "local", "both"), default="both")
    parser.add_argument("--compare", action="store_true", help="also a Ray actor counter")
    parser.add_argument("--quick", action="store_true", help="small numbers, a smoke run")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.ops
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs; {n} ops per task, 2 tasks")

    columns: dict[str, dict[str, float]] = {}
    for backend in ("server", "local"):
        if args.backend in (backend, "both"):
            print(f"sperse ({backend})...", flush=True)
            columns[f"sperse {backend}"] = run_sperse(backend, n)
    print("floor and multiprocessing.Manager...", flush=True)
    floor = run_floor(n)
    manager = run_manager(max(1, n // 4))
    ray_rate = None
    if args.compare:
        print("Ray...", flush=True)
        ray_rate = run_ray(max(1, n // 10))

    names = list(columns)
    print(f"\n{'ops/s, 2 workers together':<28}" + "".join(f"{name:>16}" for name in names))
    for op in OPS:
        print(f"  {op:<26}" + "".join(f"{columns[name][op]:>16,.0f}" for name in names))
    print("\nSide by side (a shared counter, 2 processes):")
    print(f"  {'no store: Unix-socket ping-pong, epoll echo':<52}{floor:>12,.0f} round trips/s")
    for name in names:
        incr = columns[name]["incr"]
        print(f"  {name + ': state().incr':<52}{incr:>12,.0f} ops/s  ({incr / floor:.0%} of it)")
    print(f"  {'multiprocessing.Manager dict + lock, += 1':<52}{manager:>12,.0f} ops/s")
    if args.compare:
        shown = "  not installed" if ray_rate is None else f"{ray_rate:>12,.0f} ops/s"
        print(f"  {'Ray actor counter, ray.get(c.incr.remote())':<52}{shown}")

    print(f"\nTarget: state().incr from 2 workers >= {TARGET:,} ops/s")
    for name in names:
        incr = columns[name]["incr"]
        verdict = "meets" if incr >= TARGET else "misses"
        print(f"  {name:<20}{incr:>12,.0f} ops/s  {verdict} the target")


if __name__ == "__main__":
    main()
