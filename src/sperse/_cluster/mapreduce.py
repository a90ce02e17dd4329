"""``sperse.map``, ``sperse.reduce`` and ``sperse.mapreduce``: data parallelism on the cluster.

Built only on ``submit_call`` and ``Pending``, so it runs on every backend.

- ``map(f, items)`` splits ``items`` into chunks (slices: a numpy array's chunks are views),
  sends one task per chunk that applies ``f`` to each item, and returns a ``MapResult`` at
  once: a ``Pending`` of the list of results in input order, which can also be iterated in
  order or ``as_completed()`` as chunks arrive. With several eligible servers, chunks are
  pinned to them in turn, in proportion to their workers, unless the backend spreads tasks
  itself (``balances_load``: the many-servers backend sends each chunk where there is room).
- ``reduce(op, pendings)`` combines values pairwise as they arrive: a tree in which only
  neighbours are combined, so ``op`` needs to be associative but not commutative. Two values
  held on servers are combined there (on the server holding more of their bytes); values
  held here are combined here, on the user's thread.
- ``mapreduce(f, items, combine)`` reduces each chunk on its server (``f`` then ``combine``
  over the chunk's items), then merges the chunks' partial results with ``reduce``.

Invariants:

- An exception raised by ``f`` (or ``combine``) on an item is caught by the chunk's task and
  sent back as data (``_ItemFailed``), so the failure names the item's index: the chunk's
  Pending, and with it the whole map, fails with ``RemoteError("map(f) item 7 (0): ...")``.
- User code on the client (a local ``op``) runs only on the user's thread (DESIGN.md §2
  rule 6): the backend's thread only records outcomes and posts work.
- A progress bar (rich) is shown only while someone waits (``result()``, iterating a map,
  ``as_completed``), only when ``sys.stdout`` is a terminal, and only once the work has
  taken more than a second (or at once with ``progress=True``); ``progress=False`` never
  shows it. Nothing is printed otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import reprlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import current
from sperse._cluster.pending import Pending, submit_call
from sperse._cluster.remote import RemoteFunction
from sperse._core import BalancesLoad, ErrorInfo, PickledFunction, ServerInfo
from sperse._core.routing import Busy, Router, check_placement, eligible, input_locations
from sperse._exec.runner import encode_error
from sperse._lang.placement import Placement, placement_from_options
from sperse._serialize import RemoteValue, dumps
from sperse.errors import SperseError

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["MapResult", "Reduction", "Tracked", "map", "mapreduce", "reduce"]

T = TypeVar("T")
U = TypeVar("U")

PROGRESS_DELAY: Final = 1.0  # seconds of work before a bar appears
CHUNKS_PER_WORKER: Final = 4

_UNSET: Any = object()


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxstring = short.maxother = 40
    short.maxlist = short.maxtuple = short.maxdict = 4
    return short


_ITEM_REPR: Final = _short_repr()


# ---- on the worker --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ItemFailed:
    """What a chunk's task returns instead of raising: which item failed, and how."""

    index: int
    item: str  # a short repr
    stage: str  # "" for f, "combine" for mapreduce's combine
    error: ErrorInfo


def _failure(index: int, item: object, stage: str, exc: Exception) -> _ItemFailed:
    try:
        text = _ITEM_REPR.repr(item)
    except Exception:
        text = f"<{type(item).__name__}>"
    return _ItemFailed(index, text, stage, encode_error(exc, skip_frames=1))


def _apply_chunk(f: Callable[[Any], Any], chunk: Iterable[Any], start: int) -> Any:
    """``[f(item) for item in chunk]``, or ``_ItemFailed`` for the first item that raises."""
    out = []
    for offset, item in enumerate(chunk):
        try:
            out.append(f(item))
        except Exception as exc:
            return _failure(start + offset, item, "", exc)
    return out


