"""Remote-object method calls: Sperse's remote objects side by side with Ray's actors.

One counter object per system, created remotely, whose method ``incr()`` adds one and
returns the count:

- Sperse: ``sperse.connect()`` (an embedded server, default workers), then
  ``sperse.remote(Counter)()``, an ObjectProxy; a call is ``proxy.incr()``, a Pending (it
  goes straight to the object's worker: this client made it, on its host);
- Ray: ``ray.init(address="local", num_cpus=2, ...)``, a new Ray of its own on 127.0.0.1,
  then ``ray.remote(Counter).remote()``, an actor; a call is ``actor.incr.remote()``, an
  ObjectRef.

Measured, in one run, one system after the other:

- round trip: ``--calls`` (2000) calls made one at a time, each waited for before the next
  (``proxy.incr().result()``, ``ray.get(actor.incr.remote())``), after a warm-up: p50, p90
  and p99 in microseconds;
- throughput: ``--batch`` (10,000) calls issued asynchronously (every call made before any
  is waited for), then all of them waited for, values in hand (``sperse.wait`` then the
  values; ``ray.get(refs)``): calls/s, best of ``--repeat`` (3);
- the same two for a class whose ``incr`` is an ``async def`` (each system's default
  ``max_concurrency``), printed on a line of its own;
- for context, the round trip of a plain remote function (no object) on both.

Every value is checked (a counter's calls run in order, so the values of a batch are the
next ``--batch`` counts; an async counter's may come back in another order), and each
counter's final count is read back: a wrong answer is reported as such and fails the run
(exit code 1), and the other numbers are still measured and printed. For each system it
also prints where the CPU time of the Counter's calls went, per process of this script's
tree (and per thread of this process), from the kernel's per-thread counters (Linux), and
how many cores other programs used meanwhile.

Targets (from the issue): round-trip p50 <= 0.3x Ray's, throughput >= 3x Ray's (issue 18; 2x before).

Run: ``.venv/bin/python bench/objects.py [--quick] [--skip-ray]``; ``--profile`` runs only
Sperse's round trip (or ``--profile batch``: its throughput) under cProfile, for the user's
thread and the client's I/O thread. Every process started is stopped before the end.
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
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

perf = time.perf_counter

P50_TARGET = 0.3  # Sperse's round-trip p50 at most this times Ray's
RATE_TARGET = 3.0  # Sperse's throughput at least this times Ray's (issue 18; 2x before)
TIMEOUT = 120.0  # seconds for one call, or one batch
NOISY = 0.25  # cores taken by other programs during a timed phase worth a note
SHOWN_CPU = 2.0  # µs of CPU per call below which a process is left out of the breakdown

# ---- the classes and the function (shipped by value from __main__ by both systems) -----


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count

    def value(self) -> int:
        return self.count


class AsyncCounter:
    """The same counter with an ``async def`` method. It does not await anything: what is
    measured is the cost of going through the object's event loop."""

    def __init__(self) -> None:
        self.count = 0

    async def incr(self) -> int:
        self.count += 1
        return self.count

    def value(self) -> int:
        return self.count


def echo(x: Any) -> Any:
    return x


# ---- settings --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    calls: int  # round trips timed
    warmup: int  # round trips before them
    batch: int  # calls issued at once, then waited for
    warm_batch: int  # a first batch, not timed
    repeat: int  # timed batches


def settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(
            calls=args.calls or 200,
            warmup=50,
            batch=args.batch or 1000,
            warm_batch=200,
            repeat=1,
        )
    return Settings(
        calls=args.calls or 2000,
        warmup=200,
        batch=args.batch or 10_000,
        warm_batch=1000,
        repeat=args.repeat,
    )


# ---- CPU accounting (Linux /proc; None elsewhere) --------------------------------------


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _tree() -> list[int]:
    """This process and its descendants (both systems' servers, workers and daemons are)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(_read(f"/proc/{name}/stat").rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(name))
    out, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _label(pid: int) -> str:
    """A short name for a process: ``-m module``, Ray's process titles, or the program."""
    if pid == os.getpid():
        return "this process"
    try:
        args = [a for a in _read(f"/proc/{pid}/cmdline").split("\0") if a]
    except OSError:
        return f"? [{pid}]"
    if not args:
        return f"? [{pid}]"
    if "-m" in args[:-1]:
        name = args[args.index("-m") + 1]
    elif any("spawn_main" in a for a in args):
        name = "worker (multiprocessing spawn)"
    elif args[0].startswith("ray::"):
        name = args[0].split()[0]
    else:
        name = os.path.basename(args[0])
        script = next((a for a in args[1:] if a.endswith(".py")), "")
        if name.startswith("python") and script:
            name = os.path.basename(script)
    return f"{name[:48]} [{pid}]"


