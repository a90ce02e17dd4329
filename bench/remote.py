"""Remote-call overhead of Sperse, side by side with Ray and Dask, on this machine.

Scenarios, each with 2 worker processes for every system:

- (a) round trip: N sequential calls of a function returning its argument, after a
  warm-up: p50 and p99 in ms;
- (b) throughput: N trivial calls submitted at once, then all results gathered: tasks/s;
- (c) a float64 array of ``--mb`` MB (10^6 bytes) sent up as the argument of a function
  returning its sum: MB/s up; a function creating such an array remotely, its result
  brought down to the client: MB/s down (the remote ``np.ones`` is inside the timing,
  for every system alike; Sperse's fetch of the held result alone is timed too, and
  compared with the gRPC floor under ``--transport grpc``);
- (e) reuse: the array of (c) used by 10 calls of a function that reads one item of it,
  sent once (``sperse.put``, ``ray.put``, Dask's ``scatter``) then passed by reference:
  the time of the put and the 10 calls, against one call that sends the array by value
  (about 1x: the 10 calls cost one transfer); and the same 10 calls sending it by value;
- (f) server to server (``--transport grpc`` only): the array of (c) kept on one server of a
  cluster of two (``sperse.put(..., on="@a")``) and read by a call on the other, which
  pulls it over gRPC first: MB/s of that call, a pull each time;
- (d) start: from ``sperse.connect(workers=2)`` (an embedded server process) to the first
  result of a trivial call; from ``ray.init(...)``, and from ``LocalCluster`` + ``Client``,
  to theirs. Client-side imports are done before the clock starts, for all three.

Floors for context: a raw ``grpc.aio`` bidirectional-stream ping-pong on loopback (an echo
service defined inline, in another process), the same stream's bandwidth for ``--mb`` MB in
1 MiB messages, a Unix-socket ping-pong shaped like Sperse's same-host client (Linux), and a
``multiprocessing.Pipe`` round trip.

Run: ``.venv/bin/python bench/remote.py [--compare] [--quick] [--backend server|local|ray]
[--transport auto|grpc]`` (``ray``: Sperse on a local Ray it starts, whose ratios to raw Ray
are Sperse's overhead; ``grpc``: the client reaches its server over gRPC only, no shared
memory and no Unix socket, as a client on another host does: compare it with the gRPC
floors; ``--compression gzip|deflate`` compresses what the client sends, off by default:
scenario (c)'s arrays are ``np.ones``, so they compress far better than real data);
``--profile`` runs only Sperse's scenario (b) under cProfile (user thread and I/O thread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib.util
import io
import logging
import multiprocessing
import os
import platform
import pstats
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

perf = time.perf_counter

# ---- the remote functions (shipped by value from __main__ by every system) -------------


def echo(x: Any) -> Any:
    return x


def total(a: Any) -> float:
    return float(a.sum())


def first(a: Any) -> float:
    return float(a[0])


def make(n: int) -> Any:
    import numpy

    return numpy.ones(n)


# ---- the systems under test ------------------------------------------------------------


class System:
    """One system: started (timed by the caller), then the scenarios, then stopped."""

    name = "?"

    def start(self) -> None:
        raise NotImplementedError

    def echo_one(self, x: Any) -> Any:
        raise NotImplementedError

    def echo_many(self, xs: Sequence[Any]) -> list[Any]:
        """Submit every call before waiting for any result."""
        raise NotImplementedError

    def send_up(self, array: Any) -> float:
        raise NotImplementedError

    def bring_down(self, n: int) -> Any:
        raise NotImplementedError

    def put(self, array: Any) -> Any:
        """Send ``array`` once; what later calls pass instead of it."""
        raise NotImplementedError

    def first_of(self, array: Any) -> float:
        """``first`` of ``array`` (a value, or what ``put`` returned), run remotely."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class SperseSystem(System):
    name = "Sperse"

    def __init__(
        self, backend: str, transport: str = "auto", compression: str | None = None
    ) -> None:
        import sperse
        import sperse._backends.local
        import sperse._backends.sperse
        import sperse._cluster.remote  # imported before the timed start, like ray and dask

        self.sperse = sperse
        self.backend = backend
        self.transport = transport
        self.compression = compression
        self.cluster: Any = None
        self._echo = sperse.remote(echo)
        self._total = sperse.remote(total)
        self._make = sperse.remote(make)
        self._first = sperse.remote(first)
        self.fetches: list[float] = []  # (c) down: the fetch of the held result alone

    def start(self) -> None:
        if self.backend == "server":
            self.cluster = self.sperse.connect(
                workers=2, transport=self.transport, compression=self.compression
            )
        elif self.backend == "ray":  # a local Ray of 2 CPUs on 127.0.0.1, started here
            self.cluster = self.sperse.connect(backend="ray", workers=2)
        else:
            self.cluster = self.sperse.connect(backend=self.sperse.LocalBackend(2))

    def echo_one(self, x: Any) -> Any:
        return self._echo(x).result()

    def echo_many(self, xs: Sequence[Any]) -> list[Any]:
        pendings = [self._echo(x) for x in xs]
        return self.sperse.gather(*pendings)

    def send_up(self, array: Any) -> float:
        return self._total(array).result()  # type: ignore[no-any-return]

    def bring_down(self, n: int) -> Any:
        made = self._make(n)
        self.sperse.wait([made])  # held on the server: what follows is the transfer alone
        t0 = perf()
        value = made.result()
        self.fetches.append(perf() - t0)
        return value

    def put(self, array: Any) -> Any:
        return self.sperse.put(array)

    def first_of(self, array: Any) -> float:
        return self._first(array).result()  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


