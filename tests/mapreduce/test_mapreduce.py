"""``sperse.map``, ``sperse.reduce`` and ``sperse.mapreduce`` (DESIGN §4).

Correctness runs on every real backend (``cluster`` from conftest). Placement across several
servers, locality of remote combines and the progress bar are checked on ``ManyServers``, an
in-memory backend with several servers that runs each call at once on the caller's thread.
"""

from __future__ import annotations

import io
import itertools
import operator
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

import sperse
import sperse._cluster.mapreduce as mr
from sperse._cluster import chunks as mrchunks
from sperse._cluster import tracking
from sperse._cluster.pending import Pending
from sperse._core import (
    CallTask,
    Done,
    EventSink,
    Failed,
    PickledFunction,
    ServerInfo,
    Started,
    TaskSpec,
)
from sperse._core.routing import Busy, Router
from sperse._exec.runner import _function, encode_error
from sperse._serialize import RemoteRef, RemoteValue

WAIT = 30.0  # a deadline, never a delay


def square(x: int) -> int:
    return x * x


def inverse(x: float) -> float:
    return 1 / x


def words(line: str) -> Counter[str]:
    return Counter(line.split())


def merge_words(a: Counter[str], b: Counter[str]) -> Counter[str]:
    return a + b


def total_of(values: list[int]) -> int:
    return sum(values)


def identity(x: Any) -> Any:
    return x


def refuse_b(a: str, b: str) -> str:
    if b == "b":
        raise ValueError("no b")
    return a + b


# ---- every real backend ---------------------------------------------------------------------


@pytest.fixture
def real(cluster: sperse.Cluster) -> Iterator[sperse.Cluster]:
    assert sperse.current() is cluster
    yield cluster


@pytest.mark.parametrize(
    ("count", "chunksize"),
    [(100, None), (0, None), (1, None), (3, 1), (5, 2), (7, 100), (37, None)],
)
def test_map_keeps_input_order(real: sperse.Cluster, count: int, chunksize: int | None) -> None:
    result = mr.map(square, range(count), chunksize=chunksize)
    assert isinstance(result, sperse.Pending)
    assert result.result(timeout=WAIT) == [x * x for x in range(count)]
    assert len(result) == count
    assert list(result) == [x * x for x in range(count)]


def test_results_kept_on_the_server_are_fetched(real: sperse.Cluster) -> None:
    # 1.2 MB per chunk: on the server backend, above the inline limit, the chunks stay there.
    result = mr.map(np.ones, [150_000, 3, 150_001], chunksize=1)
    arrays = result.result(timeout=WAIT)
    assert [a.shape for a in arrays] == [(150_000,), (3,), (150_001,)]
    assert [a.shape for a in result] == [(150_000,), (3,), (150_001,)]
    assert result.result(timeout=0)[1].tolist() == [1.0, 1.0, 1.0]


def test_map_of_nothing_is_done_at_once(real: sperse.Cluster) -> None:
    result = mr.map(square, [])
    assert result.done() and result.chunks == [] and result.value() == []


def test_more_chunks_than_workers_fit_one_item_each(real: sperse.Cluster) -> None:
    # 2 workers x 4 chunks each > 3 items: one item per chunk.
    result = mr.map(square, [4, 5, 6])
    assert len(result.chunks) == 3
    assert result.result(timeout=WAIT) == [16, 25, 36]


def test_map_over_a_generator_and_a_lambda(real: sperse.Cluster) -> None:
    squares = (x for x in range(10))
    assert mr.map(lambda x: x + 1, squares).result(timeout=WAIT) == list(range(1, 11))


def test_map_over_a_numpy_array(real: sperse.Cluster) -> None:
    data = np.arange(1000, dtype=np.float64).reshape(250, 4)
    rows = mr.map(np.sum, data, chunksize=60).result(timeout=WAIT)
    assert rows == [float(r.sum()) for r in data]


def test_as_completed_yields_every_index_once(real: sperse.Cluster) -> None:
    pairs = list(mr.map(square, range(20), chunksize=3).as_completed(timeout=WAIT))
    assert sorted(pairs) == [(i, i * i) for i in range(20)]


