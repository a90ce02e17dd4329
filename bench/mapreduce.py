"""``sperse.map`` of a CPU-bound function: one server against two, beside Ray and Dask.

The job: a pure-Python function of integer arithmetic (``spin``) over 64 x 4
items, in 64 chunks of equal work. It runs on:

- Sperse, 1 server x 1 worker (an embedded ``sperse server`` process, ``SperseBackend``);
- Sperse, 2 servers x 1 worker (two such processes behind one ``ClusterBackend``);
- Ray, 2 workers (``ray.init(num_cpus=2)``), one task per chunk;
- Dask, 2 workers (``LocalCluster``, 2 processes x 1 thread), ``client.map`` over the chunks.

Every system is warmed up once (the same 64 chunks with tiny items: workers started, the
function shipped), then timed from submitting the job to holding every result in this
process, best of ``--repeat`` (3). Every system's results are checked against the same
function run here in-process, serially, which is also printed as a floor: the time one
worker needs with no cluster at all.

Targets (from the issue): 2 servers x 1 worker is >= 1.8x as fast as 1 server x 1 worker
(this machine has 2 cores), and Sperse's 2 x 1 is at least as fast as Ray's and Dask's
2 workers. The routing decision's cost (<= 50 us per task with 100 servers) is
``bench/routing.py``'s (``Router.pick_server``), not repeated here.

Run: ``.venv/bin/python bench/mapreduce.py [--quick] [--skip-ray] [--skip-dask]``.
All processes are on 127.0.0.1 and are stopped before the script ends.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import importlib.util
import logging
import os
import platform
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

perf = time.perf_counter

CHUNKS = 64
SPEEDUP_TARGET = 1.8
TIMEOUT = 600.0  # seconds for one job, warm-up included
NOISY = 0.1  # cores taken by other programs, beyond those a run leaves idle, worth a note

# ---- the work (shipped by value from __main__ by every system) -------------------------


def spin(n: int) -> int:
    """``n`` steps of a linear congruential generator: pure-Python integer arithmetic."""
    acc = n
    for i in range(n):
        acc = (acc * 1103515245 + i) & 0xFFFFFFFF
    return acc


def spin_chunk(chunk: Sequence[int]) -> list[int]:
    """One chunk, for Ray and Dask (Sperse's ``map`` does this loop itself)."""
    return [spin(n) for n in chunk]


# ---- settings ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    per_chunk: int  # items per chunk
    steps: int  # spin's iterations per item (each item differs a little)
    repeat: int

    def items(self, steps: int | None = None) -> list[int]:
        base = self.steps if steps is None else steps
        return [base + i for i in range(CHUNKS * self.per_chunk)]

    def warmup_items(self) -> list[int]:
        return self.items(steps=100)

    def chunks(self, items: Sequence[int]) -> list[Sequence[int]]:
        return [items[k : k + self.per_chunk] for k in range(0, len(items), self.per_chunk)]


def settings(args: argparse.Namespace) -> Settings:
    # Full: about 5 s for the whole job on one worker of the 2-core machine this was sized
    # on (about 75 ns per step, 64 x 4 x 260,000 steps).
    if args.quick:
        return Settings(per_chunk=4, steps=30_000, repeat=1)
    return Settings(per_chunk=4, steps=260_000, repeat=args.repeat)


# ---- measuring -------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    label: str
    workers: int = 0
    best: float | None = None
    runs: list[float] = field(default_factory=list)
    ours: list[float | None] = field(default_factory=list)  # CPU s of the run's processes
    others: list[float | None] = field(default_factory=list)  # cores used by other programs
    error: str = ""
    detail: str = ""

    def others_in_best(self) -> float | None:
        return self.others[self.runs.index(self.best)] if self.best is not None else None


def _proc_stat(path: str) -> list[str]:
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()  # the fields after "(comm)"


def cpu_snapshot() -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its
    descendants), from /proc (Linux; None elsewhere). Every system's processes here are
    descendants of this one (Ray's raylet and workers, Dask's nannies, Sperse's servers), so
    the difference over a run is what other programs took from the 2 cores meanwhile."""
    hz = os.sysconf("SC_CLK_TCK")
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
        children: dict[int, list[int]] = collections.defaultdict(list)
        used: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _proc_stat(f"/proc/{name}/stat")
                children[int(fields[1])].append(int(name))
                used[int(name)] = int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError):
        return None
    mine, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        mine += used.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return busy / hz, mine / hz


def cpu_usage(before: tuple[float, float] | None, elapsed: float) -> tuple[float, float] | None:
    """Since ``before``: (CPU seconds of this process tree, cores used by other programs)."""
    after = cpu_snapshot()
    if before is None or after is None or elapsed <= 0:
        return None
    ours = after[1] - before[1]
    return ours, max(0.0, (after[0] - before[0]) - ours) / elapsed


def numbers(values: Sequence[float | None]) -> str:
    return " ".join("?" if v is None else f"{v:.2f}" for v in values)


def timed(
    label: str,
    workers: int,
    job: Callable[[list[int]], list[int]],
    s: Settings,
    expected: list[int],
    warm_expected: list[int],
) -> Outcome:
    """A warm-up, then ``s.repeat`` timed runs of ``job``; each result is checked."""
    out = Outcome(label, workers)
    t0 = perf()
    warm = job(s.warmup_items())
    assert warm == warm_expected, f"{label}: wrong results in the warm-up"
    warmup = perf() - t0
    items = s.items()
    for _ in range(s.repeat):
        gc.collect()
        before = cpu_snapshot()
        t0 = perf()
        got = job(items)
        elapsed = perf() - t0
        usage = cpu_usage(before, elapsed)
        out.runs.append(elapsed)
        out.ours.append(usage[0] if usage else None)
        out.others.append(usage[1] if usage else None)
        assert got == expected, f"{label}: wrong results"
    out.best = min(out.runs)
    print(
        f"  {label}: warm-up {warmup:.2f} s; runs {numbers(out.runs)} s; meanwhile its "
        f"processes used {numbers(out.ours)} CPU s, other programs {numbers(out.others)} cores",
        flush=True,
    )
    return out


def attempt(label: str, run: Callable[[], Outcome]) -> Outcome:
    """``run()``, or an Outcome saying why it failed (the run stops what it started)."""
    print(f"{label}...", flush=True)
    try:
        return run()
    except Exception as exc:
        print(f"  {label}: FAILED: {type(exc).__name__}: {exc}", flush=True)
        return Outcome(label, error=f"{type(exc).__name__}: {exc}")


def in_process(s: Settings) -> tuple[float, list[int], list[int]]:
    """The floor, and the expected results: the job run here, serially, once."""
    warm_expected = spin_chunk(s.warmup_items())
    items = s.items()
    before = cpu_snapshot()
    t0 = perf()
    expected = spin_chunk(items)
    elapsed = perf() - t0
    usage = cpu_usage(before, elapsed)
    busy = "" if usage is None else f"; meanwhile other programs used {usage[1]:.2f} cores"
    print(f"  {elapsed:.2f} s{busy}", flush=True)
    return elapsed, expected, warm_expected


# ---- the systems ---------------------------------------------------------------------------


@contextlib.contextmanager
def sperse_one_server() -> Iterator[Any]:
    import sperse
    from sperse._backends.sperse import EmbeddedServer, SperseBackend

    server = EmbeddedServer(workers=1, name="one")
    try:
        cluster = sperse.Cluster(SperseBackend(server.address, token=server.token, process=server))
    except BaseException:
        server.stop()
        raise
    with cluster:  # current for sperse.map; closing it stops the server
        yield cluster


@contextlib.contextmanager
def sperse_two_servers() -> Iterator[Any]:
    import sperse
    from sperse._backends.multi import ClusterBackend
    from sperse._backends.sperse import EmbeddedServer

    token = secrets.token_urlsafe(16)
    servers: list[Any] = []
    try:
        for i in range(2):
            servers.append(EmbeddedServer(workers=1, name=f"s{i}", token=token))
        backend = ClusterBackend([s.address for s in servers], token=token, processes=servers)
        cluster = sperse.Cluster(backend)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    with cluster:  # closing it stops both servers
        yield cluster


def run_sperse(
    label: str,
    workers: int,
    make: Callable[[], contextlib.AbstractContextManager[Any]],
    s: Settings,
    expected: list[int],
    warm_expected: list[int],
) -> Outcome:
    import sperse

    spread: list[collections.Counter[str]] = []

    def job(items: list[int]) -> list[int]:
        result = sperse.map(spin, items, chunksize=len(items) // CHUNKS)
        values: list[int] = result.result(TIMEOUT)
        spread.append(collections.Counter(chunk.where for chunk in result.chunks))
        return values

    with make():
        out = timed(label, workers, job, s, expected, warm_expected)
    per_run = [", ".join(f"{k} {v}" for k, v in sorted(c.items())) for c in spread[1:]]
    if len(spread[-1]) > 1:
        out.detail = "chunks per server: " + " | ".join(per_run)
        print(f"  {label}: {out.detail} (timed runs)", flush=True)
    return out


def run_ray(s: Settings, expected: list[int], warm_expected: list[int]) -> Outcome:
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
        assert addresses == {"127.0.0.1"}, f"Ray's node is at {addresses}, not 127.0.0.1"
        remote_chunk = ray.remote(spin_chunk)

        def job(items: list[int]) -> list[int]:
            refs = [remote_chunk.remote(chunk) for chunk in s.chunks(items)]
            return [v for values in ray.get(refs, timeout=TIMEOUT) for v in values]

        return timed("ray 2 workers", 2, job, s, expected, warm_expected)
    finally:
        ray.shutdown()


def run_dask(s: Settings, expected: list[int], warm_expected: list[int]) -> Outcome:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:"), f"Dask's scheduler is at {address}"
        with Client(cluster) as client:

            def job(items: list[int]) -> list[int]:
                # pure=False: Dask would otherwise answer the repeated runs from its cache.
                futures = client.map(spin_chunk, s.chunks(items), pure=False)
                return [v for values in client.gather(futures) for v in values]

            return timed("dask 2 workers", 2, job, s, expected, warm_expected)


# ---- report ------------------------------------------------------------------------------


def machine() -> str:
    from importlib import metadata

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "")
    parts = [f"{os.cpu_count()} cores" + (f" ({cpu})" if cpu else "")]
    parts.append(f"Python {platform.python_version()}")
    for dist in ("ray", "distributed"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{dist} {metadata.version(dist)}")
    return "machine: " + ", ".join(parts)


def verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


def report(
    s: Settings,
    serial: float,
    one: Outcome,
    two: Outcome,
    others: Sequence[tuple[str, Outcome | str]],
) -> None:
    print(f"\nmap: {CHUNKS} chunks of a CPU-bound function (best of {s.repeat})")
    print(f"  in-process, serial, no cluster {serial:7.2f} s   (the work of one worker)")

    def time_of(o: Outcome) -> str:
        return f"{o.best:7.2f} s" if o.best is not None else "  failed "

    extra = ""
    if one.best is not None:
        over = (one.best - serial) / CHUNKS * 1e3
        extra = f"   {over:+.1f} ms per chunk over serial"
    print(f"  {one.label:<30} {time_of(one)}{extra}")
    extra = ""
    if one.best is not None and two.best is not None:
        speedup = one.best / two.best
        ok = speedup >= SPEEDUP_TARGET
        extra = f"   speedup {speedup:.2f}x (target >= {SPEEDUP_TARGET}x: {verdict(ok)})"
    else:
        extra = f"   speedup n/a (target >= {SPEEDUP_TARGET}x: n/a, a run failed)"
    print(f"  {two.label:<30} {time_of(two)}{extra}")
    for name, other in others:
        if isinstance(other, str):
            print(f"  {name + ' 2 workers':<30} {other}")
            continue
        if other.best is None or two.best is None:
            print(f"  {other.label:<30} {time_of(other)}   sperse/{name} n/a (a run failed)")
            continue
        ratio = other.best / two.best
        way = "faster" if ratio >= 1 else "slower"
        shown = ratio if ratio >= 1 else 1 / ratio
        print(
            f"  {other.label:<30} {time_of(other)}   sperse/{name} {shown:.2f}x {way}"
            f" (target: sperse >= {name}: {verdict(ratio >= 1)})"
        )
    if two.best is not None:
        ideal = serial / 2
        print(f"  (2 workers, perfectly split, no overhead: {ideal:.2f} s)")
    if two.detail:
        print(f"  sperse 2 x 1, {two.detail}")
    for o in (one, two, *(o for _, o in others if isinstance(o, Outcome))):
        if o.error:
            print(f"note: {o.label} failed: {o.error}")
        busy = o.others_in_best()
        cores = os.cpu_count() or 1
        if busy is not None and busy >= max(0, cores - o.workers) + NOISY:
            print(
                f"note: other programs used {busy:.2f} of the {cores} cores during the best "
                f"run of {o.label} ({o.workers} busy workers): its time is inflated; run "
                "again on an idle machine"
            )
    print("routing decision with 100 servers (target <= 50 us): see bench/routing.py")


# ---- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small work, one run: a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per system")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-dask", action="store_true")
    args = parser.parse_args(argv)
    s = settings(args)
    # Ray reads these when it is imported: loopback addresses only, no usage reporting.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

    began = perf()
    print(machine())
    print(
        f"job: {CHUNKS} chunks x {s.per_chunk} items, spin(~{s.steps:,} steps) each; "
        f"best of {s.repeat}",
        flush=True,
    )
    print("in-process, serial...", flush=True)
    serial, expected, warm_expected = in_process(s)

    one = attempt(
        "sperse 1 server x 1 worker",
        lambda: run_sperse(
            "sperse 1 server x 1 worker", 1, sperse_one_server, s, expected, warm_expected
        ),
    )
    two = attempt(
        "sperse 2 servers x 1 worker",
        lambda: run_sperse(
            "sperse 2 servers x 1 worker", 2, sperse_two_servers, s, expected, warm_expected
        ),
    )
    others: list[tuple[str, Outcome | str]] = []
    comparisons: list[tuple[str, str, bool, Callable[[], Outcome]]] = [
        ("ray", "ray", args.skip_ray, lambda: run_ray(s, expected, warm_expected)),
        ("dask", "distributed", args.skip_dask, lambda: run_dask(s, expected, warm_expected)),
    ]
    for name, module, skip, run in comparisons:
        if skip:
            others.append((name, f"skipped (--skip-{name})"))
        elif importlib.util.find_spec(module) is None:
            others.append((name, "not installed: .venv/bin/pip install -e '.[bench]'"))
        else:
            others.append((name, attempt(f"{name} 2 workers", run)))
        gc.collect()

    report(s, serial, one, two, others)
    print(f"\n(whole run: {perf() - began:.0f} s)")
    ran = [one, two, *(o for _, o in others if isinstance(o, Outcome))]
    return 1 if any(o.error for o in ran) else 0  # a failed or wrong run, not a missed target


if __name__ == "__main__":
    sys.exit(main())
