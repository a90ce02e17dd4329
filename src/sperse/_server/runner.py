"""The runner of a server's worker processes: a task envelope in, a result out.

Loaded in every worker as ``"sperse._server.runner:run"`` (see :mod:`sperse._pool.worker`).
The workers of remote objects run :mod:`sperse._server.actor_runner`, which opens envelopes
and encodes results with the functions here (``load_work``, ``pack_result``), so that the
server treats a method's result exactly as a task's.

Invariants:

- The client's pickles are opened here, in a worker, never in the server process: the work
  itself and the held objects it refers to, which are resolved by id from the envelope and
  unpickled at most once per task. Their out-of-band buffers arrive writable, so a numpy
  array arrives writable, as it would locally: a buffer in a shared memory file is mapped
  copy-on-write (nothing is copied unless the task writes to it), one sent as bytes is
  copied into writable memory.
- Whatever the user's code does, the runner returns a result (values or a failure as data):
  a module missing while unpickling is ``missing_module`` naming the module and the server;
  other unpickling errors are ``serialization``; an exception of the user's code, even
  ``SystemExit``, is ``raised`` with its traceback; an unpicklable result is
  ``serialization`` naming the value. Only ``TaskInterrupted`` (a cancel) passes through.
- Each value is pickled on its own, with its type name, a repr of at most ``REPR_MAX``
  characters and its buffers apart; the server decides what stays in its object store, by
  the same rule the runner uses to put the big buffers (``SHM_MIN`` and up) of a value that
  will stay (``inline_limit`` bytes and up) into new shared memory files, which are the
  server's once the result is returned. A failure after some were written removes them.
"""

from __future__ import annotations

import pickle
from typing import Any

from sperse._core import CallTask, ErrorInfo, Put, StatementTask, Work
from sperse._exec.runner import (
    cannot_send_back,
    encode_error,
    execute,
    object_work_from_wire,
    short_repr,
    type_name,
    work_from_wire,
)
from sperse._pool.worker import TaskInterrupted, keep_until_answered
from sperse._serialize import describe, dumps_oob, loads_oob
from sperse._serialize import shm as _shm
from sperse._server.envelope import (
    Buffer,
    Envelope,
    PickledBytes,
    ResultValue,
    ShmBuffer,
    pack_failure,
    pack_values,
    unpack_envelope,
)
from sperse.errors import SerializationError

__all__ = ["LoadFailed", "load_work", "pack_result", "run"]