def test_an_error_names_the_item(real: sperse.Cluster) -> None:
    result = mr.map(inverse, [1, 2, 4, 0, 5], chunksize=2)
    with pytest.raises(sperse.RemoteError) as info:
        result.result(timeout=WAIT)
    error = info.value
    assert str(error).startswith("map(inverse) item 3 (0): ZeroDivisionError: division by zero")
    assert error.type_name == "ZeroDivisionError"
    assert "return 1 / x" in error.remote_traceback
    assert "apply_chunk" not in error.remote_traceback  # the user's frames only
    assert isinstance(result.chunks[1].exception(WAIT), sperse.RemoteError)
    assert result.chunks[0].result(WAIT) == [1.0, 0.5]


def test_a_map_result_is_an_argument_like_any_pending(real: sperse.Cluster) -> None:
    # A Pending where a value is expected: RemoteFunction's signature does not say it may be.
    total = sperse.remote(total_of)(mr.map(square, range(10)))  # type: ignore[arg-type]
    assert total.result(timeout=WAIT) == 285


def test_a_remote_function_brings_its_retries_and_placement(real: sperse.Cluster) -> None:
    f = sperse.remote(retries=1)(square)
    assert mr.map(f, [1, 2]).result(timeout=WAIT) == [1, 4]
    with pytest.raises(sperse.NoMatchingServer, match=r"map\(square\): no server matches \[tpu\]"):
        mr.map(f.options(on="tpu"), [1, 2])


def test_no_matching_server_fails_at_once(real: sperse.Cluster) -> None:
    with pytest.raises(sperse.NoMatchingServer, match=r"\[gpu & fast\]"):
        mr.map(square, [1], on="gpu & fast")


def test_a_function_that_cannot_be_sent_fails_at_once(real: sperse.Cluster) -> None:
    lock = threading.Lock()
    with pytest.raises(sperse.SerializationError, match="map"):
        mr.map(lambda x: (lock, x), [1])


def test_reduce_over_100_pendings(real: sperse.Cluster) -> None:
    f = sperse.remote(identity)
    total = mr.reduce(operator.add, [f(i) for i in range(100)])
    assert isinstance(total, sperse.Pending)
    assert total.result(timeout=WAIT) == sum(range(100))


def test_reduce_keeps_order_for_an_associative_op(real: sperse.Cluster) -> None:
    f = sperse.remote(identity)
    letters = "abcdefghijklmnopqrstuvwxyz"
    joined = mr.reduce(operator.add, [f(c) for c in letters])
    assert joined.result(timeout=WAIT) == letters


def test_reduce_mixes_pendings_and_values_and_takes_an_initial(real: sperse.Cluster) -> None:
    f = sperse.remote(identity)
    assert mr.reduce(operator.add, [f([1]), [2], f([3])], initial=[0]).result(WAIT) == [0, 1, 2, 3]
    assert mr.reduce(operator.add, [], initial=5).result(WAIT) == 5
    with pytest.raises(TypeError, match="empty sequence with no initial value"):
        mr.reduce(operator.add, [])


def test_reduce_fails_with_a_failed_input(real: sperse.Cluster) -> None:
    f = sperse.remote(inverse)
    total = mr.reduce(operator.add, [f(1), f(0), f(2)])
    with pytest.raises(sperse.RemoteError, match="ZeroDivisionError"):
        total.result(timeout=WAIT)


def test_a_local_op_runs_on_the_user_thread(real: sperse.Cluster) -> None:
    threads: set[int] = set()

    def add(a: int, b: int) -> int:
        threads.add(threading.get_ident())
        return a + b

    f = sperse.remote(identity)
    assert mr.reduce(add, [f(i) for i in range(8)]).result(timeout=WAIT) == 28
    assert threads == {threading.get_ident()}


def test_a_local_op_that_raises_fails_the_reduction(real: sperse.Cluster) -> None:
    f = sperse.remote(identity)
    with pytest.raises(ValueError, match="no b"):
        mr.reduce(refuse_b, [f("a"), f("b")]).result(timeout=WAIT)


def test_a_remote_op_runs_remotely(real: sperse.Cluster) -> None:
    pid = sperse.remote(lambda a, b: a + b)
    assert mr.reduce(pid, [1, 2, 3]).result(timeout=WAIT) == 6


def test_mapreduce_word_count(real: sperse.Cluster) -> None:
    lines = ["the cat sat", "on the mat", "the end"] * 20
    counts = mr.mapreduce(words, lines, merge_words, chunksize=7)
    assert isinstance(counts, sperse.Pending)
    assert counts.result(timeout=WAIT) == Counter(" ".join(lines).split())


