"""The logic of each operator on one replica, on batches: a list of items in, a list out.

Pure: no clock (time comes in :class:`Ctx`), no I/O (``to_dir`` asks for its file to be
written, the shell writes it), no threads. A user function that raises is reported as
:class:`ItemError` with the item it was given, so the run's error names both; the replica
turns it into a failure (:mod:`sperse._flow.replica`).

Keyed items are ``(key, value)`` pairs. Keyed state (``fold``, ``scan``, ``reduce``, keyed
windows, ``join``) lives in a dict per replica, touched only by the replica the key hashes
to. ``reset`` drops it: inside a bulk loop state lasts one round.
"""

from __future__ import annotations

import copy
import math
import struct
import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "Ctx",
    "ItemError",
    "Op",
    "SinkValue",
    "make_op",
    "stable_hash",
]

PRE_FOLD_KEYS = 1 << 16  # keys a map-side combiner holds before it sends them on
# Atomic values need no copy; a tuple may hold mutable parts (a tuple of arrays), so it is copied.
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None))


class ItemError(Exception):
    """A user function raised on ``item`` (``cause``), or ``item`` cannot be handled
    (``message``). Internal: the replica reports it as a failure of the operator."""

    def __init__(self, item: Any, cause: BaseException | None = None, message: str = "") -> None:
        super().__init__(message or str(cause))
        self.item = item
        self.cause = cause
        self.message = message


@dataclass(frozen=True, slots=True)
class Ctx:
    """What an operator may know of where and when it runs."""

    replica: int
    replicas: int
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class SinkValue:
    """What a sink replica ends with: ``value`` for the sink's Pending (each replica's part;
    the controller joins them), and the file to write (``to_dir``), if any."""

    value: Any
    path: str = ""
    text: str = ""


def stable_hash(key: Hashable) -> int:
    """A hash of ``key`` that is the same in every process (``hash`` of a ``str`` is salted
    per process): strings and bytes by CRC-32, numbers by ``hash`` (not salted), tuples and
    frozensets from their parts. Other types use ``hash``: they must hash alike everywhere."""
    if isinstance(key, str):
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if isinstance(key, bytes):
        return zlib.crc32(key)
    if isinstance(key, tuple):
        h = 0x345678
        for part in key:
            h = (h * 1000003) ^ stable_hash(part)
            h &= 0xFFFFFFFFFFFF
        return h
    if isinstance(key, frozenset):
        return sum(stable_hash(part) for part in key) & 0xFFFFFFFFFFFF
    if isinstance(key, float) and math.isnan(key):
        return int(struct.unpack("<q", struct.pack("<d", key))[0]) & 0xFFFF
    return hash(key) & 0xFFFFFFFFFFFF


def _fresh(init: Any) -> Any:
    return init if isinstance(init, _IMMUTABLE) else copy.deepcopy(init)


class Op:
    """One operator's state on one replica. ``on_batch`` handles the items of one input
    batch (on ``port``, for operators with more than one input); ``on_end`` emits what was
    held back once every input ended (or the round did); ``finish`` is a sink's outcome."""

    __slots__ = ("count", "name")
    kind: ClassVar[str] = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0  # items in

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        return items

    def on_tick(self, ctx: Ctx) -> list[Any]:
        return []

    def on_end(self, ctx: Ctx) -> list[Any]:
        return []

    def reset(self) -> None:
        pass

    def finish(self, ctx: Ctx) -> SinkValue | None:
        return None


class Identity(Op):
    """``source``, ``union``, ``broadcast``, ``shuffle``: the edge does the work."""

    __slots__ = ()


class Map(Op):
    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        fn, out = self.fn, list[Any]()
        append = out.append
        item = None
        try:
            for item in items:
                append(fn(item))
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return out


class Filter(Map):
    __slots__ = ()

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        fn, out = self.fn, list[Any]()
        append = out.append
        item = None
        try:
            for item in items:
                if fn(item):
                    append(item)
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return out


class FlatMap(Map):
    __slots__ = ()

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        fn, out = self.fn, list[Any]()
        extend = out.extend
        item = None
        try:
            for item in items:
                extend(fn(item))
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return out


class Inspect(Map):
    __slots__ = ()

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        fn = self.fn
        item = None
        try:
            for item in items:
                fn(item)
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return items


class KeyBy(Map):
    __slots__ = ()

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        fn, out = self.fn, list[Any]()
        append = out.append
        item = None
        try:
            for item in items:
                key = fn(item)
                hash(key)
                append((key, item))
        except TypeError as exc:
            if "unhashable" in str(exc):
                raise ItemError(
                    item,
                    exc,
                    f"the key of this item is unhashable ({exc}): return a str, "
                    "number or tuple from the key function",
                ) from exc
            raise ItemError(item, exc) from exc
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return out


class MapValues(Map):
    __slots__ = ()

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        fn, out = self.fn, list[Any]()
        append = out.append
        item = None
        try:
            for item in items:
                append((item[0], fn(item[1])))
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return out


class BatchMap(Map):
    __slots__ = ()

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        try:
            return list(self.fn(list(items)))
        except Exception as exc:
            raise ItemError(
                items[0] if len(items) == 1 else f"a batch of {len(items)} items", exc
            ) from exc