Snapshot = dict[str, int]  # nanoseconds on a CPU, by process (this one by thread)


def cpu_by_process() -> Snapshot | None:
    """CPU time of every live thread of this tree, summed per process (the threads of this
    process apart: its main thread, the others), from ``/proc/PID/task/TID/schedstat``."""
    if not sys.platform.startswith("linux"):
        return None
    out: Snapshot = {}
    me = os.getpid()
    try:
        pids = _tree()
    except OSError:
        return None
    for pid in pids:
        label = _label(pid)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    ns = int(_read(f"/proc/{pid}/task/{tid}/schedstat").split()[0])
                    key = label
                    if pid == me:
                        key += ": main thread" if int(tid) == me else ": other threads"
                    out[key] = out.get(key, 0) + ns
    return out


def machine_busy() -> float | None:
    """CPU seconds the whole machine has been busy (all but idle and iowait)."""
    try:
        ticks = [int(x) for x in _read("/proc/stat").split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Usage:
    """What a timed phase cost: CPU per process of this tree, and other programs' cores."""

    ns: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    wall: float = 0.0
    others: list[float | None] = field(default_factory=list)  # cores, one per phase

    def add(self, before: tuple[Snapshot | None, float | None], calls: int, wall: float) -> None:
        snap, busy = before
        after, busy_after = cpu_by_process(), machine_busy()
        ours = 0.0
        if snap is not None and after is not None:
            for key, ns in after.items():
                delta = ns - snap.get(key, 0)  # a process started meanwhile: all of it
                self.ns[key] = self.ns.get(key, 0) + delta
                ours += delta / 1e9
        self.calls += calls
        self.wall += wall
        if busy is None or busy_after is None or snap is None or wall <= 0:
            self.others.append(None)
        else:  # the machine's busy time is in ticks: coarse over short phases
            self.others.append(max(0.0, (busy_after - busy) - ours) / wall)

    def worst_others(self) -> float | None:
        known = [c for c in self.others if c is not None]
        return max(known) if known else None


def usage_start() -> tuple[Snapshot | None, float | None]:
    return cpu_by_process(), machine_busy()


# ---- the systems under test ------------------------------------------------------------


class System:
    """One system: started, objects made and called, then stopped."""

    name = "?"

    def start(self) -> None:
        raise NotImplementedError

    def make(self, cls: type) -> Any:
        """A remote instance of ``cls``, created and ready for calls."""
        raise NotImplementedError

    def incr(self, handle: Any) -> int:
        """One call, waited for."""
        raise NotImplementedError

    def incr_many(self, handle: Any, n: int) -> tuple[float, list[int]]:
        """``n`` calls made before any is waited for, then all of their values; returns
        ``perf()`` when the last call was made, and the values."""
        raise NotImplementedError

    def value(self, handle: Any) -> int:
        raise NotImplementedError

    def drop(self, handle: Any) -> None:
        raise NotImplementedError

    def echo(self, x: Any) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def io_loop(self) -> asyncio.AbstractEventLoop | None:
        return None


class SperseSystem(System):
    name = "sperse"

    def __init__(self) -> None:
        import sperse
        import sperse._backends.sperse
        import sperse._cluster.objects  # imported before anything is timed

        self.sperse = sperse
        self.cluster: Any = None
        self._echo = sperse.remote(echo)

    def start(self) -> None:
        self.cluster = self.sperse.connect()

    def make(self, cls: type) -> Any:
        return self.sperse.remote(cls)().ready(TIMEOUT)

    def incr(self, handle: Any) -> int:
        return handle.incr().result(TIMEOUT)  # type: ignore[no-any-return]

    def incr_many(self, handle: Any, n: int) -> tuple[float, list[int]]:
        pendings = [handle.incr() for _ in range(n)]
        submitted = perf()
        _, not_done = self.sperse.wait(pendings, timeout=TIMEOUT)
        if not_done:
            raise TimeoutError(f"{len(not_done)} of {n} calls not done within {TIMEOUT} s")
        return submitted, [p.result(TIMEOUT) for p in pendings]

    def value(self, handle: Any) -> int:
        return handle.value().result(TIMEOUT)  # type: ignore[no-any-return]

    def drop(self, handle: Any) -> None:
        handle.close()

    def echo(self, x: Any) -> Any:
        return self._echo(x).result(TIMEOUT)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def io_loop(self) -> asyncio.AbstractEventLoop | None:
        return getattr(self.cluster.backend, "_loop", None)  # SperseBackend's I/O thread


class RaySystem(System):
    name = "ray actor"

    def __init__(self) -> None:
        import ray

        self.ray = ray
        self._echo = ray.remote(echo)

    def start(self) -> None:
        self.ray.init(
            address="local",  # a new Ray of our own, never one already running here
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        addresses = {node["NodeManagerAddress"] for node in self.ray.nodes()}
        if addresses != {"127.0.0.1"}:
            raise RuntimeError(f"Ray's node is at {addresses}, not 127.0.0.1 only")

    def make(self, cls: type) -> Any:
        actor: Any = self.ray.remote(cls).remote()
        self.ray.get(actor.value.remote(), timeout=TIMEOUT)  # ready: it answers
        return actor

    def incr(self, handle: Any) -> int:
        return self.ray.get(handle.incr.remote(), timeout=TIMEOUT)  # type: ignore[no-any-return]

    def incr_many(self, handle: Any, n: int) -> tuple[float, list[int]]:
        refs = [handle.incr.remote() for _ in range(n)]
        submitted = perf()
        return submitted, self.ray.get(refs, timeout=TIMEOUT)

    def value(self, handle: Any) -> int:
        return self.ray.get(handle.value.remote(), timeout=TIMEOUT)  # type: ignore[no-any-return]

    def drop(self, handle: Any) -> None:
        self.ray.kill(handle)

    def echo(self, x: Any) -> Any:
        return self.ray.get(self._echo.remote(x), timeout=TIMEOUT)

    def stop(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()


# ---- measuring -------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """One class on one system."""

    p50: float | None = None  # µs
    p90: float | None = None
    p99: float | None = None
    rates: list[float] = field(default_factory=list)  # calls/s, one per timed batch
    submits: list[float] = field(default_factory=list)  # s to make the calls of a batch
    round_trip: Usage = field(default_factory=Usage)
    batches: Usage = field(default_factory=Usage)
    wrong: list[str] = field(default_factory=list)  # wrong answers: the run fails

    @property
    def rate(self) -> float | None:
        return max(self.rates) if self.rates else None


@dataclass(slots=True)
class Result:
    """One system: its Counter, its AsyncCounter, and a plain function's round trip."""

    name: str
    counter: Outcome | None = None
    async_counter: Outcome | None = None
    function_p50: float | None = None
    error: str = ""

    @property
    def wrong(self) -> list[str]:
        return [w for o in (self.counter, self.async_counter) if o is not None for w in o.wrong]


def percentiles(times: Sequence[float]) -> tuple[float, float, float]:
    p50, p90, p99 = np.percentile(np.asarray(times) * 1e6, [50, 90, 99])
    return float(p50), float(p90), float(p99)


def check_batch(values: list[int], start: int, n: int, ordered: bool) -> str:
    """What is wrong with the values of ``n`` calls after ``start`` ("": nothing). Calls
    that ran out of the order they were made are told apart from wrong counts."""
    expected = list(range(start + 1, start + n + 1))
    if values == expected:
        return ""
    if sorted(values) == expected:
        if not ordered:
            return ""
        moved = sum(a != b for a, b in zip(values, expected, strict=True))
        first = next(i for i, (a, b) in enumerate(zip(values, expected, strict=True)) if a != b)
        return (
            f"{moved:,} of {n:,} calls did not run in the order they were made (every count "
            f"is there once; the first misplaced is call {first + 1:,}, which got the "
            f"count of call {values[first] - start:,})"
        )
    missing = len(set(expected) - set(values))
    return (
        f"wrong values: {len(values):,} values for {n:,} calls, {missing:,} of the counts "
        f"{start + 1:,}..{start + n:,} missing"
    )


def measure_class(system: System, cls: type, s: Settings, ordered: bool) -> Outcome:
    """Round trips, then batches, on one new instance of ``cls``; every value checked. A
    wrong answer is recorded (the run fails) and the measuring goes on, so that the other
    numbers are still there to read."""
    what = f"{system.name} {cls.__name__}"
    out = Outcome()
    handle = system.make(cls)
    count = 0

    def check(values: list[int], n: int, phase: str, in_order: bool = ordered) -> None:
        problem = check_batch(values, count, n, in_order)
        if problem:
            out.wrong.append(f"{what}, {phase}: {problem}")
            print(f"  {what}: WRONG ANSWER, {phase}: {problem}", flush=True)

    try:
        for _ in range(s.warmup):
            count += 1
            got = system.incr(handle)
            assert got == count, f"{what}: incr() returned {got}, expected {count}"

        gc.collect()
        times, values = [], []
        before = usage_start()
        began = perf()
        for _ in range(s.calls):
            t0 = perf()
            values.append(system.incr(handle))
            times.append(perf() - t0)
        out.round_trip.add(before, s.calls, perf() - began)
        check(values, s.calls, "round trips", in_order=True)
        count += s.calls
        out.p50, out.p90, out.p99 = percentiles(times)
        print(
            f"  {what}: round trip p50 {out.p50:.0f} us, p90 {out.p90:.0f} us, "
            f"p99 {out.p99:.0f} us{others_text(out.round_trip.others[-1])}",
            flush=True,
        )

        _, values = system.incr_many(handle, s.warm_batch)
        check(values, s.warm_batch, "warm-up batch")
        count += s.warm_batch
        for run in range(s.repeat):
            gc.collect()
            before = usage_start()
            t0 = perf()
            submitted, values = system.incr_many(handle, s.batch)
            elapsed = perf() - t0
            out.batches.add(before, s.batch, elapsed)
            check(values, s.batch, f"timed batch {run + 1}")
            count += s.batch
            out.rates.append(s.batch / elapsed)
            out.submits.append(submitted - t0)
        runs = ", ".join(
            f"{r:,.0f} (calls made in {m:.2f} s)"
            for r, m in zip(out.rates, out.submits, strict=True)
        )
        worst = out.batches.worst_others()
        print(f"  {what}: {s.batch:,} calls/s {runs}{others_text(worst)}", flush=True)

        final = system.value(handle)
        if final != count:
            out.wrong.append(f"{what}: the counter ends at {final:,}, expected {count:,}")
    finally:
        system.drop(handle)
    return out


def others_text(cores: float | None) -> str:
    return "" if cores is None else f"; other programs used {cores:.2f} cores meanwhile"


def measure(system: System, s: Settings) -> Result:
    """Every measurement on ``system``; always stops it."""
    result = Result(system.name)
    try:
        t0 = perf()
        system.start()
        print(f"  {system.name}: started in {perf() - t0:.1f} s", flush=True)
        result.counter = measure_class(system, Counter, s, ordered=True)
        result.async_counter = measure_class(system, AsyncCounter, s, ordered=False)

        for i in range(s.warmup):
            assert system.echo(i) == i
        times = []
        for i in range(s.calls):
            t0 = perf()
            got = system.echo(i)
            times.append(perf() - t0)
            assert got == i, f"{system.name} echo: {got!r} for {i!r}"
        result.function_p50 = percentiles(times)[0]
        print(f"  {system.name}: plain function round trip p50 {result.function_p50:.0f} us")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"  {system.name}: FAILED: {result.error}", flush=True)
    finally:
        t0 = perf()
        try:
            system.stop()
        except Exception as exc:
            result.error = result.error or f"did not stop cleanly: {type(exc).__name__}: {exc}"
        print(f"  {system.name}: stopped in {perf() - t0:.1f} s", flush=True)
    return result


# ---- the report --------------------------------------------------------------------------


def machine() -> str:
    from importlib import metadata

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "")
    parts = [f"{os.cpu_count()} cores" + (f" ({cpu})" if cpu else "")]
    parts.append(f"Python {platform.python_version()}")
    for dist in ("ray", "grpcio"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{dist} {metadata.version(dist)}")
    return "machine: " + ", ".join(parts)


def verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


def us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def breakdown(name: str, label: str, usage: Usage, p50: float | None) -> None:
    """CPU per call by process, against the wall time per call."""
    if not usage.ns or not usage.calls:
        return
    per_call = {k: v / 1e3 / usage.calls for k, v in usage.ns.items()}
    total = sum(per_call.values())
    wall = usage.wall / usage.calls * 1e6
    head = f"  {name}, {label}: wall {wall:,.0f} us per call"
    if p50 is not None:
        head += f" (p50 {p50:,.0f})"
    print(f"{head}; CPU {total:,.0f} us per call in all:")
    for key, value in sorted(per_call.items(), key=lambda kv: -kv[1]):
        if value >= SHOWN_CPU:
            print(f"    {value:8,.1f} us  {key}")


def report(s: Settings, results: list[Result], skipped: str) -> None:
    sp = next((r for r in results if r.name == "sperse"), None)
    ray = next((r for r in results if r.name == "ray actor"), None)
    print(f"\nremote object method calls (Counter.incr), this machine: {os.cpu_count()} cores")
    rate_head = f"{s.batch:,} calls/s"
    print(f"{'':<24}{'p50 us':>8}{'p90 us':>9}{'p99 us':>9}{rate_head:>17}")
    for r in results:
        if r.counter is None:
            print(f"  {r.name:<22}failed: {r.error}")
            continue
        c = r.counter
        flag = "   WRONG ANSWERS (see the notes)" if c.wrong else ""
        print(f"  {r.name:<22}{us(c.p50):>8}{us(c.p90):>9}{us(c.p99):>9}{us(c.rate):>17}{flag}")
    if skipped:
        print(f"  {'ray actor':<22}{skipped}")
    print(f"  (round trips: {s.calls:,} after {s.warmup} warm-up; calls/s: best of {s.repeat})")

    spc = sp.counter if sp else None
    rc = ray.counter if ray else None
    if spc and rc and spc.p50 and rc.p50 and spc.rate and rc.rate:
        p50_ratio = spc.p50 / rc.p50
        rate_ratio = spc.rate / rc.rate
        culprits = [r.name for r in (sp, ray) if r and r.counter and r.counter.wrong]

        def judged(ok: bool) -> str:  # a target is not met on wrong answers
            if culprits:
                return f"not met, wrong answers from {' and '.join(culprits)}"
            return verdict(ok)

        print(
            f"  p50 ratio sperse/ray: {p50_ratio:.2f}x "
            f"(target <= {P50_TARGET}x: {judged(p50_ratio <= P50_TARGET)})"
        )
        print(
            f"  throughput ratio sperse/ray: {rate_ratio:.2f}x "
            f"(target >= {RATE_TARGET:g}x: {judged(rate_ratio >= RATE_TARGET)})"
        )
    else:
        print(f"  p50 ratio sperse/ray: n/a (target <= {P50_TARGET}x: n/a, no Ray number)")
        print(f"  throughput ratio sperse/ray: n/a (target >= {RATE_TARGET:g}x: n/a)")

    def async_text(r: Result | None) -> str:
        o = r.async_counter if r else None
        return "-" if o is None else f"{us(o.rate)} calls/s (p50 {us(o.p50)} us)"

    line = f"  async def method (AsyncCounter.incr): sperse {async_text(sp)}"
    if ray is not None:
        line += f", ray {async_text(ray)}"
    print(line)
    fn = "  context, a plain remote function's round trip p50: "
    fn += f"sperse {us(sp.function_p50 if sp else None)} us"
    if ray is not None:
        fn += f", ray task {us(ray.function_p50)} us"
    print(fn)

    print("\nwhere the CPU time of Counter.incr goes (per call, processes of this run):")
    for r in results:
        if r.counter is None:
            continue
        breakdown(r.name, "round trips", r.counter.round_trip, r.counter.p50)
        breakdown(r.name, f"batches of {s.batch:,}", r.counter.batches, None)
    cores = os.cpu_count() or 1
    print(
        f"  (a batch's throughput is bounded by {cores} cores / the CPU per call; a round "
        "trip's wall time beyond its CPU is waiting: wake-ups, and the hops between processes)"
    )

    for r in results:
        if r.error:
            print(f"note: {r.name} failed: {r.error}")
        for wrong in r.wrong:
            print(f"note: WRONG ANSWER: {wrong}")
        for cls, o in (("Counter", r.counter), ("AsyncCounter", r.async_counter)):
            if o is None:
                continue
            for phase, u in (("round trips", o.round_trip), ("batches", o.batches)):
                worst = u.worst_others()
                if worst is not None and worst >= NOISY:
                    print(
                        f"note: other programs used up to {worst:.2f} of the {cores} cores "
                        f"during {r.name}'s {cls} {phase}: its numbers are inflated; run again "
                        "on an idle machine"
                    )
    print(
        "note: defaults kept on both: Sperse runs an object's calls one at a time "
        "(max_concurrency=1, async def methods included); a Ray async actor runs up to 1,000 "
        "at once, and may return them in another order"
    )


# ---- profiling ---------------------------------------------------------------------------


def profile_sperse(s: Settings, what: str) -> None:
    """Sperse's Counter round trips (or one batch) under cProfile: the user's thread and
    the client's I/O thread; the server and the object's worker are other processes."""
    system = SperseSystem()
    system.start()
    try:
        handle = system.make(Counter)
        for _ in range(s.warmup):
            system.incr(handle)
        system.incr_many(handle, s.warm_batch)
        gc.collect()
        user, io_thread = cProfile.Profile(), cProfile.Profile()
        loop = system.io_loop()
        if loop is not None:
            asyncio.run_coroutine_threadsafe(_enable(io_thread), loop).result(5)
        t0 = perf()
        user.enable()
        if what == "batch":
            system.incr_many(handle, s.batch)
            n = s.batch
        else:
            for _ in range(s.calls):
                system.incr(handle)
            n = s.calls
        user.disable()
        elapsed = perf() - t0
        if loop is not None:
            asyncio.run_coroutine_threadsafe(_disable(io_thread), loop).result(5)
        print(
            f"{n:,} calls ({what}) in {elapsed:.2f} s under the profiler: "
            f"{elapsed / n * 1e6:,.0f} us per call"
        )
        for name, prof in (("user thread", user), ("I/O thread", io_thread)):
            if name == "I/O thread" and loop is None:
                continue
            for order in ("tottime", "cumulative"):
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats(order).print_stats(25)
                print(f"\n==== {name}: top 25 by {order} ====")
                print(text.getvalue())
        system.drop(handle)
    finally:
        system.stop()


async def _enable(prof: cProfile.Profile) -> None:
    prof.enable()


async def _disable(prof: cProfile.Profile) -> None:
    prof.disable()


# ---- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few calls: a smoke run")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--calls", type=int, default=None, help="round trips (2000)")
    parser.add_argument("--batch", type=int, default=None, help="calls per batch (10,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed batches per class")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="round-trip",
        choices=("round-trip", "batch"),
        help="profile Sperse's client only",
    )
    args = parser.parse_args(argv)
    s = settings(args)
    # Ray reads these when it is imported: loopback addresses only, no usage reporting.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

    if args.profile:
        profile_sperse(s, args.profile)
        return 0

    began = perf()
    print(machine())
    print(
        f"round trips: {s.calls:,} after {s.warmup} warm-up; batches: {s.warm_batch:,} warm-up, "
        f"then {s.repeat} x {s.batch:,} calls",
        flush=True,
    )
    makers: list[tuple[str, Callable[[], System]]] = [("sperse", SperseSystem)]
    skipped = ""
    if args.skip_ray:
        skipped = "skipped (--skip-ray)"
    elif importlib.util.find_spec("ray") is None:
        skipped = "not installed: .venv/bin/pip install -e '.[bench]'"
    else:
        makers.append(("ray", RaySystem))

    results: list[Result] = []
    for name, make_system in makers:
        print(f"{name}...", flush=True)
        try:
            system = make_system()
        except Exception as exc:
            results.append(Result(name, error=f"import failed: {type(exc).__name__}: {exc}"))
            continue
        results.append(measure(system, s))
        gc.collect()

    report(s, results, skipped)
    print(f"\n(whole run: {perf() - began:.0f} s)")
    # A failed run or a wrong answer fails; a missed target does not.
    return 1 if any(r.error or r.wrong for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
