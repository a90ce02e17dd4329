"""Chunks of a map: how items are cut and spread, and what a chunk's task runs.

Part of ``sperse.map`` / ``sperse.mapreduce`` (see ``sperse._cluster.mapreduce``).

- On the worker, ``apply_chunk`` and ``reduce_chunk`` catch an exception raised by ``f``
  (or ``combine``) on an item and return it as data (``ItemFailed``), so the failure names
  the item's index; ``chunk_pending`` turns it into the chunk's ``RemoteError``.
- Items are sliced, never copied element by element (a numpy array's chunks are views).
- With several eligible servers, chunks are pinned in turn, in proportion to their workers
  (smooth weighted round robin), unless the backend spreads tasks itself.
"""

from __future__ import annotations

import hashlib
import math
import os
import reprlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Final, TypeVar

from sperse._cluster.cluster import Cluster
from sperse._cluster.pending import Pending, submit_call
from sperse._cluster.remote import RemoteFunction
from sperse._core import BalancesLoad, ErrorInfo, PickledFunction, ServerInfo
from sperse._core.routing import check_placement, eligible
from sperse._core.values import value
from sperse._exec.runner import encode_error
from sperse._lang.placement import Placement, placement_from_options
from sperse._serialize import dumps

__all__ = [
    "CHUNKS_PER_WORKER",
    "UNSET",
    "ItemFailed",
    "apply_chunk",
    "default_chunksize",
    "name_of",
    "parts",
    "reduce_chunk",
    "send_chunks",
    "ship",
    "sliceable",
    "split",
    "spread",
]

T = TypeVar("T")

CHUNKS_PER_WORKER: Final = 4

UNSET: Any = object()  # "no initial value given"


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxstring = short.maxother = 40
    short.maxlist = short.maxtuple = short.maxdict = 4
    return short


_ITEM_REPR: Final = _short_repr()


# ---- on the worker --------------------------------------------------------------------------


@value
class ItemFailed:
    """What a chunk's task returns instead of raising: which item failed, and how."""

    index: int
    item: str  # a short repr
    stage: str  # "" for f, "combine" for mapreduce's combine
    error: ErrorInfo


def _failure(index: int, item: object, stage: str, exc: Exception) -> ItemFailed:
    try:
        text = _ITEM_REPR.repr(item)
    except Exception:
        text = f"<{type(item).__name__}>"
    return ItemFailed(index, text, stage, encode_error(exc, skip_frames=1))


def apply_chunk(f: Callable[[Any], Any], chunk: Iterable[Any], start: int) -> Any:
    """``[f(item) for item in chunk]``, or ``ItemFailed`` for the first item that raises."""
    out = []
    for offset, item in enumerate(chunk):
        try:
            out.append(f(item))
        except Exception as exc:
            return _failure(start + offset, item, "", exc)
    return out


def reduce_chunk(
    f: Callable[[Any], Any], combine: Callable[[Any, Any], Any], chunk: Iterable[Any], start: int
) -> Any:
    """``combine`` over ``f`` of each item, left to right, or ``ItemFailed``."""
    acc: Any = UNSET
    for offset, item in enumerate(chunk):
        try:
            value = f(item)
        except Exception as exc:
            return _failure(start + offset, item, "", exc)
        if acc is UNSET:
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


def ship(fn: Callable[..., Any], what: str) -> PickledFunction:
    """Pickle once for every chunk; workers cache the function by its digest."""
    data = dumps(fn, what=what)
    return PickledFunction(hashlib.sha256(data).hexdigest(), data)


def name_of(fn: object) -> str:
    if isinstance(fn, RemoteFunction):
        fn = fn._fn
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def parts(
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
    ``ItemFailed``. Cancelling it cancels the task."""
    out: Pending[Any] = Pending(cluster, label=raw.label)
    out._task_id = raw._task_id

    def settled(done: Pending[Any]) -> None:
        out.where = done.where
        out._started_at = done._started_at
        if done._error is not None:
            out._settle(error=done._error)
            return
        value = done._value
        if isinstance(value, ItemFailed):
            stage = f" {value.stage} at" if value.stage else ""
            label = f"{what}{stage} item {value.index} ({value.item})"
            out._settle(error=value.error.to_exception(label, done.where))
            return
        out._settle(value)

    raw._on_settle(settled)
    return out


def send_chunks(
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
    shipped = ship(worker_fn, what)
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
