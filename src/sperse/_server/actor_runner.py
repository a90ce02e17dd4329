"""The runner of a remote object's worker: the one instance of the object in this process.

Loaded as ``"sperse._server.actor_runner:run"`` by a pool of one worker per remote object
(see :mod:`sperse._server.core`), whose ``concurrency`` is the object's ``max_concurrency``.
Envelopes and results are those of :mod:`sperse._server.runner`, so the server treats a
method's result exactly as a task's (small values inline, big ones kept in its store) and
an exception comes back with its remote traceback.

Invariants:

- ``ObjectCreate`` builds the instance; its result is ``None``, or, when it asks for it
  (``direct``) in a worker that runs one call at a time, ``(DIRECT, socket name, secret)``:
  how its client sends calls to this process directly (:mod:`sperse._pool.direct`; the
  client's backend takes the tuple out of the result). A later create in the same process
  replaces it (the server sends one per worker: at the start, and after the worker
  was replaced). ``ObjectCall`` runs a method or reads an attribute. Both are hosted as
  :mod:`sperse._exec.objects` hosts every remote object (public names only; ``async def``
  methods awaited on the object's event loop, N at once with ``max_concurrency`` N; a
  cancel, an interrupt of the waiting thread, cancels the coroutine); what it refuses comes
  back as ``raised``, without a traceback of ours.
- A call that reaches a worker without an instance (it was replaced, and the server has
  not rebuilt the object) fails with kind ``object_lost``.
"""

from __future__ import annotations

import os

from sperse._core import ErrorInfo, ObjectCall, ObjectCreate
from sperse._exec.objects import ObjectHost, Refused, our_frames
from sperse._exec.runner import encode_error
from sperse._pool.worker import TaskInterrupted, keep_until_answered, open_direct
from sperse._server.envelope import Envelope, pack_failure, unpack_envelope
from sperse._server.runner import LoadFailed, load_work, pack_result

__all__ = ["DIRECT", "run"]

DIRECT = "sperse-direct/1"  # the first item of a create's result that says how to call directly

_host = ObjectHost()  # the one object of this worker
_OUR_FILES = frozenset({__file__})


def run(payload: bytes) -> bytes:
    envelope = unpack_envelope(payload)  # made by the server: a failure here is a server bug
    try:
        work = load_work(envelope, objects=True)
    except LoadFailed as failed:
        return pack_failure(failed.error)
    keep_until_answered(work)  # its arguments may map big files: unmapped after the reply
    if isinstance(work, ObjectCreate):
        return _create(work, envelope)
    if isinstance(work, ObjectCall):
        return _call(work, envelope)
    return pack_failure(  # a close is the server's business: it never reaches a worker
        ErrorInfo("internal", "RunnerError", f"{type(work).__name__} reached a worker")
    )


def _create(work: ObjectCreate, envelope: Envelope) -> bytes:
    try:
        _host.create(work)
    except TaskInterrupted:
        raise
    except BaseException as exc:  # the constructor's error, SystemExit included
        return pack_failure(_user_error(exc))
    direct = open_direct() if work.direct else None
    return pack_result(work, None if direct is None else (DIRECT, *direct), envelope)


def _call(work: ObjectCall, envelope: Envelope) -> bytes:
    if not _host.built:
        return pack_failure(
            ErrorInfo(
                "object_lost",
                "ObjectLost",
                f"remote object {work.object_id} is not built in worker {os.getpid()} "
                f"on server {envelope.server!r} (its worker was replaced): create it again",
            )
        )
    try:
        value = _host.call(work)
    except Refused as refused:
        return pack_failure(ErrorInfo("raised", refused.type_name, refused.message))
    except TaskInterrupted:
        raise
    except BaseException as exc:  # the method's error, SystemExit included
        return pack_failure(_user_error(exc))
    return pack_result(work, value, envelope)


def _user_error(exc: BaseException) -> ErrorInfo:
    """``exc`` as a failure whose traceback starts at the user's code."""
    return encode_error(exc, skip_frames=our_frames(exc.__traceback__, _OUR_FILES))