class Fold(Op):
    """``fold(init, fn)``: one accumulator per key, emitted when the input ends."""

    __slots__ = ("fn", "init", "state")

    def __init__(self, name: str, init: Any, fn: Callable[[Any, Any], Any]) -> None:
        super().__init__(name)
        self.init = init
        self.fn = fn
        self.state: dict[Any, Any] = {}

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        state, fn, init = self.state, self.fn, self.init
        item = None
        try:
            for item in items:
                key = item[0]
                acc = state[key] if key in state else _fresh(init)
                state[key] = fn(acc, item[1])
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return []

    def on_end(self, ctx: Ctx) -> list[Any]:
        return list(self.state.items())

    def reset(self) -> None:
        self.state = {}


class Reduce(Fold):
    """``reduce(fn)``: the first value of a key starts its accumulator."""

    __slots__ = ()

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        state, fn = self.state, self.fn
        item = None
        try:
            for item in items:
                key = item[0]
                state[key] = fn(state[key], item[1]) if key in state else item[1]
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return []


class PreFold(Op):
    """Map-side combining: the values of each key folded into one partial (``fn`` from a
    copy of ``init``, or from the first value for ``reduce``), sent on as ``(key,
    partial)`` before the hash edge when the input ends; the receiving ``reduce`` joins
    partials. The partials span batches (a fold emits nothing before its input ends
    anyway), so a key crosses the edge once per sending replica, not once per batch; past
    ``PRE_FOLD_KEYS`` keys they are sent on at once, which bounds the memory they take."""

    __slots__ = ("acc", "first", "fn", "init")

    def __init__(self, name: str, init: Any, fn: Callable[[Any, Any], Any], first: bool) -> None:
        super().__init__(name)
        self.init = init
        self.fn = fn
        self.first = first
        self.acc: dict[Any, Any] = {}

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        acc = self.acc
        fn, init, first = self.fn, self.init, self.first
        item = None
        try:
            for item in items:
                key = item[0]
                if key in acc:
                    acc[key] = fn(acc[key], item[1])
                else:
                    acc[key] = item[1] if first else fn(_fresh(init), item[1])
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return self.on_end(ctx) if len(acc) >= PRE_FOLD_KEYS else []

    def on_end(self, ctx: Ctx) -> list[Any]:
        out = list(self.acc.items())
        self.acc = {}
        return out

    def reset(self) -> None:
        self.acc = {}


class Scan(Fold):
    """``scan(init, fn)``: ``fn(state, value) -> (state, output)``, one output per item."""

    __slots__ = ()

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        state, fn, init, out = self.state, self.fn, self.init, list[Any]()
        item = None
        try:
            for item in items:
                key = item[0]
                acc = state[key] if key in state else _fresh(init)
                state[key], output = fn(acc, item[1])
                out.append((key, output))
        except Exception as exc:
            raise ItemError(item, exc) from exc
        return out

    def on_end(self, ctx: Ctx) -> list[Any]:
        return []


class Window(Op):
    """``window(count=N)`` (groups of N items, the rest at the end) or ``window(seconds=T)``
    (tumbling windows of processing time: ``[k*T, (k+1)*T)``), per key if ``keyed``: keyed
    windows emit ``(key, [values])``, others ``[items]``."""

    __slots__ = ("buffers", "count_limit", "keyed", "seconds", "since")

    def __init__(self, name: str, count: int | None, seconds: float | None, keyed: bool) -> None:
        super().__init__(name)
        self.count_limit = count
        self.seconds = seconds
        self.keyed = keyed
        self.buffers: dict[Any, list[Any]] = {}
        self.since: dict[Any, int] = {}  # the time window each buffer belongs to

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        out = self.on_tick(ctx) if self.seconds is not None else []
        window = self._window(ctx.now)
        limit = self.count_limit
        if not self.keyed:  # one buffer: filled a slice at a time
            start = 0
            while start < len(items):
                buffer = self.buffers.get(None)
                if buffer is None:
                    buffer = self.buffers[None] = []
                    self.since[None] = window
                end = len(items) if limit is None else start + limit - len(buffer)
                buffer.extend(items[start:end])
                start = end
                if limit is not None and len(buffer) >= limit:
                    out.append(self._emit(None))
            return out
        for item in items:
            key, value = item if self.keyed else (None, item)
            buffer = self.buffers.get(key)
            if buffer is None:
                buffer = self.buffers[key] = []
                self.since[key] = window
            buffer.append(value)
            if limit is not None and len(buffer) >= limit:
                out.append(self._emit(key))
        return out

    def on_tick(self, ctx: Ctx) -> list[Any]:
        if self.seconds is None:
            return []
        window = self._window(ctx.now)
        return [self._emit(key) for key, since in list(self.since.items()) if since < window]

    def on_end(self, ctx: Ctx) -> list[Any]:
        return [self._emit(key) for key in list(self.buffers)]

    def reset(self) -> None:
        self.buffers = {}
        self.since = {}

    def _window(self, now: float) -> int:
        return math.floor(now / self.seconds) if self.seconds else 0

    def _emit(self, key: Any) -> Any:
        values = self.buffers.pop(key)
        del self.since[key]
        return (key, values) if self.keyed else values


