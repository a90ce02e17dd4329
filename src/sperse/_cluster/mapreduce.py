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

The parts: ``chunks`` (cutting items and spreading chunks, and what a chunk's task runs on
the worker), ``tracking`` (the progress counter, the bar, the ``Tracked`` Pending),
``treereduce`` (``reduce`` and ``mapreduce``); ``map`` and ``MapResult`` are here.

Invariants:

- An exception raised by ``f`` (or ``combine``) on an item is caught by the chunk's task and
  sent back as data (``ItemFailed``), so the failure names the item's index: the chunk's
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
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, overload

from sperse._cluster.chunks import apply_chunk, name_of, parts, send_chunks, sliceable
from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import current
from sperse._cluster.pending import Pending
from sperse._cluster.remote import RemoteFunction
from sperse._cluster.tracking import Tracked, Tracker, remaining
from sperse._cluster.treereduce import Reduction, mapreduce, reduce
from sperse._lang.placement import Placement
from sperse._serialize import RemoteValue

__all__ = ["MapResult", "Reduction", "Tracked", "map", "mapreduce", "reduce"]

T = TypeVar("T")
U = TypeVar("U")


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
        tracker: Tracker,
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
            self._wait(lambda: any(chunk.done() for _, _, chunk in left), remaining(deadline))
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
    fn, placement, retries = parts(f, on)
    what = f"map({name_of(f)})"
    data = sliceable(items)
    chunks = send_chunks(
        cluster, functools.partial(apply_chunk, fn), data, chunksize, placement, retries, what
    )
    tracker = Tracker(what, len(data), progress, started, wake=cluster.wake)
    return MapResult(cluster, chunks, label=what, tracker=tracker)