def test_mapreduce_of_nothing(real: sperse.Cluster) -> None:
    no_lines: list[str] = []
    nothing = mr.mapreduce(words, no_lines, merge_words, initial=Counter[str]())
    assert nothing.result(WAIT) == Counter()
    with pytest.raises(TypeError, match="no items"):
        mr.mapreduce(words, no_lines, merge_words)


def test_mapreduce_errors_name_the_item(real: sperse.Cluster) -> None:
    with pytest.raises(sperse.RemoteError, match=r"^mapreduce\(inverse\) item 4 \(0\): "):
        mr.mapreduce(inverse, [1, 2, 3, 4, 0], operator.add, chunksize=5).result(WAIT)
    with pytest.raises(sperse.RemoteError, match=r"combine at item 1 \('b'\): ValueError: no b"):
        mr.mapreduce(identity, ["a", "b"], refuse_b, chunksize=2).result(WAIT)


@pytest.fixture(scope="module")
def server_cluster() -> Iterator[sperse.Cluster]:
    """A real server: the only backend that keeps large values where they were made."""
    from sperse._backends.sperse import EmbeddedServer, SperseBackend

    server = EmbeddedServer(workers=2)
    with sperse.Cluster(SperseBackend(server.address, token=server.token, process=server)) as c:
        yield c


def test_large_values_are_combined_where_they_are_held(server_cluster: sperse.Cluster) -> None:
    big = sperse.remote(lambda i: np.full(200_000, float(i)))  # 1.6 MB: kept on the server
    total = mr.reduce(np.add, [big(i) for i in range(4)])
    value = total.result(timeout=WAIT)
    assert total.remote_value is not None  # combined on the server, not brought here
    assert value.shape == (200_000,) and value[0] == 6.0


# ---- splitting --------------------------------------------------------------------------------


def test_a_numpy_array_is_split_into_views() -> None:
    data = np.arange(100.0)
    chunks = mrchunks.split(mrchunks.sliceable(data), 30)
    assert [start for start, _ in chunks] == [0, 30, 60, 90]
    assert all(np.shares_memory(chunk, data) for _, chunk in chunks)
    assert np.array_equal(np.concatenate([c for _, c in chunks]), data)


def test_sliceable_keeps_sequences_and_lists_the_rest() -> None:
    items = [1, 2, 3]
    assert mrchunks.sliceable(items) is items
    assert mrchunks.sliceable(range(3)) == range(3)
    assert mrchunks.sliceable(iter(items)) == items
    with pytest.raises(TypeError, match="0-d"):
        mrchunks.sliceable(np.array(1.0))


@pytest.mark.parametrize(
    ("count", "workers", "expected"),
    [(0, 2, 1), (1, 2, 1), (8, 2, 1), (9, 2, 2), (100, 2, 13), (100, 0, 25), (10**6, 64, 3907)],
)
def test_default_chunksize(count: int, workers: int, expected: int) -> None:
    assert mrchunks.default_chunksize(count, workers) == expected


def test_bad_chunksize() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        mrchunks.split([1], 0)


def test_spread_follows_worker_counts_interleaved() -> None:
    servers = [ServerInfo("a", workers=1), ServerInfo("b", workers=1), ServerInfo("c", workers=2)]
    names = mrchunks.spread(servers, 8)
    assert Counter(names) == {"a": 2, "b": 2, "c": 4}
    assert names[:4] == names[4:]  # one period, repeated
    assert all(x != y or x == "c" for x, y in itertools.pairwise(names))
    assert mrchunks.spread([], 3) == [] and mrchunks.spread(servers, 0) == []


# ---- several servers, in memory -----------------------------------------------------------