class RaySystem(System):
    name = "Ray"

    def __init__(self) -> None:
        import ray

        self.ray = ray
        self._echo = ray.remote(echo)
        self._total = ray.remote(total)
        self._make = ray.remote(make)
        self._first = ray.remote(first)

    def start(self) -> None:
        self.ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        addresses = {node["NodeManagerAddress"] for node in self.ray.nodes()}
        if addresses != {"127.0.0.1"}:
            raise RuntimeError(f"Ray's node is at {addresses}, not 127.0.0.1 only")

    def echo_one(self, x: Any) -> Any:
        return self.ray.get(self._echo.remote(x))

    def echo_many(self, xs: Sequence[Any]) -> list[Any]:
        return self.ray.get([self._echo.remote(x) for x in xs])  # type: ignore[no-any-return]

    def send_up(self, array: Any) -> float:
        return self.ray.get(self._total.remote(array))  # type: ignore[no-any-return]

    def bring_down(self, n: int) -> Any:
        return self.ray.get(self._make.remote(n))  # zero-copy: a read-only view of the store

    def put(self, array: Any) -> Any:
        return self.ray.put(array)

    def first_of(self, array: Any) -> float:
        return self.ray.get(self._first.remote(array))  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()


class DaskSystem(System):
    name = "Dask"

    def __init__(self) -> None:
        from dask.distributed import Client, LocalCluster

        self._client_cls = Client
        self._cluster_cls = LocalCluster
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> None:
        self.cluster = self._cluster_cls(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        address = self.cluster.scheduler_address
        if not address.startswith("tcp://127.0.0.1:"):
            raise RuntimeError(f"Dask's scheduler is at {address}, not 127.0.0.1")
        self.client = self._client_cls(self.cluster)

    # pure=False everywhere: Dask would otherwise answer repeated calls from its cache.
    def echo_one(self, x: Any) -> Any:
        return self.client.submit(echo, x, pure=False).result()

    def echo_many(self, xs: Sequence[Any]) -> list[Any]:
        return self.client.gather(self.client.map(echo, xs, pure=False))  # type: ignore[no-any-return]

    def send_up(self, array: Any) -> float:
        with warnings.catch_warnings():  # "large object in task graph": that is the test
            warnings.simplefilter("ignore")
            return self.client.submit(total, array, pure=False).result()  # type: ignore[no-any-return]

    def bring_down(self, n: int) -> Any:
        return self.client.submit(make, n, pure=False).result()

    def put(self, array: Any) -> Any:
        return self.client.scatter(array)

    def first_of(self, array: Any) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.client.submit(first, array, pure=False).result()  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


# ---- measuring -------------------------------------------------------------------------


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.calls: int = args.calls or (200 if quick else 2000)
        self.tasks: int = args.tasks or (1000 if quick else 10_000)
        self.mb: int = args.mb or (10 if quick else 100)
        self.repeat: int = 2 if quick else 3
        self.warmup_calls = max(20, self.calls // 10)
        self.warmup_tasks = max(100, self.tasks // 20)


def percentiles(times: Sequence[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(times) * 1e3, [50, 99])
    return float(p50), float(p99)


def measure(system: System, s: Settings, notes: list[str]) -> dict[str, float]:
    """Run every scenario on ``system``; always stops it."""
    out: dict[str, float] = {}
    gc.collect()
    try:
        t0 = perf()
        system.start()
        first = system.echo_one(1)
        out["start"] = perf() - t0
        assert first == 1, first
        print(f"  {system.name}: started, first result in {out['start']:.2f} s", flush=True)

        # (a) round trip
        gc.collect()
        for i in range(s.warmup_calls):
            system.echo_one(i)
        times = []
        for i in range(s.calls):
            t0 = perf()
            system.echo_one(i)
            times.append(perf() - t0)
        out["rt_p50"], out["rt_p99"] = percentiles(times)
        print(f"  {system.name}: (a) p50 {out['rt_p50']:.3f} ms", flush=True)

        # (b) throughput
        gc.collect()
        system.echo_many(range(s.warmup_tasks))
        gc.collect()
        xs = list(range(s.tasks))
        t0 = perf()
        results = system.echo_many(xs)
        elapsed = perf() - t0
        assert results == xs, "wrong results"
        out["tput"] = s.tasks / elapsed
        print(f"  {system.name}: (b) {out['tput']:,.0f} tasks/s", flush=True)

        # (c) up and down
        n = s.mb * 1_000_000 // 8
        array = np.ones(n)
        ups, downs = [], []
        for rep in range(s.repeat + 1):  # the first of each is a warm-up
            gc.collect()
            t0 = perf()
            got = system.send_up(array)
            ups.append(perf() - t0)
            assert got == float(n), got
            gc.collect()
            t0 = perf()
            back = system.bring_down(n)
            downs.append(perf() - t0)
            assert back.shape == (n,) and back[-1] == 1.0
            del back
            if rep == 0:
                ups.clear()
                downs.clear()
        out["up"] = s.mb / float(np.median(ups))
        out["down"] = s.mb / float(np.median(downs))
        fetches = getattr(system, "fetches", [])[1:]  # (after the warm-up's)
        if fetches:
            out["fetch"] = s.mb / float(np.median(fetches))
        print(f"  {system.name}: (c) up {out['up']:,.0f} MB/s, down {out['down']:,.0f} MB/s")

        # (e) one array, ten calls: sent once, then by reference; and ten times by value
        once, each, single, refs = [], [], [], []
        for rep in range(s.repeat + 1):  # the first is a warm-up
            gc.collect()
            t0 = perf()
            kept = system.put(array)
            assert system.first_of(kept) == 1.0  # the put has arrived once this is back
            t1 = perf()
            assert [system.first_of(kept) for _ in range(9)] == [1.0] * 9
            once.append(perf() - t0)
            refs.append((perf() - t1) / 9)
            del kept
            gc.collect()
            t0 = perf()
            assert system.first_of(array) == 1.0
            single.append(perf() - t0)
            t0 = perf()
            assert [system.first_of(array) for _ in range(10)] == [1.0] * 10
            each.append(perf() - t0)
            if rep == 0:
                once.clear()
                each.clear()
                single.clear()
                refs.clear()
        out["reuse"] = float(np.median(once)) / float(np.median(single))
        out["reuse_each"] = float(np.median(each)) / float(np.median(single))
        out["reuse_ref"] = float(np.median(refs)) / float(np.median(single))
        print(
            f"  {system.name}: (e) put + 10 calls {np.median(once) * 1e3:.0f} ms "
            f"(calls 2-10 {np.median(refs) * 1e3:.2f} ms each), "
            f"10 calls by value {np.median(each) * 1e3:.0f} ms, "
            f"one by value {np.median(single) * 1e3:.0f} ms",
            flush=True,
        )
        del array
    except Exception as exc:
        notes.append(f"{system.name} failed: {type(exc).__name__}: {exc}")
        print(f"  {system.name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
    finally:
        t0 = perf()
        try:
            system.stop()
        except Exception as exc:
            notes.append(f"{system.name} did not stop cleanly: {type(exc).__name__}: {exc}")
        print(f"  {system.name}: stopped in {perf() - t0:.1f} s", flush=True)
    return out


# ---- floors: raw grpc.aio ping-pong, multiprocessing.Pipe ------------------------------

ECHO_METHOD = "/bench.Echo/Ping"


def _grpc_echo_server(conn: Connection) -> None:
    """A bidi-stream echo service (bytes in, the same bytes out), until ``conn`` speaks."""
    import grpc
    import grpc.aio

    async def ping(requests: Any, context: Any) -> None:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            await context.write(message)

    async def serve() -> None:
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Ping": grpc.stream_stream_rpc_method_handler(ping)}
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 8 << 20),
                ("grpc.max_send_message_length", 8 << 20),
            ]
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await server.stop(0)

    asyncio.run(serve())


def _grpc_echo_client(port: int, s: Settings, conn: Connection) -> None:
    """Ping-pong round trips, then ``s.mb`` MB in 1 MiB messages echoed back, pipelined."""
    import grpc.aio

    async def bulk(call: Any, pieces: int, piece: bytes) -> float:
        async def write_all() -> None:
            for _ in range(pieces):
                await call.write(piece)

        t0 = perf()
        writer = asyncio.create_task(write_all())
        for _ in range(pieces):
            await call.read()
        await writer
        return perf() - t0

    async def run() -> tuple[list[float], float]:
        options = [("grpc.max_receive_message_length", 8 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = channel.stream_stream(ECHO_METHOD)()
            payload = b"x" * 64
            times = []
            for i in range(s.warmup_calls + s.calls):
                t0 = perf()
                await call.write(payload)
                await call.read()
                if i >= s.warmup_calls:
                    times.append(perf() - t0)
            piece = bytes(1 << 20)
            pieces = -(-s.mb * 1_000_000 // len(piece))
            await bulk(call, min(pieces, 10), piece)  # warm-up: flow-control windows grow
            elapsed = min([await bulk(call, pieces, piece) for _ in range(s.repeat)])
            await call.done_writing()
            await call.code()
            return times, elapsed

    times, elapsed = asyncio.run(run())
    conn.send((times, s.mb / elapsed))


def _unix_echo_server(conn: Connection) -> None:
    """An asyncio echo of length-framed messages on an abstract Unix socket (the transport
    Sperse's same-host clients use), until ``conn`` speaks."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = bytearray()

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while len(self.buffer) >= 4:
                size = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) < 4 + size:
                    return
                frame = bytes(self.buffer[: 4 + size])
                del self.buffer[: 4 + size]
                self.transport.write(frame)

    async def serve() -> None:
        name = f"\0sperse-bench-{os.getpid()}"
        server = await asyncio.get_running_loop().create_unix_server(Echo, name)
        conn.send(name)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        server.close()

    asyncio.run(serve())


def _unix_round_trips(name: str, s: Settings) -> list[float]:
    """Sperse's same-host shape: this thread writes to the socket, an event loop on another
    thread reads the echo and hands it back through a condition variable."""
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    arrived = threading.Condition()
    replies: list[bytes] = []

    class Client(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            with arrived:
                replies.append(data)
                arrived.notify()

    async def connect() -> Any:
        transport, _ = await loop.create_unix_connection(Client, name)
        return transport

    transport = asyncio.run_coroutine_threadsafe(connect(), loop).result(10)
    fd = os.dup(transport.get_extra_info("socket").fileno())
    frame = (64).to_bytes(4, "big") + b"x" * 64
    times = []
    try:
        for i in range(s.warmup_calls + s.calls):
            t0 = perf()
            os.write(fd, frame)
            with arrived:
                while not replies:
                    arrived.wait()
                replies.clear()
            if i >= s.warmup_calls:
                times.append(perf() - t0)
    finally:
        os.close(fd)
        loop.call_soon_threadsafe(transport.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    return times


def _pipe_echo(conn: Connection) -> None:
    while True:
        x = conn.recv()
        if x is None:
            return
        conn.send(x)


def floors(s: Settings) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding grpc's threads
    out: dict[str, float] = {}

    here, there = ctx.Pipe()
    server = ctx.Process(target=_grpc_echo_server, args=(there,), daemon=True)
    server.start()
    try:
        if not here.poll(30):
            raise RuntimeError("the grpc echo server did not start")
        port = here.recv()
        mine, theirs = ctx.Pipe()
        client = ctx.Process(target=_grpc_echo_client, args=(port, s, theirs), daemon=True)
        client.start()
        while not mine.poll(0.2):
            if not client.is_alive():
                raise RuntimeError(f"the grpc echo client failed (exit {client.exitcode})")
        times, out["grpc_bulk"] = mine.recv()
        out["grpc_p50"], out["grpc_p99"] = percentiles(times)
        client.join(10)
    finally:
        here.send("stop")
        server.join(10)
        if server.is_alive():
            server.terminate()
            server.join()

    if sys.platform.startswith("linux"):
        here, there = ctx.Pipe()
        server = ctx.Process(target=_unix_echo_server, args=(there,), daemon=True)
        server.start()
        try:
            if not here.poll(30):
                raise RuntimeError("the Unix socket echo server did not start")
            times = _unix_round_trips(here.recv(), s)
            out["unix_p50"], out["unix_p99"] = percentiles(times)
        finally:
            here.send("stop")
            server.join(10)
            if server.is_alive():
                server.terminate()
                server.join()

    here, there = ctx.Pipe()
    child = ctx.Process(target=_pipe_echo, args=(there,), daemon=True)
    child.start()
    try:
        times = []
        for i in range(s.warmup_calls + s.calls):
            t0 = perf()
            here.send(i)
            here.recv()
            if i >= s.warmup_calls:
                times.append(perf() - t0)
        out["pipe_p50"], out["pipe_p99"] = percentiles(times)
    finally:
        here.send(None)
        child.join(10)
        if child.is_alive():
            child.terminate()
            child.join()
    return out


# ---- the report --------------------------------------------------------------------------

ROWS = [
    # key, label, which way is better
    ("rt_p50", "(a) round trip p50, ms", "lower"),
    ("rt_p99", "(a) round trip p99, ms", "lower"),
    ("tput", "(b) throughput, tasks/s", "higher"),
    ("up", "(c) {mb} MB up, MB/s", "higher"),
    ("down", "(c) {mb} MB down, MB/s", "higher"),
    ("reuse", "(e) put+10 calls / 1 by value", "lower"),
    ("reuse_each", "(e) 10 by value / 1 by value", "lower"),
    ("start", "(d) start to 1st result, s", "lower"),
]


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ratio(a: float | None, b: float | None, better: str) -> str:
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    good = r < 1 if better == "lower" else r > 1
    return f"{r:.2f}x {'better' if good else 'worse'}"


def report(
    s: Settings,
    results: dict[str, dict[str, float]],
    absent: dict[str, str],
    floor: dict[str, float],
    backend: str,
    transport: str = "auto",
) -> None:
    sp, ray, dask = (results.get(k, {}) for k in ("Sperse", "Ray", "Dask"))

    def col(name: str, data: dict[str, float], key: str) -> str:
        if name in absent:
            return absent[name]
        return fmt(data.get(key))

    head = f"{'scenario':<30}{'Sperse':>10}{'Ray':>10}{'Dask':>10}"
    head += f"{'Sperse/Ray':>16}{'Sperse/Dask':>16}  better"
    print()
    print(head)
    print("-" * len(head))
    for key, label, better in ROWS:
        line = f"{label.format(mb=s.mb):<30}"
        line += (
            f"{col('Sperse', sp, key):>10}{col('Ray', ray, key):>10}{col('Dask', dask, key):>10}"
        )
        line += f"{ratio(sp.get(key), ray.get(key), better):>16}"
        line += f"{ratio(sp.get(key), dask.get(key), better):>16}  {better}"
        print(line)
    print("Sperse/X is Sperse's number divided by X's; 'better'/'worse' reads that ratio with the")
    print("direction of the last column.")

    print("\nTargets (from the issue):")

    def target(label: str, value: float | None, shown: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("meets" if ok else "misses")
        print(f"  {label:<34}{shown:>22}  {verdict}")

    def vs_ray(key: str) -> float | None:
        if key in sp and key in ray and ray[key]:
            return sp[key] / ray[key]
        return None

    def check(label: str, key: str, limit: float, at_most: bool) -> None:
        r = vs_ray(key)
        if r is None:
            why = "no Ray number" if "Ray" in results else "needs --compare"
            target(label, None, why, None)
        else:
            target(label, r, f"{r:.2f}x Ray", r <= limit if at_most else r >= limit)

    if backend == "ray":  # Sperse on Ray against raw Ray: the overhead of Sperse's layers
        check("round-trip p50 <= 1.2x Ray's", "rt_p50", 1.2, True)
        check("throughput >= 0.8x Ray's", "tput", 0.8, False)
    else:
        check("round-trip p50 <= 0.2x Ray's", "rt_p50", 0.2, True)
        check("throughput >= 5x Ray's", "tput", 5.0, False)
        check(f"{s.mb} MB up >= 1.5x Ray's", "up", 1.5, False)
        check(f"{s.mb} MB down >= 1.5x Ray's", "down", 1.5, False)
    start = sp.get("start")
    if backend != "server":
        target("embedded server ready <= 1 s", None, f"--backend {backend}", None)
    elif start is None:
        target("embedded server ready <= 1 s", None, "no number", None)
    else:
        target("embedded server ready <= 1 s", start, f"{start:.2f} s", start <= 1.0)
    if backend == "server" and transport != "grpc":  # the same-host path's, tightened
        print("\nIssue 18's targets (the same-host path; Ray's figures are its medians):")
        check("round-trip p50 <= 0.15x Ray's", "rt_p50", 0.15, True)
        check("round-trip p99 <= 0.15x Ray's", "rt_p99", 0.15, True)
        check(f"{s.mb} MB up >= 2x Ray's", "up", 2.0, False)
        check(f"{s.mb} MB down >= 2x Ray's", "down", 2.0, False)
        if start is not None:
            target("start to 1st result <= 0.25 s", start, f"{start:.2f} s", start <= 0.25)
        reuse, ref = sp.get("reuse"), sp.get("reuse_ref")
        if reuse is not None and ref is not None:
            # One transfer: the put and the first call cost about one call sending the array,
            # and each later call far less than a transfer (a round trip: under 5 % of one).
            shown = f"{reuse:.2f}x one, later {ref:.3f}x"
            ok = reuse <= 1.5 and ref <= 0.05
            target(f"{s.mb} MB in 10 calls: 1 transfer", reuse, shown, ok)

    print("\nFloors (loopback, this machine; the round trips carry 64 bytes):")
    if "grpc_p50" in floor:
        print(
            f"  grpc.aio bidi-stream ping-pong       p50 {floor['grpc_p50']:.3f} ms"
            f"   p99 {floor['grpc_p99']:.3f} ms"
        )
    if "grpc_bulk" in floor:
        print(
            f"  grpc.aio {s.mb} MB in 1 MiB messages, echoed back, pipelined: "
            f"{floor['grpc_bulk']:,.0f} MB/s each way"
        )
    if "unix_p50" in floor:
        print(
            f"  Unix socket ping-pong, asyncio echo, the reply handed to another thread:"
            f"  p50 {floor['unix_p50']:.3f} ms   p99 {floor['unix_p99']:.3f} ms"
        )
    if "pipe_p50" in floor:
        print(
            f"  multiprocessing.Pipe round trip      p50 {floor['pipe_p50']:.3f} ms"
            f"   p99 {floor['pipe_p99']:.3f} ms"
        )
    if "pipe_p50" in floor and "rt_p50" in sp and backend == "server":
        # A same-host client (the embedded server) talks over the Unix socket; others gRPC.
        link = "unix" if "unix_p50" in floor and transport == "auto" else "grpc"
        if f"{link}_p50" in floor:
            both = floor[f"{link}_p50"] + floor["pipe_p50"]
            print(
                f"  a server call crosses the {'Unix socket' if link == 'unix' else 'gRPC'} "
                f"ping-pong and a pipe round trip: {both:.3f} ms together; Sperse's p50 is "
                f"{sp['rt_p50'] / both:.1f}x that"
            )
    if transport == "grpc" and backend == "server":
        grpc_targets(s, sp, floor)


def pull_rate(s: Settings) -> float:
    """(f): MB/s of a call on server ``b`` of the array of (c) that server ``a`` holds (a
    pull over gRPC each time: the replica goes when the call ends); median after a warm-up."""
    import secrets

    import sperse
    from sperse._backends.multi import ClusterBackend
    from sperse._backends.sperse import EmbeddedServer

    token = secrets.token_urlsafe(16)
    servers: list[Any] = []
    try:
        for name in ("a", "b"):
            servers.append(EmbeddedServer(workers=1, name=name, token=token))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    backend = ClusterBackend([x.address for x in servers], token=token, processes=servers)
    with sperse.Cluster(backend):
        kept = sperse.put(np.ones(s.mb * 1_000_000 // 8), on="@a")
        on_b = sperse.remote(on="@b")(first)
        times = []
        for _ in range(s.repeat + 1):  # the first is a warm-up
            gc.collect()
            t0 = perf()
            assert on_b(kept).result() == 1.0
            times.append(perf() - t0)
        pulled = backend.backend_of("b").stats()["objects_pulled"]
        assert pulled == s.repeat + 1, f"{pulled} pulls, not one a call"
    return s.mb / float(np.median(times[1:]))


def grpc_targets(s: Settings, sp: dict[str, float], floor: dict[str, float]) -> None:
    """Issue 18's targets for the path between machines (``--transport grpc``), against the
    raw gRPC floors of this run."""
    print("\nThe path between machines (--transport grpc), against the raw gRPC floors:")
    rows: list[tuple[str, float | None, float, str]] = []
    if "rt_p50" in sp and "grpc_p50" in floor:
        rows.append(
            (
                "round trip p50 <= 1.5x the bidi ping-pong",
                sp["rt_p50"] / floor["grpc_p50"],
                1.5,
                "<=",
            )
        )
    if "tput" in sp:
        rows.append(("throughput >= 15,000 tasks/s", sp["tput"], 15_000, ">="))
    for key, what in (
        ("up", "up"),
        ("down", "down"),
        ("fetch", "down, the fetch alone"),
        ("pull", "pulled server to server"),
    ):
        if key in sp and "grpc_bulk" in floor:
            rows.append(
                (
                    f"{s.mb} MB {what} >= 0.8x the gRPC stream",
                    sp[key] / floor["grpc_bulk"],
                    0.8,
                    ">=",
                )
            )
    for label, value, target, op in rows:
        if value is None:
            continue
        met = value <= target if op == "<=" else value >= target
        shown = f"{value:,.0f}" if target > 100 else f"{value:.2f}x"
        print(f"  {label:<44}{shown:>12}  {'meets' if met else 'misses'}")


def versions() -> str:
    from importlib import metadata

    parts = [f"Python {platform.python_version()}", f"{os.cpu_count()} CPUs"]
    for dist in ("numpy", "grpcio", "ray", "distributed"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{dist} {metadata.version(dist)}")
    return ", ".join(parts)


# ---- profiling scenario (b) ------------------------------------------------------------


def profile_throughput(s: Settings, backend: str) -> None:
    """Sperse's scenario (b) under cProfile: the user's thread, and the I/O thread if any."""
    system = SperseSystem(backend)
    system.start()
    try:
        system.echo_many(range(s.warmup_tasks))
        gc.collect()
        user = cProfile.Profile()
        io_thread = cProfile.Profile()
        loop = getattr(system.cluster.backend, "_loop", None)  # SperseBackend's I/O loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(_enable(io_thread), loop).result(5)
        t0 = perf()
        user.enable()
        pendings = [system._echo(x) for x in range(s.tasks)]
        submitted = perf() - t0
        system.sperse.gather(*pendings)
        user.disable()
        elapsed = perf() - t0
        if loop is not None:
            asyncio.run_coroutine_threadsafe(_disable(io_thread), loop).result(5)
        print(
            f"{s.tasks} tasks in {elapsed:.2f} s under the profiler "
            f"({s.tasks / elapsed:,.0f} tasks/s); submitting took {submitted:.2f} s"
        )
        for name, prof in (("user thread", user), ("I/O thread", io_thread)):
            if name == "I/O thread" and loop is None:
                continue
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(20)
            print(f"\n==== {name}: top 20 by own time ====")
            print(text.getvalue())
    finally:
        system.stop()


async def _enable(prof: cProfile.Profile) -> None:
    prof.enable()


async def _disable(prof: cProfile.Profile) -> None:
    prof.disable()


# ---- main ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("server", "local", "ray"), default="server")
    parser.add_argument(
        "--transport",
        choices=("auto", "grpc"),
        default="auto",
        help="grpc: the client talks to its server over gRPC only, as from another host",
    )
    parser.add_argument(
        "--compression",
        choices=("gzip", "deflate"),
        default=None,
        help="compress what the client sends over gRPC (off by default)",
    )
    parser.add_argument("--compare", action="store_true", help="also run Ray and Dask")
    parser.add_argument("--calls", type=int, default=None, help="(a) calls (default 2000)")
    parser.add_argument("--tasks", type=int, default=None, help="(b) tasks (default 10000)")
    parser.add_argument("--mb", type=int, default=None, help="(c) array size (default 100)")
    parser.add_argument("--quick", action="store_true", help="small numbers, a smoke run")
    parser.add_argument("--profile", action="store_true", help="profile Sperse's (b) only")
    args = parser.parse_args(argv)
    s = Settings(args)
    # Ray reads these when it is imported: loopback addresses only, no usage reporting.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    if args.profile:
        profile_throughput(s, args.backend)
        return

    began = perf()
    print(versions())
    print(
        f"calls={s.calls} tasks={s.tasks} mb={s.mb} repeat={s.repeat} "
        f"sperse backend={args.backend} transport={args.transport}"
        + (f" compression={args.compression}" if args.compression else ""),
        flush=True,
    )

    print("floors...", flush=True)
    floor: dict[str, float] = {}
    notes: list[str] = []
    try:
        floor = floors(s)
    except Exception as exc:
        notes.append(f"floors failed: {type(exc).__name__}: {exc}")

    results: dict[str, dict[str, float]] = {}
    absent: dict[str, str] = {}
    makers: list[tuple[str, str, Callable[[], System]]] = [
        ("Sperse", "sperse", lambda: SperseSystem(args.backend, args.transport, args.compression))
    ]
    if args.compare:
        makers.append(("Ray", "ray", RaySystem))
        makers.append(("Dask", "distributed", DaskSystem))
    else:
        absent = {"Ray": "-", "Dask": "-"}
    for name, module, make_system in makers:
        if importlib.util.find_spec(module) is None:
            absent[name] = "n/i"
            notes.append(
                f"{name} is not installed ({module!r} not importable): "
                ".venv/bin/pip install -e '.[bench]'"
            )
            continue
        print(f"{name}...", flush=True)
        try:
            system = make_system()
        except Exception as exc:
            absent[name] = "error"
            notes.append(f"{name} could not be imported: {type(exc).__name__}: {exc}")
            continue
        results[name] = measure(system, s, notes)
        gc.collect()
    if args.transport == "grpc" and args.backend == "server" and "Sperse" in results:
        print("Sperse: (f) server to server...", flush=True)
        try:
            results["Sperse"]["pull"] = pull_rate(s)
            print(f"  Sperse: (f) {results['Sperse']['pull']:,.0f} MB/s", flush=True)
        except Exception as exc:
            notes.append(f"(f) failed: {type(exc).__name__}: {exc}")

    report(s, results, absent, floor, args.backend, args.transport)
    for note in notes:
        print(f"note: {note}")
    if absent.get("Ray") == "n/i" or absent.get("Dask") == "n/i":
        print("n/i: not installed")
    print(f"\n(whole run: {perf() - began:.0f} s)")
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
