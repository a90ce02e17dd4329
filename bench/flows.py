"""Flows against their peers, side by side in one run, on this machine (2 cores).

Scenarios (the examples of ``examples/flows`` are what runs on Sperse):

- **word count** over ``--mb`` (200) MB of generated text in 16 files: Sperse's
  ``examples/flows/wordcount.py`` flow on 2 servers (``read_lines`` on the servers, each
  batch counted with ``Counter``, ``fold(..., combine=)``), and the same per word
  (``flat_map(str.split)``, ``key_by``, ``fold(..., combine=)``) for context; one local
  Python loop with ``collections.Counter``; a Dask bag on 2 worker processes
  (``map_partitions`` counting with ``Counter``, ``foldby`` with a combine); Ray Data on 2
  CPUs (``read_text``, ``map_batches`` counting with ``Counter``, ``groupby().sum()``).
  Words/s; targets: ≥ 1.6x the local loop, ≥ 2x Dask bag, ≥ 2x Ray Data;
- **per-item overhead**: an identity map over ``--items`` (10 M) ints on one server
  (``source -> map -> for_each``, fed from this process), as a ratio to the local loop
  ``for x in items: sink(identity(x))`` (target ≤ 3x); the in-process executor for context;
- **PageRank** to ``tol=1e-10`` on a generated graph of ``--nodes`` (100 k) nodes and
  ``--edges`` (1 M) edges: ``examples/flows/pagerank.py``'s flow on 2 servers against
  networkx's power iteration (``nx.pagerank``, or its pure-Python ``_pagerank_python``
  when scipy is missing) and against the same block algorithm on Dask futures (2 workers);
  every result is checked against networkx's. Target: faster than Dask;
- **Collatz** steps of 1..``--upto`` (1 M) by per-item iteration
  (``examples/flows/collatz.py``, 16 steps per trip) on 2 servers against the plain loop:
  items/s.

Every system's cluster is started before its clock starts; each timing is one run (the
machine is shared: the load average is printed with each row). Peers that are not installed
are skipped, saying so. ``--quick`` is a smoke run at a tenth of the sizes (or less);
``--profile`` runs the word count flow in this process under cProfile instead (the same
operators a server's host runs) and prints where the time goes.

Run: ``.venv/bin/python bench/flows.py [--quick] [--mb 200] [--skip-dask] [--skip-ray]``
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import logging
import operator
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "flows"))

import collatz as collatz_example  # noqa: E402
import pagerank as pagerank_example  # noqa: E402
import wordcount as wordcount_example  # noqa: E402

import sperse  # noqa: E402
from sperse._flow.api import InProcess  # noqa: E402
from sperse._flow.local import LocalExecutor  # noqa: E402
from sperse._flow.plan import physical  # noqa: E402
from sperse._up import LocalCluster  # noqa: E402

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: 127.0.0.1
perf = time.perf_counter
WAIT = 3600.0
ROWS: list[tuple[str, str, str]] = []  # (scenario, system, figure) for the summary


def cpu() -> tuple[float, float]:
    """CPU seconds so far of this process (the client: its driver thread feeds sources) and
    of its descendants (a LocalCluster's coordinator, servers and their workers): the live
    ones' own, and what those have of their children that ended (a flow's hosts end with
    their run: a server reaps them, and their time joins its ``children_*`` times)."""
    import psutil

    me = psutil.Process()
    ours = sum(me.cpu_times()[:2])
    theirs = 0.0
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            theirs += sum(child.cpu_times()[:4])
    return ours, theirs


@contextlib.contextmanager
def cpu_note(into: list[str], runs: int = 1) -> Iterator[None]:
    before = cpu()
    yield
    after = cpu()
    each = " a run" if runs > 1 else ""
    into.append(
        f"CPU{each}: client {(after[0] - before[0]) / runs:.1f} s, "
        f"cluster {(after[1] - before[1]) / runs:.1f} s"
    )


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def row(scenario: str, system: str, figure: str) -> None:
    ROWS.append((scenario, system, figure))
    print(f"  {system:<34} {figure:<44} ({load()})", flush=True)


def verdict(name: str, ratio: float, target: float, higher: bool = True) -> str:
    ok = ratio >= target if higher else ratio <= target
    sign = "≥" if higher else "≤"
    return f"  {name}: {ratio:.2f}x (target {sign} {target}x): {'meets' if ok else 'misses'}"


def byte_compile() -> None:
    """Byte-compile sperse's modules, as installing it does. Where Python may not write
    ``.pyc`` files (``PYTHONDONTWRITEBYTECODE``, set on these machines), every process a
    run starts (each flow host is one) would compile them all from source: 0.1-0.3 s of
    CPU each, which is no cost of an installed sperse."""
    if not sys.flags.dont_write_bytecode:
        return
    import compileall

    compileall.compile_dir(Path(sperse.__file__).parent, quiet=1)
    print("(sperse's modules byte-compiled, as an install does: PYTHONDONTWRITEBYTECODE is set)")


# ---- inputs ----------------------------------------------------------------------------


def make_text(folder: Path, mb: float, files: int = 16) -> None:
    """``mb`` MB of words in ``files`` files: Zipf-distributed over 20,000 words of 2-9
    letters, 12 words a line; each file made of 1 MB chunks drawn from 32 distinct ones."""
    rng = np.random.default_rng(1)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=int(rng.integers(2, 10)))) for _ in range(20_000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    chunks = []
    for _ in range(32):
        words = np.array(vocab)[rng.choice(len(vocab), size=170_000, p=p)]
        lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
        chunks.append(("\n".join(lines) + "\n").encode())
    per_file = mb * 1e6 / files
    for i in range(files):
        with (folder / f"part-{i:03d}.txt").open("wb") as f:
            written = 0
            while written < per_file:
                chunk = chunks[int(rng.integers(len(chunks)))]
                f.write(chunk)
                written += len(chunk)


def make_graph(nodes: int, edges: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random edges (a tenth of the nodes with none out, so dangling)."""
    rng = np.random.default_rng(2)
    src = rng.integers(0, nodes, size=int(edges * 1.02))
    src = np.where(src % 10 == 0, src + 1, src) % nodes  # nodes = 0 mod 10: no successors
    dst = rng.integers(0, nodes, size=len(src))
    pairs = np.unique(np.stack([src, dst], axis=1), axis=0)[:edges]
    return pairs[:, 0].copy(), pairs[:, 1].copy()


