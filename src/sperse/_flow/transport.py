"""The transport's rules, without the network: channel order, adaptive batching, credits.

The server executor (:mod:`sperse._flow.host`, :mod:`sperse._flow.servers`) moves a
replica's :class:`~sperse._flow.messages.Send`\\ s to the host of the receiving replica as
``deliver(channel, seq, messages)`` calls. What it needs to decide is here, pure (the clock
comes in as ``now``), so it is tested without servers:

- :class:`Reorder`: calls may start on the receiver in any order (a host serves several at
  once), so each channel (one sender to one receiver) numbers its deliveries from 0 and the
  receiver releases them in that order, holding early ones back. Channels are FIFO again.
- :class:`Outbox`: what a replica sends, buffered per destination replica and flushed
  when it holds a delivery's worth of items (:class:`BatchSize`), when its oldest message
  has waited ``LINGER`` seconds, or when the host has nothing else to do (so a quiet
  pipeline does not wait for a batch to fill). Consecutive batches for the same port and
  round are merged (their loop weights add up: weight is conserved); a buffer holding more
  than a delivery's worth is cut into deliveries of that many items (a cut batch's weight
  shared in proportion).
- :class:`BatchSize`: a delivery's worth of items, per receiver. It starts at
  ``BATCH_ITEMS`` (1,000) and never goes below; each acknowledgement says how long the
  receiver took to handle the delivery, and the next holds as many items as it handles in
  about ``BATCH_SECONDS`` (5 ms), doubling at most each time, up to ``MAX_BATCH_ITEMS``
  (65,536) and about ``MAX_BATCH_BYTES`` (1 MiB) pickled. So expensive items travel 1,000
  at a time (or what came in ``LINGER``), and cheap ones in batches big enough that the
  fixed cost of a delivery (a remote call, three threads, two pipes) stops mattering.
- :class:`Credits`: at most ``window`` deliveries of a channel are un-acknowledged at once;
  a delivery is acknowledged when the receiver has *processed* it, so a slow replica's
  inbox is bounded and its senders wait for it. Feedback edges of loops take no credit (a
  cycle of bounded channels can deadlock: each side waiting for the other to make room).
- :class:`Packed`: a delivery's messages as they travel. When every item is builtin data
  (numbers, strings, bytes, and tuples, lists, dicts and sets of those) they are pickled
  by the standard pickler, in C; anything else goes through the client's serializer as
  before (cloudpickle, numpy buffers out of band). cloudpickle calls back into Python for
  every object it writes (``persistent_id``): a batch of 1,000 ints took 90 µs that way
  and 12 µs this way.

Wire form of a packed delivery (one ``pickle`` protocol 5 stream of builtin data)::

    [(0, port, sender, items, round, weight, now),      # a Batch (weight: None or (num, den))
     (1, port, sender, round), ...]                     # an End
"""

from __future__ import annotations

import contextlib
import io
import pickle
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Generic, TypeVar

from sperse._flow.messages import Batch, End, Message

__all__ = [
    "BATCH_ITEMS",
    "LINGER",
    "MAX_BATCH_ITEMS",
    "WINDOW",
    "BatchSize",
    "BatchSizes",
    "Credits",
    "Outbox",
    "Packed",
    "Reorder",
]

BATCH_ITEMS = 1000  # flush a destination's buffer once it holds this many items
MAX_BATCH_ITEMS = 65_536  # ... or up to this many, when the receiver handles them fast
BATCH_SECONDS = 0.005  # the receiver's time a delivery aims at
MAX_BATCH_BYTES = 1 << 20  # ... and about this many bytes, pickled
LINGER = 0.005  # ... or once its oldest message has waited this long (seconds)
WINDOW = 4  # un-acknowledged deliveries per channel

T = TypeVar("T")


