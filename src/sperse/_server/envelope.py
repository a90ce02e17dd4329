"""What the server and its worker processes say to each other: a task envelope going in,
a result coming out.

Both are pickles of plain data only (tuples, lists, str, bytes, int), made by the server or by
our own runner. The server reads a result with an unpickler that refuses to look up any class
or function, so reading one never runs code (a worker runs the client's code, and could send
anything); a worker reads an envelope, made by the server, with the plain ``pickle.loads``.
The client's pickles travel inside them as opaque bytes; the server never unpickles those,
the runner does, in a worker. A failure is read back as the
:class:`~sperse._core.events.ErrorInfo` it was made from (a kind this version does not know
becomes ``internal``, as the client would make it): the one error type from the worker to the
client. Standard library and plain sperse modules only (no gRPC): workers and the server both
import this module.

Envelope (server -> worker)::

    ("sperse-envelope/2", task_id, label, server_name, inline_limit, shm_prefix,
     (work_stream, [work_buffer, ...]),
     [(object_id, stream, [buffer, ...]), ...])      # the objects the work refers to

Result (worker -> server)::

    ("done", [(name, type_name, short_repr, stream, [buffer, ...]), ...])
    ("failed", kind, type_name, message, traceback)      # an ErrorInfo's fields

A buffer is ``bytes``, or ``(file_name, size)``: a shared memory file (see
:mod:`sperse._serialize.shm`) the reader maps instead of receiving the bytes. The server
passes the names of the files a client uploaded, and of the files of the objects it holds,
without opening them. A runner writes the buffers of a value that will stay on the server
(at least ``inline_limit`` bytes in all) into new files named ``shm_prefix`` + random, when
``shm_prefix`` is not empty; those files belong to the server once the result arrives.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import field
from typing import Any, get_args

from sperse._core.events import ErrorInfo, ErrorKind
from sperse._core.values import value
from sperse._serialize.shm import valid_name

__all__ = [
    "Buffer",
    "Envelope",
    "PickledBytes",
    "ResultValue",
    "ShmBuffer",
    "pack_envelope",
    "pack_failure",
    "pack_values",
    "unpack_envelope",
    "unpack_result",
]

_ENVELOPE = "sperse-envelope/2"
_DONE = "done"
_FAILED = "failed"
_KINDS: dict[str, ErrorKind] = {kind: kind for kind in get_args(ErrorKind)}


@value
class ShmBuffer:
    """A buffer kept in the shared memory file ``name`` (``size`` bytes)."""

    name: str
    size: int


Buffer = bytes | ShmBuffer


@value
class PickledBytes:
    """A pickle stream and its protocol-5 out-of-band buffers."""

    data: bytes
    buffers: tuple[Buffer, ...] = ()

    @property
    def size(self) -> int:
        if not self.buffers:  # the common case: asked for each value, more than once
            return len(self.data)
        return len(self.data) + sum(
            b.size if isinstance(b, ShmBuffer) else len(b) for b in self.buffers
        )

    def shm_names(self) -> Iterator[str]:
        for b in self.buffers:
            if isinstance(b, ShmBuffer):
                yield b.name


@value
class Envelope:
    task_id: str
    label: str
    server: str
    inline_limit: int
    work: PickledBytes
    objects: Mapping[str, PickledBytes] = field(default_factory=dict)
    shm_prefix: str = ""  # empty: results travel as bytes


@value
class ResultValue:
    """One value a task produced: ``name`` is a statement's def, or "" for a call's value."""

    name: str
    type_name: str
    repr: str
    value: PickledBytes


class _PlainUnpickler(pickle.Unpickler):
    """Reads plain data only: any class or function lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"plain data expected, found a reference to {module}.{name}")


def _plain_loads(payload: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(payload)).load()


def _dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def _plain_buffers(buffers: Sequence[Buffer]) -> list[Any]:
    return [(b.name, b.size) if isinstance(b, ShmBuffer) else b for b in buffers]


def _buffer(item: Any) -> Buffer:
    if isinstance(item, bytes):
        return item
    if (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and valid_name(item[0])
        and isinstance(item[1], int)
        and item[1] >= 0
    ):
        return ShmBuffer(item[0], item[1])
    raise ValueError("malformed pickled value buffers")


def _pickled(stream: Any, buffers: Any) -> PickledBytes:
    if not isinstance(stream, bytes) or not isinstance(buffers, list | tuple):
        raise ValueError("malformed pickled value")
    return PickledBytes(stream, tuple(map(_buffer, buffers)))


def pack_envelope(envelope: Envelope) -> bytes:
    objects = [(oid, p.data, _plain_buffers(p.buffers)) for oid, p in envelope.objects.items()]
    work = envelope.work
    return _dumps(
        (
            _ENVELOPE,
            envelope.task_id,
            envelope.label,
            envelope.server,
            envelope.inline_limit,
            envelope.shm_prefix,
            (work.data, _plain_buffers(work.buffers)),
            objects,
        )
    )


def unpack_envelope(payload: bytes) -> Envelope:
    """Raises ``ValueError`` for anything that ``pack_envelope`` did not make."""
    try:
        tag, task_id, label, server, inline_limit, shm_prefix, work, objects = _plain_loads(payload)
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
        shm_prefix=str(shm_prefix),
    )


def pack_values(values: Sequence[ResultValue]) -> bytes:
    return _dumps(
        (
            _DONE,
            [
                (v.name, v.type_name, v.repr, v.value.data, _plain_buffers(v.value.buffers))
                for v in values
            ],
        )
    )


def pack_failure(error: ErrorInfo) -> bytes:
    return _dumps((_FAILED, error.kind, error.type_name, error.message, error.traceback))


def unpack_result(payload: bytes) -> list[ResultValue] | ErrorInfo:
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
            known = _KINDS.get(str(kind), "internal")
            return ErrorInfo(known, str(type_name), str(message), str(traceback))
    except (pickle.UnpicklingError, TypeError, ValueError, EOFError, IndexError) as exc:
        raise ValueError(f"malformed task result: {exc}") from exc
    raise ValueError(f"malformed task result: unknown tag {result[0]!r}")