def _reduce_chunk(
    f: Callable[[Any], Any], combine: Callable[[Any, Any], Any], chunk: Iterable[Any], start: int
) -> Any:
    """``combine`` over ``f`` of each item, left to right, or ``_ItemFailed``."""
    acc: Any = _UNSET
    for offset, item in enumerate(chunk):
        try:
            value = f(item)
        except Exception as exc:
            return _failure(start + offset, item, "", exc)
        if acc is _UNSET:
            acc = value
            continue
        try:
            acc = combine(acc, value)
        except Exception as exc:
            return _failure(start + offset, item, "combine", exc)
    return acc


# ---- splitting ------------------------------------------------------------------------------


def sliceable(items: Iterable[T]) -> Sequence[T]:
    """``items`` as something sliced without copying elements: itself for lists, tuples,
    ranges, strings and numpy arrays (slices are views), else a list of it."""
    if isinstance(items, list | tuple | range | str | bytes):
        return items
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(items, numpy.ndarray):
        if items.ndim == 0:
            raise TypeError("cannot map over a 0-d numpy array: it has no items")
        return items  # type: ignore[no-any-return]
    return list(items)


def split(items: Sequence[T], chunksize: int) -> list[tuple[int, Sequence[T]]]:
    """``(start, items[start:start + chunksize])`` for each chunk, in order."""
    if chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, got {chunksize}")
    return [(start, items[start : start + chunksize]) for start in range(0, len(items), chunksize)]


def default_chunksize(count: int, workers: int) -> int:
    """About ``CHUNKS_PER_WORKER`` chunks per worker, at least one item each."""
    return max(1, math.ceil(count / (CHUNKS_PER_WORKER * max(1, workers))))


def spread(servers: Sequence[ServerInfo], count: int) -> list[str]:
    """Server names for ``count`` chunks: each server in turn, as often as it has workers.

    Smooth weighted round robin (as nginx does): over one period of ``sum(workers)`` picks,
    each server gets its share, interleaved rather than in runs.
    """
    if not servers or count <= 0:
        return []
    weights = [max(1, s.workers) for s in servers]
    total = sum(weights)
    current_weight = [0] * len(servers)
    period: list[str] = []
    for _ in range(min(total, count)):
        for i, weight in enumerate(weights):
            current_weight[i] += weight
        best = max(range(len(servers)), key=current_weight.__getitem__)
        current_weight[best] -= total
        period.append(servers[best].name)
    return [period[i % len(period)] for i in range(count)]


# ---- progress -------------------------------------------------------------------------------


class _Tracker:
    """How much of a job is done, counted on whatever thread learns it."""

    __slots__ = ("completed", "description", "lock", "show", "started", "total")

    def __init__(self, description: str, total: int, show: bool | None, started: float) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self.show = show
        self.started = started
        self.lock = threading.Lock()

    def add(self, amount: int) -> None:
        with self.lock:
            self.completed += amount


def _count(tracker: _Tracker, amount: int, _: object) -> None:
    tracker.add(amount)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Bar:
    """A rich progress bar on ``stream`` (imported only when one is shown)."""

    def __init__(self, stream: Any, tracker: _Tracker) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress: Progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream, force_terminal=True),
        )
        self._task = self._progress.add_task(tracker.description, total=tracker.total)
        self._progress.start()

    def update(self, completed: int) -> None:
        self._progress.update(self._task, completed=completed)

    def close(self, completed: int) -> None:
        self._progress.update(self._task, completed=completed, refresh=True)
        self._progress.stop()