# ---- systems ---------------------------------------------------------------------------


@contextlib.contextmanager
def sperse_cluster(servers: int) -> Iterator[sperse.Cluster]:
    """A local cluster whose servers have all answered a task: started as Dask's
    ``LocalCluster`` returns (its workers up), not only listening."""
    with LocalCluster(servers, workers=1) as up:
        client = sperse.connect(up.url, token=up.token)
        try:
            for server in up.servers:
                sperse.remote(on=f"@{server.name}")(os.getpid)().result(WAIT)
            yield client
        finally:
            client.close()


@contextlib.contextmanager
def dask_client() -> Iterator[Any]:
    from dask.distributed import Client
    from dask.distributed import LocalCluster as DaskCluster

    with DaskCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        if not cluster.scheduler_address.startswith("tcp://127.0.0.1:"):
            raise RuntimeError(f"Dask's scheduler is at {cluster.scheduler_address}")
        with Client(cluster) as client:
            yield client


@contextlib.contextmanager
def ray_started() -> Iterator[Any]:
    import ray

    ray.init(
        address="local",  # a new Ray of our own, never one already running here
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
        if addresses != {"127.0.0.1"}:
            raise RuntimeError(f"Ray's node is at {addresses}, not 127.0.0.1 only")
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        yield ray
    finally:
        ray.shutdown()


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# ---- word count ------------------------------------------------------------------------


def count_lines(lines: Any) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for line in lines:
        counts.update(line.split())
    return counts


def wc_local(folder: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for path in sorted(folder.iterdir()):
        with path.open(encoding="utf-8") as f:
            for line in f:
                counts.update(line.split())
    return dict(counts)


def wc_sperse(client: sperse.Cluster, folder: Path, variant: str) -> dict[str, int]:
    """``example``: examples/flows/wordcount.py (131,072 lines counted at a time);
    ``batch``: each batch counted as read (1,024 lines); ``word``: per word."""
    flow = sperse.Flow("wc", cluster=client)
    if variant == "example":
        out = wordcount_example.word_count(flow, folder)
        flow.run()
        result: dict[str, int] = out.result(WAIT)
        return result
    lines = flow.read_lines(folder).on(replicas="per_server")
    if variant == "batch":
        out = (
            lines.batch_map(wordcount_example.count_lines)
            .key_by(operator.itemgetter(0))
            .fold(0, wordcount_example.add_count, combine=operator.add)
            .on(replicas="per_server")
            .collect()
        )
    else:
        out = (
            lines.flat_map(str.split)
            .key_by(lambda w: w)
            .fold(0, lambda n, w: n + 1, combine=operator.add)
            .on(replicas="per_server")
            .collect()
        )
    flow.run()
    counts: dict[str, int] = out.result(WAIT)
    return counts


def first(pair: tuple[str, int]) -> str:
    return pair[0]


def add_count(total: int, pair: tuple[str, int]) -> int:
    return total + pair[1]


def wc_dask(client: Any, folder: Path) -> dict[str, int]:
    import dask.bag as db

    paths = [str(p) for p in sorted(folder.iterdir())]
    bag = db.read_text(paths, blocksize="8MiB", encoding="utf-8")
    pairs = bag.map_partitions(lambda lines: list(count_lines(lines).items()))
    counted = pairs.foldby(first, add_count, 0, operator.add, 0)
    return dict(client.compute(counted).result())


def wc_ray(ray: Any, folder: Path) -> dict[str, int]:
    import pandas as pd

    def count_batch(batch: Any) -> Any:
        counts = count_lines(batch["text"])
        return pd.DataFrame({"word": list(counts), "n": list(counts.values())})

    ds = ray.data.read_text(str(folder)).map_batches(count_batch, batch_format="pandas")
    frame = ds.groupby("word").sum("n").to_pandas()
    return dict(zip(frame["word"], frame["sum(n)"].astype(int), strict=True))


def median_run(repeat: int, fn: Callable[[], Any]) -> tuple[float, list[float], Any]:
    """``fn`` run ``repeat`` times: the median time, every time (in order) and the results."""
    times, results = [], []
    for _ in range(repeat):
        started = perf()
        results.append(fn())
        times.append(perf() - started)
    return statistics.median(times), times, results


def runs_of(times: list[float]) -> str:
    if len(times) == 1:
        return f"{times[0]:.2f} s"
    return f"median {statistics.median(times):.2f} s of " + " ".join(f"{t:.2f}" for t in times)


def word_count(args: argparse.Namespace, folder: Path) -> None:
    print(f"word count, {args.mb:g} MB in 16 files", flush=True)
    local, times, results = median_run(args.repeat, lambda: wc_local(folder))
    expected = results[0]
    words = sum(expected.values())
    rate = words / local
    row("word count", "local loop (Counter)", f"{rate / 1e6:.2f} M words/s ({runs_of(times)})")
    rates: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], dict[str, int]], repeat: int = 1) -> None:
        note: list[str] = []
        with cpu_note(note, repeat):
            took, times, got = median_run(repeat, fn)
        if any(g != expected for g in got):
            row("word count", name, "WRONG RESULT")
            return
        rates[name] = words / took
        row("word count", name, f"{rates[name] / 1e6:.2f} M words/s ({runs_of(times)})")
        print(f"    {note[0]}")

    with sperse_cluster(2) as client:
        timed("Sperse flow, 2 servers", lambda: wc_sperse(client, folder, "example"), args.repeat)
        timed("  the same, a batch at a time", lambda: wc_sperse(client, folder, "batch"))
        timed("  the same, per word", lambda: wc_sperse(client, folder, "word"))
    if args.skip_dask or not installed("dask.distributed"):
        print("  Dask: skipped (not installed, or --skip-dask)")
    else:
        with dask_client() as client:
            timed("Dask bag, 2 workers", lambda: wc_dask(client, folder), args.repeat)
    if args.skip_ray or not (installed("ray") and installed("pyarrow")):
        print("  Ray Data: skipped (ray or pyarrow not installed, or --skip-ray)")
    else:
        with ray_started() as ray:  # once: a run takes ~20 s, and its ratio is far from 2x
            timed("Ray Data, 2 CPUs", lambda: wc_ray(ray, folder))
    ours = rates.get("Sperse flow, 2 servers")
    if ours:
        print(verdict("Sperse / local loop", ours / rate, 1.6))
        for peer in ("Dask bag, 2 workers", "Ray Data, 2 CPUs"):
            if peer in rates:
                print(verdict(f"Sperse / {peer}", ours / rates[peer], 2.0))


