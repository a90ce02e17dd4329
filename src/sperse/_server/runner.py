"""The runner of a server's worker processes: a task envelope in, a result out.

Loaded in every worker as ``"sperse._server.runner:run"`` (see :mod:`sperse._pool.worker`).

Invariants:

- The client's pickles are opened here, in a worker, never in the server process: the work
  itself and the held objects it refers to, which are resolved by id from the envelope and
  unpickled at most once per task. Their out-of-band buffers are copied into writable
  memory, so a numpy array arrives writable, as it would locally.
- Whatever the user's code does, the runner returns a result (values or a failure as data):
  a module missing while unpickling is ``missing_module`` naming the module and the server;
  other unpickling errors are ``serialization``; an exception of the user's code, even
  ``SystemExit``, is ``raised`` with its traceback; an unpicklable result is
  ``serialization`` naming the value. Only ``TaskInterrupted`` (a cancel) passes through.
- Each value is pickled on its own, with its type name, a repr of at most ``REPR_MAX``
  characters and its buffers apart; the server decides what stays in its object store.
"""

from __future__ import annotations

import pickle
import reprlib
from typing import Any

from sperse._backends.base import CallTask, StatementTask
from sperse._backends.runner import encode_error, execute
from sperse._pool.worker import TaskInterrupted
from sperse._serialize import describe, dumps_oob, loads_oob
from sperse._server.envelope import (
    Envelope,
    PickledBytes,
    ResultFailure,
    ResultValue,
    pack_failure,
    pack_values,
    unpack_envelope,
)
from sperse.errors import SerializationError

__all__ = ["REPR_MAX", "run", "short_repr", "type_name"]

REPR_MAX = 80

_repr = reprlib.Repr()
_repr.maxstring = REPR_MAX
_repr.maxother = REPR_MAX
_repr.maxlong = REPR_MAX


class _Failed(Exception):
    def __init__(self, failure: ResultFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def run(payload: bytes) -> bytes:
    envelope = unpack_envelope(payload)  # made by the server: a failure here is a server bug
    try:
        work = _load_work(envelope)
    except _Failed as failed:
        return pack_failure(failed.failure)
    try:
        value = execute(work)
    except TaskInterrupted:
        raise
    except BaseException as exc:  # the user's code, SystemExit included, ends here
        return pack_failure(_raised(exc))
    try:
        return pack_values(_encode_values(work, value))
    except _Failed as failed:
        return pack_failure(failed.failure)


def _raised(exc: BaseException) -> ResultFailure:
    info = encode_error(exc, skip_frames=2)  # run() and execute()
    return ResultFailure("raised", info.type_name, info.message, info.traceback)


def _load_work(envelope: Envelope) -> StatementTask | CallTask:
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
        work = _loads(envelope.work, resolve, what)
    except ModuleNotFoundError as exc:
        module = exc.name or str(exc)
        raise _Failed(
            ResultFailure(
                "missing_module",
                "ModuleNotFoundError",
                f"module {module!r} is not installed on server {envelope.server!r}: install it "
                "there, or keep it in a file under the client's working directory so that it "
                "is sent along with the code",
            )
        ) from None
    except SerializationError as exc:
        raise _Failed(
            ResultFailure("serialization", "SerializationError", f"on {envelope.server}: {exc}")
        ) from None
    if not isinstance(work, StatementTask | CallTask):
        raise _Failed(
            ResultFailure(
                "serialization",
                "SerializationError",
                f"{what} is a {describe(work)}, not a StatementTask or CallTask",
            )
        )
    return work


def _loads(held: PickledBytes, resolve: Any, what: str) -> Any:
    # Writable copies: a numpy array arrives writable, as it was where it came from.
    buffers = [memoryview(bytearray(b)) for b in held.buffers]
    return loads_oob(held.data, buffers, resolve=resolve, what=what)


def _encode_values(work: StatementTask | CallTask, value: Any) -> list[ResultValue]:
    if isinstance(work, StatementTask) and not work.is_expression:
        return [_encode_value(name, part) for name, part in value.items()]
    return [_encode_value("", value)]


def _encode_value(name: str, value: Any) -> ResultValue:
    what = f"`{name}`" if name else "the result"
    try:
        data, buffers, _ = dumps_oob(value, what=what)
    except SerializationError as exc:
        cause = exc.__cause__ or exc
        if name:
            message = (
                f"cannot send `{name}` ({describe(value)}) back from the remote cell: {cause}. "
                "Keep it remote (use it inside the remote cell), delete it at the end of the "
                "cell, or make it picklable."
            )
        else:
            message = (
                f"cannot send the result ({describe(value)}) back: {cause}. "
                "Return something picklable."
            )
        raise _Failed(ResultFailure("serialization", "SerializationError", message)) from None
    held = PickledBytes(data, tuple(bytes(b.raw()) for b in buffers))
    return ResultValue(name, type_name(value), short_repr(value), held)


def type_name(value: Any) -> str:
    """``module.qualname`` of the value's type (just ``qualname`` for builtins)."""
    kind = type(value)
    module = getattr(kind, "__module__", "") or ""
    qualname = getattr(kind, "__qualname__", kind.__name__)
    return qualname if module == "builtins" else f"{module}.{qualname}"


def short_repr(value: Any) -> str:
    """One line of at most ``REPR_MAX`` characters; never raises."""
    try:
        text = _repr.repr(value)
    except Exception as exc:  # reprlib catches most; a broken __repr__ of a container may not
        text = f"<{type_name(value)}: repr failed with {type(exc).__name__}>"
    text = " ".join(text.split())
    if len(text) > REPR_MAX:
        text = text[: REPR_MAX - 1] + "…"
    return text
