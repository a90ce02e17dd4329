"""``sperse.reduce`` and ``sperse.mapreduce``: combining values pairwise as they arrive.

A tree in which only neighbours are combined, so ``op`` needs to be associative but not
commutative. Two values held on servers are combined there (on the server holding more of
their bytes); values held here are combined here, on the user's thread (DESIGN.md §2 rule 6:
the backend's thread only records outcomes and posts work). ``mapreduce`` reduces each chunk
on its server first (``f`` then ``combine`` over the chunk's items), then merges the chunks'
partial results the same way.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar, overload

from sperse._cluster.chunks import UNSET, name_of, parts, reduce_chunk, send_chunks, ship, sliceable
from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import current
from sperse._cluster.pending import Pending, submit_call
from sperse._cluster.remote import RemoteFunction
from sperse._cluster.tracking import Tracked, Tracker, count_settled
from sperse._core import PickledFunction
from sperse._core.routing import Busy, Router, input_locations
from sperse._lang.placement import Placement
from sperse._serialize import RemoteValue
from sperse.errors import SperseError

__all__ = ["Reduction", "mapreduce", "reduce"]

T = TypeVar("T")
U = TypeVar("U")


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
        self.fn, self.placement, self.retries = parts(op, None)
        self.name = name_of(op)
        self._shipped: PickledFunction | None = None
        self._router = Router()
        self._lock = threading.Lock()  # combines start on the user's and the backend's thread

    def shipped(self) -> PickledFunction:
        if self._shipped is None:
            self._shipped = ship(self.fn, f"the function of reduce({self.name})")
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
    tracker: Tracker,
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
    initial: T = UNSET,
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
    if initial is not UNSET:
        inputs.insert(0, initial)
    if not inputs:
        raise TypeError("reduce() of an empty sequence with no initial value")
    cluster = _cluster_of(inputs)
    label = f"reduce({name_of(op)})"
    tracker = Tracker(label, len(inputs), progress, time.monotonic(), wake=cluster.wake)
    for item in inputs:
        if isinstance(item, Pending):
            item._on_settle(functools.partial(count_settled, tracker, 1))
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
    initial: U = UNSET,
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
    fn, placement, retries = parts(f, on)
    combine_fn = combine._fn if isinstance(combine, RemoteFunction) else combine
    what = f"mapreduce({name_of(f)})"
    data = sliceable(items)
    if len(data) == 0 and initial is UNSET:
        raise TypeError("mapreduce() of no items with no initial value")
    chunks = send_chunks(
        cluster,
        functools.partial(reduce_chunk, fn, combine_fn),
        data,
        chunksize,
        placement,
        retries,
        what,
    )
    tracker = Tracker(what, len(data), progress, started, wake=cluster.wake)
    for _, length, chunk in chunks:
        chunk._on_settle(functools.partial(count_settled, tracker, length))
    inputs: list[Any] = [chunk for _, _, chunk in chunks]
    if initial is not UNSET:
        inputs.insert(0, initial)
    return _start_reduce(cluster, combine, inputs, what, tracker)