class Join(Op):
    """``left.join(right)``: every ``(key, (l, r))`` of a left and a right value with the
    same key, as soon as both have come (a symmetric hash join)."""

    __slots__ = ("sides",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.sides: tuple[dict[Any, list[Any]], dict[Any, list[Any]]] = ({}, {})

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        mine, other = self.sides[port], self.sides[1 - port]
        out = []
        for key, value in items:
            mine.setdefault(key, []).append(value)
            for seen in other.get(key, ()):
                out.append((key, (value, seen) if port == 0 else (seen, value)))
        return out

    def reset(self) -> None:
        self.sides = ({}, {})


class Collect(Op):
    """``collect()``: a list (in the order items came), or a dict for a keyed stream."""

    __slots__ = ("items", "keyed")

    def __init__(self, name: str, keyed: bool) -> None:
        super().__init__(name)
        self.keyed = keyed
        self.items: Any = {} if keyed else []

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        if not self.keyed:
            self.items.extend(items)
            return []
        found = self.items
        for item in items:
            key, value = item
            if key in found:
                raise ItemError(
                    item,
                    message=f"the key {key!r} came twice: a keyed stream collects to a dict of "
                    "one value per key (fold or reduce it first, or collect a list of pairs "
                    "with .pairs().collect())",
                )
            found[key] = value
        return []

    def finish(self, ctx: Ctx) -> SinkValue:
        return SinkValue(self.items)


class ToDir(Op):
    """``to_dir(path)``: each replica's items as the lines of one file, ``part-NNNNN``
    (written atomically by the shell); a keyed item as ``key<TAB>value``."""

    __slots__ = ("keyed", "lines", "path")

    def __init__(self, name: str, path: str, keyed: bool) -> None:
        super().__init__(name)
        self.path = path
        self.keyed = keyed
        self.lines: list[str] = []

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        if self.keyed:
            self.lines.extend(f"{k}\t{v}\n" for k, v in items)
        else:
            self.lines.extend(f"{item}\n" for item in items)
        return []

    def finish(self, ctx: Ctx) -> SinkValue:
        path = f"{self.path.rstrip('/')}/part-{ctx.replica:05d}"
        return SinkValue([path], path, "".join(self.lines))


class ForEach(Inspect):
    __slots__ = ()

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        super().on_batch(port, items, ctx)
        return []

    def finish(self, ctx: Ctx) -> SinkValue:
        return SinkValue(None)


class BulkEnd(Op):
    """The end of a bulk loop's body: folds the round's output into this replica's partial
    (``fold(partial, item)`` from a copy of ``zero``), and keeps the items to go round again
    (``iterate_bulk``; ``replay`` feeds its input every round instead)."""

    __slots__ = ("fn", "keep", "kept", "partial", "zero")

    def __init__(self, name: str, zero: Any, fn: Callable[[Any, Any], Any], keep: bool) -> None:
        super().__init__(name)
        self.zero = zero
        self.fn = fn
        self.keep = keep
        self.partial = _fresh(zero)
        self.kept: list[Any] = []

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        fn, partial = self.fn, self.partial
        item = None
        try:
            for item in items:
                partial = fn(partial, item)
        except Exception as exc:
            raise ItemError(item, exc) from exc
        self.partial = partial
        if self.keep:
            self.kept.extend(items)
        return []

    def take(self) -> tuple[Any, list[Any]]:
        """The round's partial fold and kept items; the next round starts afresh."""
        out = self.partial, self.kept
        self.partial, self.kept = _fresh(self.zero), []
        return out


def make_op(kind: str, name: str, args: tuple[Any, ...], keyed: bool) -> Op:
    """The operator logic for a node (``plan.Node``: its kind, name, args)."""
    if kind in ("source", "union", "broadcast", "shuffle", "item_gate", "bulk_gate"):
        return Identity(name)
    simple: dict[str, type[Map]] = {
        "map": Map,
        "filter": Filter,
        "flat_map": FlatMap,
        "inspect": Inspect,
        "key_by": KeyBy,
        "map_values": MapValues,
        "batch_map": BatchMap,
        "for_each": ForEach,
    }
    if kind in simple:
        return simple[kind](name, args[0])
    if kind == "fold":
        return Fold(name, args[0], args[1])
    if kind == "pre_fold":
        return PreFold(name, args[0], args[1], False)
    if kind == "pre_reduce":
        return PreFold(name, None, args[0], True)
    if kind == "scan":
        return Scan(name, args[0], args[1])
    if kind == "reduce":
        return Reduce(name, None, args[0])
    if kind in ("window", "key_window"):
        return Window(name, args[0], args[1], kind == "key_window")
    if kind == "join":
        return Join(name)
    if kind == "collect":
        return Collect(name, keyed)
    if kind == "to_dir":
        return ToDir(name, args[0], keyed)
    if kind == "bulk_end":
        return BulkEnd(name, args[0], args[1], args[2])
    raise ValueError(f"unknown operator kind {kind!r}")