def wait_with_progress(
    cluster: Cluster,
    finished: Callable[[], bool],
    tracker: _Tracker,
    timeout: float | None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Run the user's queue until ``finished()``, with a bar if wanted; False on timeout."""
    stream = sys.stdout
    wanted = tracker.show is not False and _is_terminal(stream)
    delay = 0.0 if tracker.show else PROGRESS_DELAY
    deadline = None if timeout is None else clock() + timeout
    bar: _Bar | None = None
    try:
        while not finished():
            now = clock()
            if wanted and bar is None and now - tracker.started >= delay:
                bar = _Bar(stream, tracker)
            if bar is not None:
                bar.update(tracker.completed)
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                cluster.drain()  # what is queued already may finish it, as result(0) allows
                return finished()
            if wanted and bar is None:  # wake up when the bar is due
                due = tracker.started + delay - now
                remaining = due if remaining is None else min(remaining, due)
            seen = tracker.completed

            def changed(seen: int = seen) -> bool:
                return finished() or tracker.completed != seen

            cluster.run_until(changed, remaining)
        return True
    finally:
        if bar is not None:
            bar.close(tracker.completed)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


# ---- chunks on the client -------------------------------------------------------------------


def _ship(fn: Callable[..., Any], what: str) -> PickledFunction:
    """Pickle once for every chunk; workers cache the function by its digest."""
    data = dumps(fn, what=what)
    return PickledFunction(hashlib.sha256(data).hexdigest(), data)


def _name(fn: object) -> str:
    if isinstance(fn, RemoteFunction):
        fn = fn._fn
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def _parts(
    f: Callable[..., Any] | RemoteFunction[Any, Any], on: str | Placement | None
) -> tuple[Callable[..., Any], Placement, int]:
    """The plain function, placement and retries of ``f``; ``on`` overrides a placement."""
    if isinstance(f, RemoteFunction):
        fn, placement, retries = f._fn, f.placement, f.retries
    else:
        fn, placement, retries = f, Placement(), 0
    if isinstance(on, Placement):
        placement = on
    elif on:
        placement = placement_from_options(on)
    return fn, placement, retries


def _chunk_pending(cluster: Cluster, raw: Pending[Any], what: str) -> Pending[Any]:
    """A Pending of ``raw``'s value that fails, naming the item, when the task sent back
    ``_ItemFailed``. Cancelling it cancels the task."""
    out: Pending[Any] = Pending(cluster, label=raw.label)
    out._task_id = raw._task_id

    def settled(done: Pending[Any]) -> None:
        out.where = done.where
        out._started_at = done._started_at
        if done._error is not None:
            out._settle(error=done._error)
            return
        value = done._value
        if isinstance(value, _ItemFailed):
            stage = f" {value.stage} at" if value.stage else ""
            label = f"{what}{stage} item {value.index} ({value.item})"
            out._settle(error=value.error.to_exception(label, done.where))
            return
        out._settle(value)

    raw._on_settle(settled)
    return out


def _send_chunks(
    cluster: Cluster,
    worker_fn: Callable[..., Any],
    data: Sequence[Any],
    chunksize: int | None,
    placement: Placement,
    retries: int,
    what: str,
) -> list[tuple[int, int, Pending[Any]]]:
    """One task per chunk; returns ``(start, length, pending)`` for each, in order."""
    servers = cluster.servers()
    fits = eligible(placement, servers)
    if not fits:
        check_placement(placement, servers, what)  # raises if a constraint matches nothing
    workers = sum(max(1, s.workers) for s in fits) or os.cpu_count() or 1
    size = default_chunksize(len(data), workers) if chunksize is None else chunksize
    chunks = split(data, size)
    if not chunks:
        return []
    shipped = _ship(worker_fn, what)
    # A backend that spreads tasks itself (many servers: it sends each where there is room)
    # gets them unpinned, so a server that joins or dies mid-map changes where they go.
    balances = isinstance(cluster.backend, BalancesLoad) and cluster.backend.balances_load
    spreading = len(fits) > 1 and placement.pin is None and not balances
    pins = spread(fits, len(chunks)) if spreading else None
    out = []
    for k, (start, chunk) in enumerate(chunks):
        where = placement if pins is None else replace(placement, pin=pins[k])
        label = f"{what} items {start}-{start + len(chunk) - 1}"
        raw = submit_call(
            cluster,
            shipped,
            (chunk, start),
            {},
            placement=where,
            retries=retries,
            label=label,
        )
        out.append((start, len(chunk), _chunk_pending(cluster, raw, what)))
    return out


# ---- map ------------------------------------------------------------------------------------


class Tracked(Pending[T]):
    """A Pending of many items' work (``map``, ``reduce``, ``mapreduce``): ``progress`` says
    how many items are done, and wherever the user waits on it (``result()``, iterating a
    map, ``as_completed``) a progress bar shows in a terminal (see the module doc)."""

    __slots__ = ("_tracker",)

    def __init__(self, cluster: Cluster, label: str, tracker: _Tracker) -> None:
        super().__init__(cluster, label=label)
        self._tracker = tracker

    @property
    def progress(self) -> tuple[int, int]:
        """``(items done, items in all)``, now."""
        return self._tracker.completed, self._tracker.total

    def _wait(self, finished: Callable[[], bool], timeout: float | None) -> None:
        """Wait until ``finished()`` with the bar; ``TimeoutError`` after ``timeout``."""
        if not finished() and not wait_with_progress(
            self._cluster, finished, self._tracker, timeout
        ):
            raise TimeoutError(
                f"{self!r} did not finish within {timeout} s; it is still running "
                "(call .cancel() to stop it, or wait longer)"
            )

    def result(self, timeout: float | None = None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait(self.done, timeout)
        return super().result(_remaining(deadline))


class MapResult(Tracked[list[T]]):
    """The results of ``sperse.map``: a ``Pending`` of the list of results, in input order.

    Besides everything a Pending does (``result``, ``then``, ``await``, passing it to remote
    functions), it can be iterated in input order (each value as soon as its chunk is in),
    ``as_completed()`` yields ``(index, value)`` as chunks arrive, and ``chunks`` are the
    Pendings of the chunks' tasks. ``result()`` shows a progress bar (see the module doc).
    It fails with the first chunk failure to arrive; ``cancel()`` cancels every chunk still
    running.
    """

    __slots__ = ("_chunks", "_length")

    def __init__(
        self,
        cluster: Cluster,
        chunks: list[tuple[int, int, Pending[Any]]],
        *,
        label: str,
        tracker: _Tracker,
    ) -> None:
        super().__init__(cluster, label, tracker)
        self._chunks = chunks
        self._length = sum(length for _, length, _ in chunks)
        if not chunks:
            self._settle([])
            return
        left = [len(chunks)]
        lock = threading.Lock()

        def chunk_settled(length: int, chunk: Pending[Any]) -> None:
            tracker.add(length)
            if chunk._error is not None:
                self._settle(error=chunk._error)
                return
            with lock:  # only successes count: after a failure, nothing is assembled
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._assemble()

        for _, length, chunk in chunks:
            chunk._on_settle(functools.partial(chunk_settled, length))

    def _assemble(self) -> None:
        """Every chunk is in: settle with the list, here if every chunk came back inline,
        else on the user's thread (fetching values kept on servers waits for the network).

        Runs on the backend's thread: it must not raise there.
        """
        values = [chunk._value for _, _, chunk in self._chunks]
        if not any(isinstance(v, RemoteValue) for v in values):
            out: list[Any] = []
            try:
                for v in values:
                    out.extend(v)
            except Exception as exc:  # pragma: no cover - a chunk always returns a list
                self._settle(error=exc)
                return
            self._settle(out)
            return

        def fetch_all() -> None:
            try:
                out: list[Any] = []
                for v in values:
                    out.extend(v.fetch() if isinstance(v, RemoteValue) else v)
            except Exception as exc:
                self._settle(error=exc)
                return
            self._settle(out)

        self._cluster.post(fetch_all)

    @property
    def chunks(self) -> list[Pending[Any]]:
        """The Pending of each chunk's task (a list of results), in input order."""
        return [chunk for _, _, chunk in self._chunks]

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[T]:
        """Each result in input order, as soon as its chunk has arrived."""
        for _, _, chunk in self._chunks:
            self._wait(chunk.done, None)
            yield from chunk.result()

    def as_completed(self, timeout: float | None = None) -> Iterator[tuple[int, T]]:
        """``(index, value)`` for every item, chunk by chunk as chunks finish."""
        deadline = None if timeout is None else time.monotonic() + timeout
        left = list(self._chunks)
        while left:
            self._wait(lambda: any(chunk.done() for _, _, chunk in left), _remaining(deadline))
            for entry in [e for e in left if e[2].done()]:
                left.remove(entry)
                start, _, chunk = entry
                for offset, value in enumerate(chunk.result()):
                    yield start + offset, value

    def cancel(self) -> bool:
        """Cancel every chunk still running. False if the map had already finished."""
        cancelled = super().cancel()
        for _, _, chunk in self._chunks:
            chunk.cancel()
        return cancelled

    def __repr__(self) -> str:
        if self.done():
            return super().__repr__().replace("<Pending", "<MapResult", 1)
        ready = sum(chunk.done() for _, _, chunk in self._chunks)
        return (
            f"<MapResult {self.label}: {self._tracker.completed}/{self._length} items, "
            f"{ready}/{len(self._chunks)} chunks done>"
        )


@overload
def map(
    f: RemoteFunction[[T], U],
    items: Iterable[T],
    on: str | Placement | None = None,
    chunksize: int | None = None,
    *,
    progress: bool | None = None,
) -> MapResult[U]: ...


@overload
def map(
    f: Callable[[T], U],
    items: Iterable[T],
    on: str | Placement | None = None,
    chunksize: int | None = None,
    *,
    progress: bool | None = None,
) -> MapResult[U]: ...


def map(
    f: Callable[[T], U] | RemoteFunction[[T], U],
    items: Iterable[T],
    on: str | Placement | None = None,
    chunksize: int | None = None,
    *,
    progress: bool | None = None,
) -> MapResult[U]:
    """Apply ``f`` to every item on the cluster; returns a ``MapResult`` at once.

    ``items`` is split into chunks of ``chunksize`` items (by default about four chunks per
    eligible worker), one task each; a numpy array is split into views. ``on`` constrains
    the servers as in ``@sperse.remote`` (``"gpu"``, ``"@db-1"``); a ``RemoteFunction``
    brings its own placement and retries. With several eligible servers, chunks are pinned
    to them in turn. ``progress``: None shows a bar in a terminal once the work takes over a
    second, True at once (still only in a terminal), False never.

    Raises ``NoMatchingServer`` at once if no server meets ``on``, ``SerializationError`` if
    ``f`` cannot be sent. An exception in ``f`` fails the map with ``RemoteError`` naming the
    item's index.
    """
    started = time.monotonic()
    cluster = current()
    fn, placement, retries = _parts(f, on)
    what = f"map({_name(f)})"
    data = sliceable(items)
    chunks = _send_chunks(
        cluster, functools.partial(_apply_chunk, fn), data, chunksize, placement, retries, what
    )
    tracker = _Tracker(what, len(data), progress, started)
    return MapResult(cluster, chunks, label=what, tracker=tracker)


# ---- reduce ---------------------------------------------------------------------------------


class Reduction(Tracked[T]):
    """The Pending of ``sperse.reduce`` and ``sperse.mapreduce``: a ``Tracked`` Pending,
    like a map's (``progress``, a bar while waiting in ``result()``)."""

    __slots__ = ()


class _Node:
    """One slot of the reduction, in input order: a value, or one still on its way."""

    __slots__ = ("next", "prev", "ready", "value")

    def __init__(self) -> None:
        self.prev: _Node | None = None
        self.next: _Node | None = None
        self.ready = False
        self.value: Any = None


class _Combiner:
    """``op`` for a reduction: called here on local values, sent where values are held."""

    def __init__(self, op: Callable[[Any, Any], Any] | RemoteFunction[Any, Any]) -> None:
        self.remote_only = isinstance(op, RemoteFunction)
        self.fn, self.placement, self.retries = _parts(op, None)
        self.name = _name(op)
        self._shipped: PickledFunction | None = None
        self._router = Router()
        self._lock = threading.Lock()  # combines start on the user's and the backend's thread

    def shipped(self) -> PickledFunction:
        if self._shipped is None:
            self._shipped = _ship(self.fn, f"the function of reduce({self.name})")
        return self._shipped

    def placement_for(self, cluster: Cluster, a: Any, b: Any) -> Placement:
        """``op``'s placement, pinned to the server holding most of ``a`` and ``b``."""
        locations = input_locations((a, b))
        if not locations:
            return self.placement
        servers = cluster.servers()
        try:
            with self._lock:
                chosen = self._router.pick_server(self.placement, servers, locations)
        except SperseError:
            return self.placement  # let submitting report what matches nothing
        if isinstance(chosen, Busy):
            return self.placement
        return replace(self.placement, pin=chosen.name)


class _TreeReduce:
    """Combines neighbours as soon as both are ready, until one value is left.

    Only neighbours are combined, so the result is ``op(op(x0, x1), op(x2, x3))``-like with
    the input order kept: ``op`` must be associative, need not be commutative. State changes
    under ``_lock``; combines start outside it (a submit may settle at once).
    """

    def __init__(self, cluster: Cluster, combiner: _Combiner, result: Reduction[Any]) -> None:
        self._cluster = cluster
        self._combiner = combiner
        self._result = result
        self._lock = threading.Lock()
        self._head: _Node | None = None
        self._over = False

    def start(self, inputs: list[Any]) -> None:
        nodes = [_Node() for _ in inputs]
        for left, right in itertools.pairwise(nodes):
            left.next, right.prev = right, left
        self._head = nodes[0]
        for node, item in zip(nodes, inputs, strict=True):
            if isinstance(item, Pending):
                item._on_settle(functools.partial(self._input_settled, node))
            else:
                self._ready(node, item)

    def _input_settled(self, node: _Node, pending: Pending[Any]) -> None:
        if pending._error is not None:
            self._fail(pending._error)
        else:
            self._ready(node, pending._value)

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            self._over = True
            self._head = None  # drop the values held so far
        self._result._settle(error=error)

    def _ready(self, node: _Node, value: Any) -> None:
        with self._lock:
            if self._over or self._result.done():  # failed, or cancelled
                return
            node.ready, node.value = True, value
            pair = self._merge_with_neighbour(node)
            if pair is None:
                if node is not self._head or node.next is not None:
                    return  # its neighbours are still on their way
                self._over = True
                self._head = None
        if pair is None:
            self._result._settle(value)
        else:
            self._combine(*pair)

    def _merge_with_neighbour(self, node: _Node) -> tuple[_Node, Any, Any] | None:
        """Replace ``node`` and a ready neighbour by one node awaiting their combination."""
        if node.prev is not None and node.prev.ready:
            left, right = node.prev, node
        elif node.next is not None and node.next.ready:
            left, right = node, node.next
        else:
            return None
        merged = _Node()
        merged.prev, merged.next = left.prev, right.next
        if left.prev is not None:
            left.prev.next = merged
        else:
            self._head = merged
        if right.next is not None:
            right.next.prev = merged
        a, b = left.value, right.value
        left.value = right.value = None
        return merged, a, b

    def _combine(self, node: _Node, a: Any, b: Any) -> None:
        """Start ``op(a, b)``; ``node`` gets the value. Often on the backend's thread, so
        every failure becomes the reduction's error instead of raising there."""
        combiner = self._combiner
        if combiner.remote_only or isinstance(a, RemoteValue) or isinstance(b, RemoteValue):
            try:
                self._combine_remotely(node, a, b)
            except Exception as exc:
                self._fail(exc)
            return

        def run_here() -> None:  # on the user's thread
            if self._over:
                return
            try:
                value = combiner.fn(a, b)
            except Exception as exc:
                self._fail(exc)
                return
            self._ready(node, value)

        self._cluster.post(run_here)

    def _combine_remotely(self, node: _Node, a: Any, b: Any) -> None:
        combiner = self._combiner
        shipped = combiner.shipped()
        pending = submit_call(
            self._cluster,
            shipped,
            (a, b),
            {},
            placement=combiner.placement_for(self._cluster, a, b),
            retries=combiner.retries,
            label=f"reduce({combiner.name})",
        )

        def settled(done: Pending[Any]) -> None:
            if done._error is not None:
                self._fail(done._error)
            else:
                self._ready(node, done._value)

        pending._on_settle(settled)


def _cluster_of(items: Sequence[object]) -> Cluster:
    for item in items:
        if isinstance(item, Pending):
            return item._cluster
    return current()


def _start_reduce(
    cluster: Cluster,
    op: Callable[[Any, Any], Any] | RemoteFunction[Any, Any],
    inputs: list[Any],
    label: str,
    tracker: _Tracker,
) -> Reduction[Any]:
    result: Reduction[Any] = Reduction(cluster, label, tracker)
    _TreeReduce(cluster, _Combiner(op), result).start(inputs)
    return result


@overload
def reduce(
    op: RemoteFunction[[T, T], T],
    pendings: Iterable[Pending[Any] | Any],
    *,
    initial: T = ...,
    progress: bool | None = None,
) -> Reduction[T]: ...


@overload
def reduce(
    op: Callable[[T, T], T],
    pendings: Iterable[Pending[Any] | Any],
    *,
    initial: T = ...,
    progress: bool | None = None,
) -> Reduction[T]: ...


def reduce(
    op: Callable[[T, T], T] | RemoteFunction[[T, T], T],
    pendings: Iterable[Pending[Any] | Any],
    *,
    initial: T = _UNSET,
    progress: bool | None = None,
) -> Reduction[T]:
    """Combine values with ``op`` as they complete; returns a ``Pending`` at once.

    ``pendings`` are Pendings (or plain values) in order; ``initial``, if given, comes
    first. Neighbours are combined as soon as both are ready, in a tree, so ``op`` must be
    associative (``a + b``, ``max``, merging dicts), not commutative. Where values are held
    on servers, ``op`` runs there (pinned to the server holding more of the two); on values
    held here it runs here, on the user's thread. A ``RemoteFunction`` ``op`` always runs
    remotely, with its placement. The first failure (of an input or of ``op``) is the
    result's error.

    Raises ``TypeError`` when there is nothing to reduce and no ``initial``, like
    ``functools.reduce``.
    """
    inputs: list[Any] = list(pendings)
    if initial is not _UNSET:
        inputs.insert(0, initial)
    if not inputs:
        raise TypeError("reduce() of an empty sequence with no initial value")
    cluster = _cluster_of(inputs)
    label = f"reduce({_name(op)})"
    tracker = _Tracker(label, len(inputs), progress, time.monotonic())
    for item in inputs:
        if isinstance(item, Pending):
            item._on_settle(functools.partial(_count, tracker, 1))
        else:
            tracker.add(1)
    return _start_reduce(cluster, op, inputs, label, tracker)


def mapreduce(
    f: Callable[[T], U] | RemoteFunction[[T], U],
    items: Iterable[T],
    combine: Callable[[U, U], U] | RemoteFunction[[U, U], U],
    *,
    on: str | Placement | None = None,
    chunksize: int | None = None,
    initial: U = _UNSET,
    progress: bool | None = None,
) -> Reduction[U]:
    """``reduce(combine, map(f, items))``, with ``combine`` applied inside each chunk on its
    server first: only one partial result per chunk travels. Returns a ``Pending`` at once.

    Chunks and placement as in ``map``; the partial results are merged as in ``reduce``
    (on the client when they came back, where they are held otherwise). ``combine`` must be
    associative; ``initial``, if given, is combined first. An exception in ``f`` or
    ``combine`` fails it with ``RemoteError`` naming the item's index. Raises ``TypeError``
    for no items and no ``initial``, ``NoMatchingServer`` if no server meets ``on``.
    """
    started = time.monotonic()
    cluster = current()
    fn, placement, retries = _parts(f, on)
    combine_fn = combine._fn if isinstance(combine, RemoteFunction) else combine
    what = f"mapreduce({_name(f)})"
    data = sliceable(items)
    if len(data) == 0 and initial is _UNSET:
        raise TypeError("mapreduce() of no items with no initial value")
    chunks = _send_chunks(
        cluster,
        functools.partial(_reduce_chunk, fn, combine_fn),
        data,
        chunksize,
        placement,
        retries,
        what,
    )
    tracker = _Tracker(what, len(data), progress, started)
    for _, length, chunk in chunks:
        chunk._on_settle(functools.partial(_count, tracker, length))
    inputs: list[Any] = [chunk for _, _, chunk in chunks]
    if initial is not _UNSET:
        inputs.insert(0, initial)
    return _start_reduce(cluster, combine, inputs, what, tracker)
