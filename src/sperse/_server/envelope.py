"""What the server and its worker processes say to each other: a task envelope going in,
a result coming out.

Both are pickles of plain data only (tuples, lists, str, bytes, int), made by the server or by
our own runner, and read with an unpickler that refuses to look up any class or function: so
reading one never runs code. The client's pickles travel inside them as opaque bytes; the
server never unpickles those, the runner does, in a worker. Standard library only: workers
and the server both import this module.

Envelope (server -> worker)::

    ("sperse-envelope/1", task_id, label, server_name, inline_limit,
     (work_stream, [work_buffer, ...]),
     [(object_id, stream, [buffer, ...]), ...])      # the objects the work refers to

Result (worker -> server)::

    ("done", [(name, type_name, short_repr, stream, [buffer, ...]), ...])
    ("failed", kind, type_name, message, traceback)
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Envelope",
    "PickledBytes",
    "ResultFailure",
    "ResultValue",
    "pack_envelope",
    "pack_failure",
    "pack_values",
    "unpack_envelope",
    "unpack_result",
]

_ENVELOPE = "sperse-envelope/1"
_DONE = "done"
_FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PickledBytes:
    """A pickle stream and its protocol-5 out-of-band buffers, as bytes."""

    data: bytes
    buffers: tuple[bytes, ...] = ()

    @property
    def size(self) -> int:
        return len(self.data) + sum(len(b) for b in self.buffers)


@dataclass(frozen=True, slots=True)
class Envelope:
    task_id: str
    label: str
    server: str
    inline_limit: int
    work: PickledBytes
    objects: Mapping[str, PickledBytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResultValue:
    """One value a task produced: ``name`` is a statement's def, or "" for a call's value."""

    name: str
    type_name: str
    repr: str
    value: PickledBytes


@dataclass(frozen=True, slots=True)
class ResultFailure:
    kind: str
    type_name: str
    message: str
    traceback: str = ""


class _PlainUnpickler(pickle.Unpickler):
    """Reads plain data only: any class or function lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"plain data expected, found a reference to {module}.{name}")


def _plain_loads(payload: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(payload)).load()


def _dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def _pickled(stream: Any, buffers: Any) -> PickledBytes:
    if not isinstance(stream, bytes) or not isinstance(buffers, list | tuple):
        raise ValueError("malformed pickled value")
    if not all(isinstance(b, bytes) for b in buffers):
        raise ValueError("malformed pickled value buffers")
    return PickledBytes(stream, tuple(buffers))


def pack_envelope(envelope: Envelope) -> bytes:
    objects = [(oid, p.data, list(p.buffers)) for oid, p in envelope.objects.items()]
    return _dumps(
        (
            _ENVELOPE,
            envelope.task_id,
            envelope.label,
            envelope.server,
            envelope.inline_limit,
            (envelope.work.data, list(envelope.work.buffers)),
            objects,
        )
    )


def unpack_envelope(payload: bytes) -> Envelope:
    """Raises ``ValueError`` for anything that ``pack_envelope`` did not make."""
    try:
        tag, task_id, label, server, inline_limit, work, objects = _plain_loads(payload)
    except (pickle.UnpicklingError, TypeError, ValueError, EOFError) as exc:
        raise ValueError(f"malformed task envelope: {exc}") from exc
    if tag != _ENVELOPE:
        raise ValueError(f"unknown task envelope {tag!r}")
    return Envelope(
        task_id=str(task_id),
        label=str(label),
        server=str(server),
        inline_limit=int(inline_limit),
        work=_pickled(*work),
        objects={str(oid): _pickled(data, buffers) for oid, data, buffers in objects},
    )


def pack_values(values: Sequence[ResultValue]) -> bytes:
    return _dumps(
        (
            _DONE,
            [(v.name, v.type_name, v.repr, v.value.data, list(v.value.buffers)) for v in values],
        )
    )


def pack_failure(failure: ResultFailure) -> bytes:
    return _dumps((_FAILED, failure.kind, failure.type_name, failure.message, failure.traceback))


def unpack_result(payload: bytes) -> list[ResultValue] | ResultFailure:
    """Raises ``ValueError`` for anything that ``pack_values``/``pack_failure`` did not make."""
    try:
        result = _plain_loads(payload)
        if result[0] == _DONE:
            return [
                ResultValue(str(name), str(type_name), str(short), _pickled(data, buffers))
                for name, type_name, short, data, buffers in result[1]
            ]
        if result[0] == _FAILED:
            _, kind, type_name, message, traceback = result
            return ResultFailure(str(kind), str(type_name), str(message), str(traceback))
    except (pickle.UnpicklingError, TypeError, ValueError, EOFError, IndexError) as exc:
        raise ValueError(f"malformed task result: {exc}") from exc
    raise ValueError(f"malformed task result: unknown tag {result[0]!r}")