# ---- per-item overhead -------------------------------------------------------------------


def identity(x: Any) -> Any:
    return x


def sink(x: Any) -> None:
    return None


def per_item(args: argparse.Namespace) -> None:
    n = args.items
    print(f"per-item overhead, identity map over {n:,} ints", flush=True)
    started = perf()
    for x in range(n):
        sink(identity(x))
    loop = perf() - started
    row("identity map", "local loop", f"{n / loop / 1e6:.2f} M items/s ({loop:.1f} s)")

    def flow_on(cluster: sperse.Cluster | None, executor: Any, count: int) -> float:
        flow = sperse.Flow("identity", cluster=cluster)
        done = flow.source(range(count)).map(identity).for_each(sink)
        started = perf()
        flow.run(executor=executor)
        done.result(WAIT)
        return perf() - started

    small = min(n, 1_000_000)
    took_in = flow_on(None, InProcess(), small)
    row(
        "identity map", f"in-process executor ({small:,})", f"{small / took_in / 1e6:.2f} M items/s"
    )
    note: list[str] = []
    with sperse_cluster(1) as client, cpu_note(note):
        took = flow_on(client, None, n)
    row("identity map", "Sperse flow, 1 server", f"{n / took / 1e6:.2f} M items/s ({took:.1f} s)")
    print(f"    {note[0]}")
    print(verdict("Sperse, 1 server / local loop (time)", took / loop, 3.0, higher=False))