class LoadFailed(Exception):
    """The work of an envelope cannot be loaded: ``error`` says why, as a result."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


def run(payload: bytes) -> bytes:
    envelope = unpack_envelope(payload)  # made by the server: a failure here is a server bug
    try:
        work = load_work(envelope)
    except LoadFailed as failed:
        return pack_failure(failed.error)
    assert isinstance(work, StatementTask | CallTask | Put)
    keep_until_answered(work)  # its arguments may map big files: unmapped after the reply
    try:
        value = execute(work)
    except TaskInterrupted:
        raise
    except BaseException as exc:  # the user's code, SystemExit included, ends here
        return pack_failure(encode_error(exc, skip_frames=2))  # run() and execute()
    return pack_result(work, value, envelope)


def pack_result(work: Work, value: Any, envelope: Envelope) -> bytes:
    """The result of ``work`` that returned ``value``: its values, or a failure when one
    cannot be pickled."""
    keep_until_answered(value)
    written: list[str] = []
    try:
        return pack_values(_encode_values(work, value, envelope, written))
    except LoadFailed as failed:
        _shm.unlink(written)
        return pack_failure(failed.error)
    except BaseException:
        _shm.unlink(written)
        raise


def load_work(envelope: Envelope, *, objects: bool = False) -> Work:
    """The work of ``envelope``, its held objects resolved: a statement or a call, or
    (``objects``) a remote object's creation or method call. Raises ``LoadFailed``.

    ``resolve`` refers to itself (a held object may name another), a cycle only the garbage
    collector would break: ``loaded`` is emptied once the work is loaded, so that the held
    values (and the files they map) go as soon as the work lets go of them, after the reply,
    not at some later collection (a call per second on a 100 MB value kept a new mapping of
    it each time, till then)."""
    loaded: dict[str, Any] = {}

    def resolve(object_id: str) -> Any:
        if object_id not in loaded:
            held = envelope.objects.get(object_id)
            if held is None:
                raise pickle.UnpicklingError(
                    f"object {object_id!r} is not among the objects this task was given"
                )
            loaded[object_id] = _loads(held, resolve, f"object {object_id}")
        return loaded[object_id]

    what = f"task {envelope.label!r}" if envelope.label else "the task"
    try:
        obj = _loads(envelope.work, resolve if envelope.objects else None, what)
    except ModuleNotFoundError as exc:
        module = exc.name or str(exc)
        raise LoadFailed(
            ErrorInfo(
                "missing_module",
                "ModuleNotFoundError",
                f"module {module!r} is not installed on server {envelope.server!r}: install it "
                "there, or keep it in a file under the client's working directory so that it "
                "is sent along with the code",
            )
        ) from None
    except SerializationError as exc:
        raise LoadFailed(
            ErrorInfo("serialization", "SerializationError", f"on {envelope.server}: {exc}")
        ) from None
    finally:
        loaded.clear()
    work: Work | None = object_work_from_wire(obj) if objects else work_from_wire(obj)
    if work is None:
        expected = "remote object work" if objects else "a StatementTask or CallTask"
        raise LoadFailed(
            ErrorInfo(
                "serialization",
                "SerializationError",
                f"{what} is a {describe(obj)}, not {expected}",
            )
        )
    return work


def _loads(held: PickledBytes, resolve: Any, what: str) -> Any:
    try:
        buffers = [_writable(b) for b in held.buffers]
    except _shm.ShmError as exc:
        raise SerializationError(f"cannot load {what}: {exc}") from None
    return loads_oob(held.data, buffers, resolve=resolve, what=what)


def _writable(buffer: Buffer) -> memoryview:
    """A writable view of ``buffer``: a numpy array arrives writable, as it was where it came
    from. A shared memory file is mapped copy-on-write; bytes are copied."""
    if isinstance(buffer, ShmBuffer):
        return _shm.map_copy(buffer.name, buffer.size)
    return memoryview(bytearray(buffer))


def _encode_values(
    work: Work, value: Any, envelope: Envelope, written: list[str]
) -> list[ResultValue]:
    if isinstance(work, StatementTask) and not work.is_expression:
        return [_encode_value(name, part, envelope, written) for name, part in value.items()]
    return [_encode_value("", value, envelope, written)]


def _encode_value(name: str, value: Any, envelope: Envelope, written: list[str]) -> ResultValue:
    what = f"`{name}`" if name else "the result"
    try:
        data, buffers, _ = dumps_oob(value, what=what)
    except SerializationError as exc:
        message = cannot_send_back(name, value, exc.__cause__ or exc)
        raise LoadFailed(ErrorInfo("serialization", "SerializationError", message)) from None
    views = [b.raw() for b in buffers]
    size = len(data) + sum(v.nbytes for v in views)
    keep = bool(envelope.shm_prefix) and size >= envelope.inline_limit
    held = PickledBytes(data, tuple(_buffer(v, envelope.shm_prefix, written, keep) for v in views))
    return ResultValue(name, type_name(value), short_repr(value), held)


def _buffer(view: memoryview, prefix: str, written: list[str], keep: bool) -> Buffer:
    """A result buffer as bytes, or (for a value that stays on the server) a new shared
    memory file when it is big; bytes again if the file cannot be written."""
    if keep and view.nbytes >= _shm.SHM_MIN:
        try:
            name = _shm.write(prefix, view)
        except _shm.ShmError:
            return bytes(view)
        written.append(name)
        return ShmBuffer(name, view.nbytes)
    return bytes(view)