class ManyServers:
    """A backend of several servers that runs each call at once, on the caller's thread.

    A result of more than ``keep_over`` bytes stays "on" its server: the caller gets a
    ``RemoteValue`` naming it, as from a real server. ``specs`` records what was sent. With
    ``hold``, calls wait in ``held`` until ``run_held()``.
    """

    def __init__(
        self, servers: Sequence[ServerInfo], keep_over: int | None = None, hold: bool = False
    ) -> None:
        self._servers = list(servers)
        self._keep_over = keep_over
        self._hold = hold
        self.held: list[TaskSpec] = []
        self._router = Router()
        self._store: dict[str, Any] = {}
        self._ids = itertools.count()
        self._sink: EventSink | None = None
        self.specs: list[TaskSpec] = []

    def start(self, sink: EventSink) -> None:
        self._sink = sink

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        if self._hold:
            self.held.extend(specs)
        else:
            self._run(specs)

    def run_held(self) -> None:
        held, self.held = self.held, []
        self._run(held)

    def _run(self, specs: Sequence[TaskSpec]) -> None:
        assert self._sink is not None
        for spec in specs:
            self.specs.append(spec)
            chosen = self._router.pick_server(spec.placement, self._servers)
            assert not isinstance(chosen, Busy)
            where = chosen.name
            work = spec.work
            assert isinstance(work, CallTask)
            fn = _function(work.fn) if isinstance(work.fn, PickledFunction) else work.fn
            args = [
                self._store[a.ref.object_id] if isinstance(a, RemoteValue) else a for a in work.args
            ]
            self._sink(Started(spec.task_id, where))
            try:
                value = fn(*args, **work.kwargs)
            except Exception as exc:
                self._sink(Failed(spec.task_id, where, encode_error(exc)))
                continue
            if self._keep_over is not None and len(value) > self._keep_over:
                object_id = f"o{next(self._ids)}"
                self._store[object_id] = value
                ref = RemoteRef(object_id, where, type(value).__name__, len(value), "...")
                value = RemoteValue(ref, lambda r, _: self._store[r.object_id])
            self._sink(Done(spec.task_id, where, value))

    def cancel(self, task_id: str) -> None:
        pass

    def release(self, object_ids: Iterable[str]) -> None:
        pass

    def servers(self) -> list[ServerInfo]:
        return list(self._servers)

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


THREE = [
    ServerInfo("a", frozenset({"gpu"}), workers=1),
    ServerInfo("b", workers=1),
    ServerInfo("c", frozenset({"gpu"}), workers=2),
]


@pytest.fixture
def many() -> Iterator[ManyServers]:
    backend = ManyServers(THREE)
    with sperse.Cluster(backend):
        yield backend


def pins(specs: list[TaskSpec]) -> list[str | None]:
    return [spec.placement.pin for spec in specs]


def test_chunks_are_pinned_in_turn_by_workers(many: ManyServers) -> None:
    result = mr.map(square, range(100))
    assert result.result(timeout=WAIT) == [x * x for x in range(100)]
    # 4 workers x 4 chunks per worker: chunks of ceil(100 / 16) = 7 items.
    assert len(many.specs) == 15
    assert Counter(pins(many.specs)) == {"a": 4, "b": 4, "c": 7}
    assert [r.where for r in result.chunks] == pins(many.specs)


def test_chunks_go_only_to_servers_that_match(many: ManyServers) -> None:
    mr.map(square, range(12), on="gpu", chunksize=1).result(timeout=WAIT)
    assert Counter(pins(many.specs)) == {"a": 4, "c": 8}
    assert all(str(spec.placement.tags) == "gpu" for spec in many.specs)


def test_a_pin_sends_every_chunk_there(many: ManyServers) -> None:
    mr.map(square, range(12), on="@b", chunksize=1).result(timeout=WAIT)
    assert set(pins(many.specs)) == {"b"}


def test_numpy_chunks_are_views_of_the_input(many: ManyServers) -> None:
    data = np.arange(1000.0)
    assert mr.map(float, data, chunksize=100).result(timeout=WAIT) == data.tolist()
    sent = [spec.work.args[0] for spec in many.specs if isinstance(spec.work, CallTask)]
    assert len(sent) == 10 and all(np.shares_memory(chunk, data) for chunk in sent)


def test_held_values_are_combined_on_the_server_holding_more() -> None:
    backend = ManyServers(THREE, keep_over=50)
    with sperse.Cluster(backend):
        make = sperse.remote(lambda n: b"x" * n)
        sizes = {"a": (100, 60), "b": (300, 70), "c": (80, 90)}
        inputs = [make.options(on=f"@{name}")(n) for name, ns in sizes.items() for n in ns]
        assert all(isinstance(p.remote_value, RemoteValue) for p in inputs)
        backend.specs.clear()
        total = mr.reduce(operator.add, inputs)
        assert total.result(timeout=WAIT) == b"x" * 700
    assert len(backend.specs) == 5  # six values, five combines, all remote
    for spec in backend.specs:
        assert isinstance(spec.work, CallTask)
        left, right = spec.work.args
        holder = max((left, right), key=lambda v: v.ref.size)
        assert spec.placement.pin == holder.ref.server


def test_a_failed_chunk_that_settles_first_fails_the_map(many: ManyServers) -> None:
    # Every chunk is settled before the MapResult listens: the failure, then the successes.
    result = mr.map(inverse, [0, 1, 2], chunksize=1)
    with pytest.raises(sperse.RemoteError, match=r"^map\(inverse\) item 0 \(0\)"):
        result.result(timeout=WAIT)
    assert result.chunks[2].result(WAIT) == [0.5]