# ---- PageRank ----------------------------------------------------------------------------


def pr_networkx(src: np.ndarray, dst: np.ndarray, n: int, tol: float) -> np.ndarray:
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
    try:
        import scipy  # noqa: F401

        ranks = nx.pagerank(g, alpha=0.85, tol=tol, max_iter=1000)
    except ImportError:
        from networkx.algorithms.link_analysis.pagerank_alg import _pagerank_python

        ranks = _pagerank_python(g, alpha=0.85, tol=tol, max_iter=1000)
    return np.array([ranks[u] for u in range(n)])


def pr_sperse(client: sperse.Cluster, src: np.ndarray, dst: np.ndarray, n: int, tol: float) -> Any:
    flow = sperse.Flow("pagerank", cluster=client)
    out = pagerank_example.pagerank(flow, src, dst, n, tol=tol)
    progress = flow.run().result(WAIT)
    (ranks,) = out.result(0)
    return ranks, len(progress.rounds)


def pr_dask(client: Any, src: np.ndarray, dst: np.ndarray, n: int, tol: float) -> Any:
    """The flow's algorithm on Dask futures: the edge blocks scattered to the workers once,
    then per round one task per block (the block's contributions) and a sum."""
    outdegree = np.bincount(src, minlength=n)
    dangling = outdegree == 0
    share = 1.0 / outdegree[src]
    step = pagerank_example.BLOCK
    blocks = [
        (src[i : i + step], dst[i : i + step], share[i : i + step])
        for i in range(0, len(src), step)
    ]
    futures = client.scatter(blocks)

    def contributions(block: Any, ranks: np.ndarray) -> np.ndarray:
        s, d, w = block
        return np.bincount(d, weights=ranks[s] * w, minlength=n)

    def total(*parts: np.ndarray) -> np.ndarray:
        return np.sum(parts, axis=0)  # type: ignore[no-any-return]

    ranks = np.full(n, 1.0 / n)
    for rounds in range(1, 1001):
        r = client.scatter(ranks, broadcast=True)
        parts = [client.submit(contributions, b, r, pure=False) for b in futures]
        given = client.submit(total, *parts, pure=False).result()
        new = 0.85 * (given + ranks[dangling].sum() / n) + 0.15 / n
        moved = np.abs(new - ranks).sum()
        ranks = new
        if moved < n * tol:
            return ranks, rounds
    return ranks, 1000


def pagerank(args: argparse.Namespace) -> None:
    n, m, tol = args.nodes, args.edges, 1e-10
    src, dst = make_graph(n, m)
    print(f"PageRank to tol={tol:g}, {n:,} nodes, {len(src):,} edges", flush=True)
    times: dict[str, float] = {}
    expected = None
    if not args.skip_networkx:
        started = perf()
        expected = pr_networkx(src, dst, n, tol)
        times["networkx"] = perf() - started
        row("PageRank", "networkx (one process)", f"{times['networkx']:.1f} s")

    def check(name: str, ranks: Any, rounds: int, took: float) -> None:
        error = float(np.abs(np.asarray(ranks) - expected).max()) if expected is not None else 0.0
        ok = error < 1e-9
        times[name] = took if ok else float("nan")
        what = f"{took:.1f} s, {rounds} rounds" + ("" if ok else f", WRONG (off by {error:.2g})")
        row("PageRank", name, what)

    note: list[str] = []
    with sperse_cluster(2) as client:
        started = perf()
        with cpu_note(note):
            ranks, rounds = pr_sperse(client, src, dst, n, tol)
        check("Sperse flow, 2 servers", ranks, rounds, perf() - started)
        print(f"    {note[0]}")
    if args.skip_dask or not installed("dask.distributed"):
        print("  Dask: skipped (not installed, or --skip-dask)")
    else:
        with dask_client() as client:
            started = perf()
            ranks, rounds = pr_dask(client, src, dst, n, tol)
            check("Dask futures, 2 workers", ranks, rounds, perf() - started)
    ours = times.get("Sperse flow, 2 servers")
    if ours:
        for peer in ("networkx", "Dask futures, 2 workers"):
            if peer in times:
                print(verdict(f"{peer} time / Sperse's", times[peer] / ours, 1.0))