class Reorder(Generic[T]):
    """Deliveries of many channels in, each channel's out in sequence order."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        self._early: dict[str, dict[int, T]] = {}

    def put(self, channel: str, seq: int, value: T) -> list[T]:
        """Take delivery ``seq`` of ``channel``; return what can go on now, in order."""
        expected = self._next.get(channel, 0)
        if seq < expected:
            raise ValueError(f"delivery {seq} of channel {channel!r} came twice")
        if seq > expected:
            self._early.setdefault(channel, {})[seq] = value
            return []
        out = [value]
        expected += 1
        early = self._early.get(channel)
        while early and expected in early:
            out.append(early.pop(expected))
            expected += 1
        self._next[channel] = expected
        return out

    def held(self) -> int:
        """Deliveries waiting for an earlier one."""
        return sum(len(e) for e in self._early.values())


class BatchSize:
    """A delivery's worth of items for one receiver (see the module docstring): ``items``,
    from ``floor`` to ``ceiling``; the same number for good when they are equal."""

    __slots__ = ("ceiling", "floor", "items")

    def __init__(self, floor: int = BATCH_ITEMS, ceiling: int = MAX_BATCH_ITEMS) -> None:
        self.floor = max(1, floor)
        self.ceiling = max(self.floor, ceiling)
        self.items = self.floor

    def learn(self, items: int, seconds: float, size: int = 0) -> None:
        """A delivery of ``items`` items (``size`` bytes pickled, 0 if not known) took the
        receiver ``seconds`` to handle. A small one that was fast says little: what it
        cost was mostly the delivery's own."""
        if items <= 0 or (items < self.items // 2 and seconds <= BATCH_SECONDS):
            return
        want = min(self.ceiling, 2 * self.items)
        if seconds > 0:
            want = min(want, int(items * BATCH_SECONDS / seconds))
        if size > 0:
            want = min(want, int(items * MAX_BATCH_BYTES / size))
        self.items = max(self.floor, want)


class BatchSizes(dict[Any, BatchSize]):
    """A :class:`BatchSize` per receiver, made at first use."""

    def __init__(self, floor: int = BATCH_ITEMS, ceiling: int = MAX_BATCH_ITEMS) -> None:
        super().__init__()
        self.floor = floor
        self.ceiling = ceiling

    def __missing__(self, key: Any) -> BatchSize:
        size = self[key] = BatchSize(self.floor, self.ceiling)
        return size


@dataclass(slots=True)
class _Buffer:
    messages: list[Message] = field(default_factory=list)
    items: int = 0
    since: float = 0.0


Destination = tuple[int, int]  # (stage, replica)


class Outbox:
    """Messages buffered per destination until a flush (see the module docstring). A
    destination's delivery is ``batch_items`` items at first, up to ``max_items`` as its
    acknowledgements teach (``learn``)."""

    def __init__(
        self,
        batch_items: int = BATCH_ITEMS,
        linger: float = LINGER,
        max_items: int = MAX_BATCH_ITEMS,
    ) -> None:
        self.batch_items = batch_items
        self.linger = linger
        self._buffers: dict[Destination, _Buffer] = {}
        self.sizes = BatchSizes(batch_items, max_items)

    def learn(self, dest: Destination, items: int, seconds: float, size: int = 0) -> None:
        """What ``dest`` said of a delivery it handled (see :meth:`BatchSize.learn`)."""
        self.sizes[dest].learn(items, seconds, size)

    def add(self, dest: Destination, message: Message, now: float) -> None:
        buffer = self._buffers.get(dest)
        if buffer is None:
            buffer = self._buffers[dest] = _Buffer(since=now)
        elif not buffer.messages:
            buffer.since = now
        last = buffer.messages[-1] if buffer.messages else None
        if isinstance(message, Batch):
            buffer.items += len(message.items)
            if (
                isinstance(last, Batch)
                and (last.port, last.sender, last.round)
                == (message.port, message.sender, message.round)
                and (last.weight is None) == (message.weight is None)
            ):
                weight = None if last.weight is None else last.weight + (message.weight or 0)
                last.items.extend(message.items)  # the outbox owns the first batch's list
                buffer.messages[-1] = Batch(
                    last.port,
                    last.sender,
                    last.items,
                    last.round,
                    weight,
                    max(last.now, message.now),
                )
                return
            message = Batch(
                message.port, message.sender, list(message.items), message.round,
                message.weight, message.now,
            )  # fmt: skip
        buffer.messages.append(message)

    def due(self, now: float, idle: bool) -> list[tuple[Destination, list[Message]]]:
        """The deliveries to send now: a buffer's full ones, and the rest of it too when it
        is old or the host ``idle``."""
        out = []
        for dest, buffer in self._buffers.items():
            if not buffer.messages:
                continue
            limit = self.sizes[dest].items
            if idle or buffer.items >= limit or now - buffer.since >= self.linger:
                if buffer.items <= limit:
                    out.append((dest, buffer.messages))
                    buffer.messages, buffer.items = [], 0
                    continue
                parts = _cut(buffer.messages, limit)
                if not (idle or now - buffer.since >= self.linger) and _items(parts[-1]) < limit:
                    rest = parts.pop()  # not old yet: it waits to fill
                    buffer.messages, buffer.items = rest, _items(rest)
                else:
                    buffer.messages, buffer.items = [], 0
                out.extend((dest, part) for part in parts)
        return out

    def pending(self) -> int:
        """Messages buffered, not yet sent."""
        return sum(len(b.messages) for b in self._buffers.values())


def _items(messages: list[Message]) -> int:
    return sum(len(m.items) for m in messages if isinstance(m, Batch))


def _cut(messages: list[Message], limit: int) -> list[list[Message]]:
    """``messages`` in order as deliveries of at most ``limit`` items (a delivery of no
    items holds what is left); a batch cut in parts shares its weight in proportion."""
    parts: list[list[Message]] = [[]]
    room = limit
    for message in messages:
        if not isinstance(message, Batch):
            parts[-1].append(message)
            continue
        items, start = message.items, 0
        while start < len(items):
            if room == 0:
                parts.append([])
                room = limit
            piece = items[start : start + room]
            weight = message.weight
            if weight is not None and len(piece) < len(items):
                weight = weight * len(piece) / len(items)
            parts[-1].append(
                Batch(message.port, message.sender, piece, message.round, weight, message.now)
            )
            start += len(piece)
            room -= len(piece)
    return parts


class Credits:
    """Un-acknowledged deliveries per channel, at most ``window`` where credited."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._out: dict[Any, deque[int]] = {}
        self._next: dict[Any, int] = {}
        self.most = 0  # the most un-acknowledged deliveries one credited channel ever had

    def blocked(self, channel: Any) -> bool:
        """Whether ``channel`` must wait for an acknowledgement before sending."""
        return len(self._out.get(channel, ())) >= self.window

    def send(self, channel: Any, credited: bool = True) -> int:
        """The next sequence number of ``channel``, counted as un-acknowledged if
        ``credited``."""
        seq = self._next.get(channel, 0)
        self._next[channel] = seq + 1
        if credited:
            out = self._out.setdefault(channel, deque())
            out.append(seq)
            self.most = max(self.most, len(out))
        return seq

    def ack(self, channel: Any, seq: int) -> None:
        out = self._out.get(channel)
        if out is not None:
            with contextlib.suppress(ValueError):
                out.remove(seq)

    def unacked(self) -> int:
        """Deliveries not acknowledged yet, over every channel."""
        return sum(len(out) for out in self._out.values())

    def outstanding(self, channel: Any) -> int:
        return len(self._out.get(channel, ()))


class _NotPlain(Exception):
    pass


class _PlainPickler(pickle.Pickler):
    """The standard pickler, refusing anything but builtin data. The C pickler writes
    numbers, strings, bytes, tuples, lists, dicts and sets itself and asks
    ``reducer_override`` about every other object (a class, a function, an instance of one),
    so plain data is pickled at C speed and the first other object stops it."""

    def reducer_override(self, obj: Any) -> Any:
        raise _NotPlain


class Packed:
    """``messages`` for a ``deliver`` call: they unpickle as the list itself. Pickled by the
    standard pickler as the wire form of the module docstring when every message is a
    ``Batch`` of builtin data or an ``End`` (see ``_PlainPickler``); else as the list, by
    whatever pickles the call (cloudpickle)."""

    __slots__ = ("messages", "size")

    def __init__(self, messages: list[Any]) -> None:
        self.messages = messages
        self.size = 0  # bytes, once pickled the fast way

    def __reduce__(self) -> tuple[Any, ...]:
        wire: list[tuple[Any, ...]] = []
        for m in self.messages:
            if type(m) is Batch:
                w = m.weight
                weight = None if w is None else (w.numerator, w.denominator)
                wire.append((0, m.port, m.sender, m.items, m.round, weight, m.now))
            elif type(m) is End:
                wire.append((1, m.port, m.sender, m.round))
            else:
                return (_same, (self.messages,))
        file = io.BytesIO()
        try:
            _PlainPickler(file, protocol=5).dump(wire)
        except _NotPlain:
            return (_same, (self.messages,))
        data = file.getvalue()
        self.size = len(data)
        return (_unpack, (data,))

    def items(self) -> int:
        """The items of the delivery's batches."""
        return _items(self.messages)


def _same(messages: list[Any]) -> list[Any]:
    return messages


def _unpack(data: bytes) -> list[Message]:
    return [
        Batch(w[1], w[2], w[3], w[4], None if w[5] is None else Fraction(*w[5]), w[6])
        if w[0] == 0
        else End(w[1], w[2], w[3])
        for w in pickle.loads(data)
    ]
