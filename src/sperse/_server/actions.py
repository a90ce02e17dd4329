"""What the server's state machine (:mod:`sperse._server.state`) asks its driver to do.

The machine decides; the driver (:class:`sperse._server.core.ServerCore`) does, in the order
the actions come: it owns the worker pools, the timers, the pull tasks, the files and the
streams. Some actions may not be doable (a pool that never started, a task still waiting for
its pip environment when it is cancelled); the driver then tells the machine with an event
(``ServerState.attempt_failed``), never by deciding itself.

Pool ids: ``SESSION/ATTEMPT`` for the attempts of tasks (each attempt has its own), and
``rebuild/OBJECT/N`` for the rebuilds of remote objects.
"""

from __future__ import annotations

from sperse._core import BackendEvent
from sperse._core.values import value
from sperse._server.model import PeerRef

__all__ = [
    "Action",
    "Cancel",
    "CancelObjectCall",
    "CancelPull",
    "Emit",
    "EndSession",
    "EndTaskLog",
    "Log",
    "SetAnnounceTimer",
    "SetExpiry",
    "StartObject",
    "StartPull",
    "StopObject",
    "Submit",
    "SubmitToObject",
    "Sweep",
    "TaskLogOutput",
    "Unlink",
    "log",
    "pool_of",
]


@value
class Emit:
    """Put ``event`` in the session's outbox, and wake the stream attached to it."""

    session_id: str
    event: BackendEvent


@value
class EndSession:
    """The session has ended: drop its outbox; nothing more is sent to it."""

    session_id: str


@value
class Log:
    """A structured log line (:func:`sperse._server.logs.log_event`)."""

    level: int
    event: str
    fields: tuple[tuple[str, object], ...] = ()

    def get(self, name: str) -> object:
        return dict(self.fields).get(name)


def log(level: int, event: str, **fields: object) -> Log:
    return Log(level, event, tuple(fields.items()))


@value
class Submit:
    """Run an attempt in the server's pool (``pip`` empty) or in that pip environment's. Not
    doable (no pool, it is closed): the driver fails the attempt."""

    pool_id: str
    payload: bytes
    pip: tuple[str, ...] = ()


@value
class Cancel:
    """Cancel an attempt of the server's pool or of a pip environment's. Still queued in the
    driver (the pool is starting, the environment is being installed): the driver fails it
    with ``TaskCancelled``; running: the pool's ``Failed`` comes later."""

    pool_id: str
    pip: tuple[str, ...] = ()


@value
class StartObject:
    """Start the one-worker pool of a remote object; its create (``pool_id``, ``payload``)
    runs first there, before the calls submitted to it meanwhile."""

    object_id: str
    label: str
    max_concurrency: int
    pool_id: str
    payload: bytes


@value
class SubmitToObject:
    """Run a call (or, ``front``, a rebuild) in the object's pool; queued while it starts."""

    object_id: str
    pool_id: str
    payload: bytes
    front: bool = False


@value
class CancelObjectCall:
    """Queued in the driver: failed with ``TaskCancelled``; else the pool cancels it (which
    never kills the object's worker)."""

    object_id: str
    pool_id: str


@value
class StopObject:
    """Close the object's pool (and drop what is queued for it), without blocking the loop."""

    object_id: str


@value
class Unlink:
    """Unlink these shared memory files: ``soon`` once the events queued now are on their way
    (freeing a big file's pages takes milliseconds), else at once."""

    names: tuple[str, ...]
    soon: bool = True


@value
class Sweep:
    """Soon, unlink every file whose name starts with ``prefix`` (an attempt's)."""

    prefix: str


@value
class StartPull:
    """Pull ``ref`` from its server (its big buffers to files named ``shm_prefix`` + random),
    then report ``ServerState.pulled`` or ``pull_failed`` with ``pull_id``."""

    pull_id: int
    ref: PeerRef
    shm_prefix: str


@value
class CancelPull:
    pull_id: int


@value
class SetAnnounceTimer:
    """Call ``ServerState.announce`` at time ``at`` (the machine's clock); None: no timer.
    Replaces the timer set before."""

    at: float | None


@value
class SetExpiry:
    """Call ``ServerState.expire`` for the session at ``at``; None: cancel its timer."""

    session_id: str
    at: float | None


@value
class TaskLogOutput:
    """Keep what a task printed, for ``sperse logs`` (``key``: ``SESSION/TASK``)."""

    key: str
    stream: str
    text: str


@value
class EndTaskLog:
    key: str


Action = (
    Emit
    | EndSession
    | Log
    | Submit
    | Cancel
    | StartObject
    | SubmitToObject
    | CancelObjectCall
    | StopObject
    | Unlink
    | Sweep
    | StartPull
    | CancelPull
    | SetAnnounceTimer
    | SetExpiry
    | TaskLogOutput
    | EndTaskLog
)


def pool_of(action: Action) -> tuple[str, ...] | None:
    """The pool a submit goes to (consecutive ones go in one call); None: not a submit."""
    if isinstance(action, Submit):
        return ("tasks", *action.pip)
    if isinstance(action, SubmitToObject):
        return ("object", action.object_id, "front" if action.front else "")
    return None
