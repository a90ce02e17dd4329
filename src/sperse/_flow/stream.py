"""Streams: what the operators of a flow are called on. Each call adds one node to the
flow's plan and returns the stream of its output; nothing runs until ``Flow.run()``.

A :class:`KeyedStream` is a stream of ``(key, value)`` pairs that keyed operators
partition by key over their replicas (``fold``, ``scan``, ``reduce``, ``window``,
``join``): each key's state lives on the one replica its key hashes to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sperse._cluster.pending import Pending
from sperse._flow.awaits import CALL_TIMEOUT, MAX_IN_FLIGHT, is_async
from sperse._flow.plan import (
    LoopId,
    LoopSpec,
    NodeId,
    Partition,
    Replicas,
    StateRef,
)
from sperse._flow.wasm import wasm_args
from sperse._lang.placement import parse_placement

if TYPE_CHECKING:
    from sperse._flow.api import Flow

__all__ = ["KeyedStream", "Stream"]

F = Partition.FORWARD


class Stream:
    """The output of one operator of a flow."""

    __slots__ = ("_flow", "_loop", "_node")

    def __init__(self, flow: Flow, node: NodeId, loop: LoopId | None = None) -> None:
        self._flow = flow
        self._node = node
        self._loop = loop

    # ---- building ------------------------------------------------------------------------

    def _add(
        self,
        kind: str,
        name: str | None,
        args: tuple[Any, ...] = (),
        partition: Partition = F,
        *,
        keyed: bool = False,
        others: Iterable[Stream] = (),
    ) -> NodeId:
        self._flow._building()
        if kind != "map_async" and any(is_async(arg) for arg in args):
            raise TypeError(
                f"{kind}: an async def function is for map only (an async operator); give "
                f"{kind} a plain function, or await in a map before it"
            )
        inputs = [(self._node, partition)]
        for other in others:
            if other._flow is not self._flow:
                raise ValueError(
                    f"{kind}: the streams belong to different flows "
                    f"({self._flow.name!r}, {other._flow.name!r})"
                )
            inputs.append((other._node, partition))
        return self._flow.plan.add(kind, name, args, inputs, keyed=keyed, loop=self._loop)

    def _then(
        self, kind: str, name: str | None, args: tuple[Any, ...] = (), partition: Partition = F
    ) -> Stream:
        return Stream(self._flow, self._add(kind, name, args, partition), self._loop)

    def _keyed(
        self, kind: str, name: str | None, args: tuple[Any, ...] = (), partition: Partition = F
    ) -> KeyedStream:
        return KeyedStream(
            self._flow, self._add(kind, name, args, partition, keyed=True), self._loop
        )

    @property
    def name(self) -> str:
        """The name of the operator whose output this is."""
        return self._flow.plan.node(self._node).name

    def on(self, where: str = "", *, replicas: Replicas | None = None) -> Self:
        """Where the operator that made this stream runs: a placement as ``remote[...]``
        takes it (``"gpu & !slow"``, ``"@db-1"``), and how many replicas (an int, or
        ``"per_server"``). Operators added after it run the same way unless told."""
        placement = parse_placement(where) if where else None
        self._flow.plan.place(self._node, placement, replicas)
        return self

    # ---- one item at a time --------------------------------------------------------------

    def map(
        self,
        fn: Callable[[Any], Any],
        *,
        name: str | None = None,
        max_in_flight: int | None = None,
        ordered: bool = True,
        timeout: float | None = CALL_TIMEOUT,
    ) -> Stream:
        """``fn`` on each item. An ``async def`` function makes an async operator: its calls
        run concurrently on the event loop of the replica's host, at most ``max_in_flight``
        at once per replica and call depth (default 64), each within ``timeout`` seconds;
        it may ``await sperse.service(name).request(x)``. ``ordered``: results go on in the
        order items came (per client in a service), else as they end (docs/flows.md)."""
        if not is_async(fn):
            if max_in_flight is not None:
                raise TypeError(
                    f"map(max_in_flight=...) is for async def functions; {fn!r} is not one"
                )
            return self._then("map", name, (fn,))
        limit = MAX_IN_FLIGHT if max_in_flight is None else max_in_flight
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_in_flight must be a positive int, not {limit!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, not {timeout!r}")
        return self._then("map_async", name, (fn, limit, bool(ordered), timeout))

    def filter(self, fn: Callable[[Any], bool], *, name: str | None = None) -> Stream:
        return self._then("filter", name, (fn,))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, name: str | None = None) -> Stream:
        return self._then("flat_map", name, (fn,))

    def inspect(self, fn: Callable[[Any], object], *, name: str | None = None) -> Stream:
        """Call ``fn`` on each item (for its effect), and pass the item on."""
        return self._then("inspect", name, (fn,))

    def batch_map(
        self, fn: Callable[[list[Any]], Iterable[Any]], *, name: str | None = None
    ) -> Stream:
        """``fn`` on each batch as it comes: a list in, a list out (vectorised work)."""
        return self._then("batch_map", name, (fn,))

    def key_by(self, fn: Callable[[Any], Any], *, name: str | None = None) -> KeyedStream:
        """``(fn(item), item)`` pairs, partitioned by key by the keyed operators after it."""
        return self._keyed("key_by", name, (fn,))

    def map_wasm(
        self,
        module: str | PathLike[str] | bytes,
        export: str = "_start",
        *,
        timeout: float | None = None,
        max_memory_mb: float | None = 1024,
        name: str | None = None,
    ) -> Stream:
        """Each item (bytes) through the function ``export`` of a WebAssembly module (a
        path or bytes; binary or WAT text), in the sandbox of ``sperse submit --wasm``: the
        item is its stdin, its stdout the output item. No files, no network; memory capped
        at ``max_memory_mb``, time per item at ``timeout`` seconds. ``_start`` runs a WASI
        command (a job's module). The module is checked now (``ValueError`` with
        wasmtime's reason) and compiled once per process where it runs."""
        return self._then("map_wasm", name, wasm_args(module, export, timeout, max_memory_mb))

    # ---- several streams -----------------------------------------------------------------

    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """The items of this stream and of ``others``, as they come."""
        return Stream(self._flow, self._add("union", name, others=others), self._loop)

    def broadcast(self, *, name: str | None = None) -> Stream:
        """Every item to every replica of the next operator."""
        return self._then("broadcast", name, (), Partition.BROADCAST)

    def shuffle(self, *, name: str | None = None) -> Stream:
        """Items spread evenly (round-robin) over the replicas of the next operator."""
        return self._then("shuffle", name, (), Partition.ROUND_ROBIN)

    def window(
        self, *, count: int | None = None, seconds: float | None = None, name: str | None = None
    ) -> Stream:
        """Lists of ``count`` consecutive items per replica (the rest at the end), or of the
        items of each ``seconds``-long span of time (tumbling)."""
        return self._then("window", name, _window_args(count, seconds))

    # ---- iteration -----------------------------------------------------------------------

    def iterate(
        self,
        body: Callable[[Stream], Stream],
        until: Callable[[Any], bool],
        max_rounds: int = 100,
        *,
        name: str | None = None,
    ) -> Stream:
        """Send each item round ``body`` until ``until(item)`` holds (tested as it enters,
        and after each round); items leave at different rounds. An item still going round
        after ``max_rounds`` fails the run (saying how many). The body is stateless
        operators only (map, filter, flat_map, key_by, ...)."""
        flow = self._flow
        loop = LoopId(len(flow.plan.loops))
        label = name or f"iterate#{len(flow.plan.nodes)}"
        gate = flow.plan.add("item_gate", label, (), [(self._node, F)], loop=loop)
        out = body(Stream(flow, gate, loop))
        end = self._body_end(out, loop, label)
        flow.plan.add_loop(LoopSpec(loop, "item", label, gate, end, _rounds(max_rounds), until))
        return Stream(flow, gate, self._loop)

    def iterate_bulk(
        self,
        state: Any,
        body: Callable[[Stream, StateRef], Stream],
        fold: Callable[[Any, Any], Any],
        combine: Callable[[Any, list[Any]], Any],
        until: Callable[[Any, Any], bool],
        max_rounds: int = 100,
        *,
        zero: Any = None,
        delta: Callable[[Any, Any], float] | None = None,
        name: str | None = None,
    ) -> Stream:
        """Rounds over the whole stream: each round runs ``body(stream, state)`` (its
        operators read the round's state with ``state.get()``) over the round's input, folds
        its output per replica (``fold(partial, item)`` from a copy of ``zero``), and the new
        state is ``combine(state, partials)``. The next round's input is this round's output.
        It stops when ``until(old, new)`` holds or after ``max_rounds`` rounds. Returns a
        stream of one item: the final state. ``delta(old, new)``, if given, is shown per
        round in ``Run.progress()``."""
        return self._bulk("bulk", state, body, fold, combine, until, max_rounds, zero, delta, name)

    def replay(
        self,
        state: Any,
        body: Callable[[Stream, StateRef], Stream],
        fold: Callable[[Any, Any], Any],
        combine: Callable[[Any, list[Any]], Any],
        until: Callable[[Any, Any], bool],
        max_rounds: int = 100,
        *,
        zero: Any = None,
        delta: Callable[[Any, Any], float] | None = None,
        name: str | None = None,
    ) -> Stream:
        """Like ``iterate_bulk``, with this stream's items as every round's input (k-means,
        PageRank over an edge list)."""
        return self._bulk(
            "replay", state, body, fold, combine, until, max_rounds, zero, delta, name
        )

    def _bulk(
        self,
        kind: Any,
        state: Any,
        body: Callable[[Stream, StateRef], Stream],
        fold: Callable[[Any, Any], Any],
        combine: Callable[[Any, list[Any]], Any],
        until: Callable[[Any, Any], bool],
        max_rounds: int,
        zero: Any,
        delta: Callable[[Any, Any], float] | None,
        name: str | None,
    ) -> Stream:
        flow = self._flow
        loop = LoopId(len(flow.plan.loops))
        label = name or f"{(kind == 'bulk' and 'iterate_bulk') or 'replay'}#{len(flow.plan.nodes)}"
        ref = StateRef(state)
        gate = flow.plan.add("bulk_gate", label, (), [(self._node, F)], loop=loop)
        out = body(Stream(flow, gate, loop), ref)
        self._body_end(out, loop, label)
        end = flow.plan.add(
            "bulk_end", f"{label}.fold", (zero, fold, kind == "bulk"), [(out._node, F)], loop=loop
        )
        spec = LoopSpec(
            loop, kind, label, gate, end, _rounds(max_rounds), until, state, combine, delta, ref
        )
        flow.plan.add_loop(spec)
        return Stream(flow, end, self._loop)

    def _body_end(self, out: object, loop: LoopId, label: str) -> NodeId:
        if not isinstance(out, Stream) or out._flow is not self._flow:
            raise TypeError(f"{label}: the body must return a stream of the same flow, not {out!r}")
        if out._loop != loop:
            raise ValueError(f"{label}: the body must return a stream made inside it")
        return out._node

    # ---- sinks ---------------------------------------------------------------------------

    def collect(self, *, name: str | None = None) -> Pending[Any]:
        """A Pending of every item, in a list (a dict for a keyed stream), once it ends."""
        node = self._flow.plan.add(
            "collect", name, (), [(self._node, F)], keyed=self._collects_dict(),
            loop=self._loop, replicas=1,
        )  # fmt: skip
        return self._flow._pending(node, self._flow.plan.node(node).name)

    def to_dir(self, path: str | Path, *, name: str | None = None) -> Pending[Any]:
        """Each replica's items as the lines of one file in ``path`` (``part-00000``, ...),
        written atomically when the stream ends; a Pending of the files' paths."""
        node = self._add("to_dir", name, (str(path),), keyed=isinstance(self, KeyedStream))
        return self._flow._pending(node, self._flow.plan.node(node).name)

    def for_each(self, fn: Callable[[Any], object], *, name: str | None = None) -> Pending[Any]:
        """Call ``fn`` on every item; a Pending of None once the stream ends."""
        node = self._add("for_each", name, (fn,))
        return self._flow._pending(node, self._flow.plan.node(node).name)

    def respond(self, *, name: str | None = None) -> Pending[Any]:
        """The sink of a service (``f.requests()`` ... ``respond()``): each item answers the
        request it came from, at its client. A Pending of None once the service stopped."""
        node = self._add("respond", name or "respond")
        return self._flow._pending(node, self._flow.plan.node(node).name)

    def _collects_dict(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} of flow {self._flow.name!r}>"


class KeyedStream(Stream):
    """A stream of ``(key, value)`` pairs; keyed operators keep state per key."""

    __slots__ = ()

    H = Partition.HASH

    def fold(
        self,
        init: Any,
        fn: Callable[[Any, Any], Any],
        *,
        combine: Callable[[Any, Any], Any] | None = None,
        name: str | None = None,
    ) -> KeyedStream:
        """One ``(key, acc)`` per key when the input ends: ``acc = fn(acc, value)`` from a
        copy of ``init``. With ``combine(acc, partial)``, each sending replica folds the
        values of a key in each batch before the hash edge, and partials are combined on
        the replica that owns the key (map-side combining, docs/flows.md): ``combine`` must
        be associative and agree with ``fn`` (sums, counts, minimums)."""
        if combine is None:
            return self._keyed("fold", name, (init, fn), self.H)
        label = name or f"fold#{len(self._flow.plan.nodes) + 1}"
        pre = self._keyed("pre_fold", f"{label}.combine", (init, fn))
        return pre._keyed("reduce", label, (combine,), self.H)

    def scan(
        self, init: Any, fn: Callable[[Any, Any], tuple[Any, Any]], *, name: str | None = None
    ) -> KeyedStream:
        """``fn(state, value) -> (state, output)``: one ``(key, output)`` per item, the state
        kept per key."""
        return self._keyed("scan", name, (init, fn), self.H)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> KeyedStream:
        """Like ``fold``, the first value of each key as its start. ``fn`` must be
        associative (values come in any order): it combines on the sending side too, each
        batch's values of a key reduced before the hash edge."""
        label = name or f"reduce#{len(self._flow.plan.nodes) + 1}"
        pre = self._keyed("pre_reduce", f"{label}.combine", (fn,))
        return pre._keyed("reduce", label, (fn,), self.H)

    def map_values(self, fn: Callable[[Any], Any], *, name: str | None = None) -> KeyedStream:
        return self._keyed("map_values", name, (fn,), self.H)

    def filter(self, fn: Callable[[Any], bool], *, name: str | None = None) -> KeyedStream:
        """Keep the ``(key, value)`` pairs for which ``fn(pair)`` holds."""
        return self._keyed("filter", name, (fn,))

    def inspect(self, fn: Callable[[Any], object], *, name: str | None = None) -> KeyedStream:
        return self._keyed("inspect", name, (fn,))

    def window(
        self, *, count: int | None = None, seconds: float | None = None, name: str | None = None
    ) -> KeyedStream:
        """``(key, [values])`` per ``count`` values of a key, or per ``seconds`` of time."""
        return self._keyed("key_window", name, _window_args(count, seconds), self.H)

    def join(self, other: KeyedStream, *, name: str | None = None) -> KeyedStream:
        """``(key, (left, right))`` for every left and right value with the same key."""
        if not isinstance(other, KeyedStream):
            raise TypeError(f"join: {other!r} is not keyed; key_by it first")
        node = self._add("join", name, (), self.H, keyed=True, others=[other])
        return KeyedStream(self._flow, node, self._loop)

    def pairs(self) -> Stream:
        """This stream as plain ``(key, value)`` items (``collect`` gives a list)."""
        return Stream(self._flow, self._node, self._loop)

    def values(self, *, name: str | None = None) -> Stream:
        return self._then("map", name or f"values#{len(self._flow.plan.nodes)}", (_second,))

    def _collects_dict(self) -> bool:
        return True


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def _window_args(count: int | None, seconds: float | None) -> tuple[int | None, float | None]:
    if (count is None) == (seconds is None):
        raise TypeError("window: give count=N or seconds=T (one of them)")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError(f"window: count must be a positive int, not {count!r}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"window: seconds must be positive, not {seconds!r}")
    return count, seconds


def _rounds(max_rounds: int) -> int:
    if not isinstance(max_rounds, int) or max_rounds < 1:
        raise ValueError(f"max_rounds must be a positive int, not {max_rounds!r}")
    return max_rounds