# ---- Collatz -----------------------------------------------------------------------------


def collatz(args: argparse.Namespace) -> None:
    upto = args.upto
    print(f"Collatz steps of 1..{upto:,}, per-item iteration", flush=True)
    started = perf()
    expected = {}
    for n in range(1, upto + 1):
        x, k = n, 0
        while x != 1:
            x = x // 2 if x % 2 == 0 else 3 * x + 1
            k += 1
        expected[n] = k
    loop = perf() - started
    row("Collatz", "plain loop", f"{upto / loop / 1e3:.0f} k items/s ({loop:.1f} s)")
    with sperse_cluster(2) as client:
        for steps in (16, 128):
            flow = sperse.Flow("collatz", cluster=client)
            out = collatz_example.collatz(flow, upto, steps)
            note: list[str] = []
            started = perf()
            with cpu_note(note):
                progress = flow.run().result(WAIT)
            took = perf() - started
            ok = dict(out.result(0)) == expected
            trips = progress.items.get("steps", 0)
            what = f"{upto / took / 1e3:.0f} k items/s ({took:.1f} s, {trips:,} trips)"
            row("Collatz", f"Sperse flow, 2 servers, {steps} steps/trip", what if ok else "WRONG")
            print(f"    {note[0]}")
            ratio = loop / took  # the issue sets no target here: for scale
            print(f"  Sperse ({steps} steps/trip) / plain loop (items/s): {ratio:.2f}x (no target)")


# ---- profile -----------------------------------------------------------------------------


def profile(folder: Path) -> None:
    """The word count flows in this process on this thread (one replica per operator,
    batches crossing stages pickled as on servers), under cProfile."""
    for per_word in (False, True):
        flow = sperse.Flow("wc")
        if per_word:
            out = (
                flow.read_lines(folder)
                .flat_map(str.split)
                .key_by(lambda w: w)
                .fold(0, lambda n, w: n + 1, combine=operator.add)
                .collect()
            )
        else:
            out = wordcount_example.word_count(flow, folder)
        del out  # its Pending is not settled: the executor runs here, on this thread
        executor = LocalExecutor(physical(flow.plan, 1), lambda settle: None, check_pickle=True)
        profiler = cProfile.Profile()
        profiler.enable()
        executor.run()
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(14)
        print(f"--- word count {'per word' if per_word else '(the example)'}, in process")
        print("\n".join(text.getvalue().splitlines()[:34]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: a tenth of the sizes")
    p.add_argument("--mb", type=float, default=None, help="MB of text to count (200)")
    p.add_argument("--items", type=int, default=None, help="ints for the identity map (10 M)")
    p.add_argument("--nodes", type=int, default=None, help="PageRank's nodes (100 k)")
    p.add_argument("--edges", type=int, default=None, help="PageRank's edges (1 M)")
    p.add_argument("--upto", type=int, default=None, help="Collatz of 1..N (1 M)")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="word count: runs of the loop, the flow and Dask, their medians compared (3)",
    )
    p.add_argument("--only", choices=["wordcount", "identity", "pagerank", "collatz"])
    p.add_argument("--skip-dask", action="store_true")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--skip-networkx", action="store_true")
    p.add_argument("--data", type=Path, help="keep the generated text here (reused if there)")
    p.add_argument("--profile", action="store_true", help="word count in process, cProfile")
    args = p.parse_args()
    scale = 10 if args.quick else 1
    args.mb = args.mb or 200 / scale
    args.items = args.items or 10_000_000 // scale
    args.nodes = args.nodes or 100_000 // scale
    args.edges = args.edges or 1_000_000 // scale
    args.upto = args.upto or 1_000_000 // scale
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    print(f"bench/flows.py on {os.cpu_count()} cores, {load()} at the start", flush=True)
    byte_compile()
    with contextlib.ExitStack() as stack:
        folder = args.data
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.only in (None, "wordcount") or args.profile:
            folder.mkdir(parents=True, exist_ok=True)
            if not any(folder.iterdir()):
                started = perf()
                make_text(folder, args.mb)
                print(f"(generated {args.mb:g} MB of text in {perf() - started:.1f} s)")
        if args.profile:
            profile(folder)
            return
        if args.only in (None, "wordcount"):
            word_count(args, folder)
        if args.only in (None, "identity"):
            per_item(args)
        if args.only in (None, "pagerank"):
            pagerank(args)
        if args.only in (None, "collatz"):
            collatz(args)
    print(f"{load()} at the end")


if __name__ == "__main__":
    main()