def test_a_remote_combine_that_cannot_be_sent_fails_the_reduction(many: ManyServers) -> None:
    add = sperse.remote(on="tpu")(operator.add)
    with pytest.raises(sperse.NoMatchingServer, match=r"reduce\(add\): no server matches"):
        mr.reduce(add, [1, 2]).result(timeout=WAIT)


def test_cancel_stops_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ManyServers(THREE, hold=True)
    with sperse.Cluster(backend):
        result = mr.map(square, range(6), chunksize=2)
        assert result.cancel()
        assert all(chunk.done() for chunk in result.chunks)
        with pytest.raises(sperse.TaskCancelled):
            result.result(timeout=WAIT)
        assert not result.cancel()


def test_values_held_here_are_combined_here_in_order(many: ManyServers) -> None:
    cluster = sperse.current()
    inputs: list[Pending[str]] = [Pending(cluster) for _ in range(5)]
    joined = mr.reduce(operator.add, inputs)
    for i in (3, 1, 4, 0, 2):  # arrive out of order
        inputs[i]._settle("abcde"[i])
    assert joined.result(timeout=WAIT) == "abcde"
    assert many.specs == []  # no task: every combine ran here


# ---- the progress bar ---------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_nothing_is_printed_when_stdout_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert not sys.stdout.isatty()
    backend = ManyServers(THREE, hold=True)
    with sperse.Cluster(backend) as cluster:
        squares = mr.map(square, range(10), progress=True)
        total = mr.mapreduce(square, range(10), operator.add, progress=True)
        cluster.post(backend.run_held)
        assert squares.result(timeout=WAIT) == [x * x for x in range(10)]
        assert total.result(timeout=WAIT) == 285
    assert capsys.readouterr() == ("", "")


def test_nothing_is_printed_on_a_real_backend_either(
    real: sperse.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    mr.map(square, range(50), progress=True).result(timeout=WAIT)
    mr.reduce(operator.add, [sperse.remote(identity)(i) for i in range(5)], progress=True).result(
        timeout=WAIT
    )
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("job", ["map", "mapreduce", "iterate", "as_completed"])
def test_a_bar_is_shown_in_a_terminal(monkeypatch: pytest.MonkeyPatch, job: str) -> None:
    """Wherever the user waits on a long map: result(), iterating it, as_completed()."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    backend = ManyServers(THREE, hold=True)
    with sperse.Cluster(backend) as cluster:
        result: mr.Tracked[Any]
        if job == "mapreduce":
            result = mr.mapreduce(square, [1, 2, 3], operator.add, chunksize=1, progress=True)
        else:
            result = mr.map(square, [1, 2, 3], chunksize=1, progress=True)
        assert not result.done() and result.progress == (0, 3)
        cluster.post(backend.run_held)  # the work runs while we wait
        if job == "iterate":
            assert list(result) == [1, 4, 9]
        elif job == "as_completed":
            assert sorted(result.as_completed(timeout=WAIT)) == [(0, 1), (1, 4), (2, 9)]
        else:
            assert result.result(timeout=WAIT) in ([1, 4, 9], 14)
        assert result.progress == (3, 3)
    name = "mapreduce" if job == "mapreduce" else "map"
    assert f"{name}(square)" in terminal.getvalue()
    assert "3/3" in terminal.getvalue()


def test_no_bar_for_work_under_a_second(many: ManyServers, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert mr.map(square, range(10)).result(timeout=WAIT) == [x * x for x in range(10)]
    assert terminal.getvalue() == ""


@pytest.mark.parametrize(("elapsed", "shown"), [(0.5, False), (1.5, True)])
def test_the_bar_appears_after_a_second_of_work(
    many: ManyServers, monkeypatch: pytest.MonkeyPatch, elapsed: float, shown: bool
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    cluster = sperse.current()
    work: Pending[int] = Pending(cluster)
    tracker = tracking.Tracker("job", 1, None, started=100.0, wake=cluster.wake)

    def finish() -> None:
        tracker.add(1)
        work._settle(1)

    cluster.post(finish)
    clock: Callable[[], float] = lambda: 100.0 + elapsed  # noqa: E731
    assert tracking.wait_with_progress(cluster, work.done, tracker, WAIT, clock=clock)
    assert ("job" in terminal.getvalue()) is shown
