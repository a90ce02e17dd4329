"""The pool's vocabulary, values only (frozen, slotted dataclasses).

- What the pool tells its owner: a task's events, in the one vocabulary of a task's outcome
  (:mod:`sperse._core.events`: ``Started`` with the worker's pid, ``Output``, ``Done`` whose
  value is the runner's result bytes, ``Failed`` with one of the errors made by
  :func:`worker_died`, :func:`cancelled` and :func:`runner_error`; ``where`` is the pool's
  name); a worker's exit (:class:`WorkerExited`); a snapshot (:class:`PoolStats`).
- What the process shell tells the policy (:data:`Event`: the owner's calls, the frames a
  worker sent, its exit, a timer) and what the policy asks of the shell (:data:`Action`: start
  a worker, write a frame, signal or kill it, set a timer, log; and the events above, to
  deliver). See :mod:`sperse._pool.policy` and :mod:`sperse._pool.pool`.
"""

from __future__ import annotations

from typing import Literal, NewType

from sperse._core.events import BackendEvent, ErrorInfo
from sperse._core.values import value

__all__ = [
    "Action",
    "Cancel",
    "Close",
    "Event",
    "Exited",
    "Hangup",
    "InitFailed",
    "Interrupt",
    "Interrupted",
    "Kill",
    "Log",
    "Malformed",
    "Open",
    "PoolStats",
    "Printed",
    "Ready",
    "Reported",
    "Result",
    "RunnerRaised",
    "Send",
    "SendCancel",
    "SetTimer",
    "SpawnFailed",
    "Spawned",
    "StartWorker",
    "Stopped",
    "Submit",
    "Tick",
    "WorkerExited",
    "WorkerId",
    "WriteFailed",
    "cancelled",
    "runner_error",
    "worker_died",
]


def worker_died(message: str) -> ErrorInfo:
    """The error of a task whose worker process died (killed, crashed), or of every task
    once workers cannot start."""
    return ErrorInfo("worker_died", "WorkerDied", message)


def cancelled(message: str) -> ErrorInfo:
    """The error of a task ended by :meth:`WorkerPool.cancel` or :meth:`WorkerPool.close`."""
    return ErrorInfo("cancelled", "TaskCancelled", message)


def runner_error(message: str, traceback: str = "") -> ErrorInfo:
    """The error of a task whose runner raised or could not be loaded (``traceback``: the
    worker's). An error of user code is no runner error: it is in the runner's result."""
    return ErrorInfo("internal", "RunnerError", message, traceback)


@value
class WorkerExited:
    """For ``on_worker_exit``: a worker exited while the pool was open (delivered in order
    with the events, before those of the tasks it failed)."""

    pid: int
    how: str


@value
class PoolStats:
    """A snapshot. ``workers`` are the pids of the pool's live (or starting) workers."""

    workers: tuple[int, ...]
    busy: int
    queued: int
    tasks_done: int
    tasks_failed: int
    workers_replaced: int


WorkerId = NewType("WorkerId", int)  # the policy's name of a worker process, never reused


# -- events: what happened ---------------------------------------------------------------


@value
class Open:
    """The pool was created: start its workers."""


@value
class Submit:
    task_id: str
    payload: bytes
    front: bool = False


@value
class Cancel:
    task_id: str


@value
class Close:
    """Fail every task; from now on, no task is assigned and no worker replaced."""


@value
class Stopped:
    """The shell has stopped every worker (after :class:`Close`)."""


@value
class Tick:
    """A timer set with :class:`SetTimer` fell due."""


@value
class Spawned:
    """:class:`StartWorker` was carried out: the process runs as ``pid``."""

    worker: WorkerId
    pid: int


@value
class SpawnFailed:
    worker: WorkerId
    message: str


@value
class Ready:
    """``READY``: the runner is loaded."""

    worker: WorkerId


@value
class InitFailed:
    """``INIT_FAILED``: the runner cannot be loaded."""

    worker: WorkerId
    message: str
    traceback: str


@value
class Reported:
    """``REPORT``: a remote object's worker ran calls its client sent to it directly
    (:mod:`sperse._pool.direct`): how many ended, and what they printed, as ``(task id,
    stream, text)`` in order. An event from the worker, and the action that hands it to
    the pool's owner (``on_report``), for its books."""

    worker: WorkerId
    calls: int
    output: tuple[tuple[str, str, str], ...] = ()


@value
class Printed:
    """``OUTPUT``: text the task wrote to ``sys.stdout`` or ``sys.stderr`` (a line or more)."""

    worker: WorkerId
    seq: int
    stream: Literal["stdout", "stderr"]
    text: str


@value
class Result:
    """``DONE``: the runner returned ``result``."""

    worker: WorkerId
    seq: int
    result: bytes


@value
class Interrupted:
    """``CANCELLED``: the worker dropped or interrupted the task."""

    worker: WorkerId
    seq: int


@value
class RunnerRaised:
    """``RUNNER_ERROR``."""

    worker: WorkerId
    seq: int
    message: str
    traceback: str


@value
class Malformed:
    """The worker sent a frame that is not in the protocol."""

    worker: WorkerId


@value
class Hangup:
    """The worker's pipe reached its end (it is exiting): send it nothing more."""

    worker: WorkerId


@value
class WriteFailed:
    """A write to the worker's pipe failed: it is gone or going."""

    worker: WorkerId


@value
class Exited:
    """The worker process exited with ``code`` (negative: killed by that signal)."""

    worker: WorkerId
    code: int | None


Event = (
    Open
    | Submit
    | Cancel
    | Close
    | Stopped
    | Tick
    | Spawned
    | SpawnFailed
    | Ready
    | InitFailed
    | Printed
    | Reported
    | Result
    | Interrupted
    | RunnerRaised
    | Malformed
    | Hangup
    | WriteFailed
    | Exited
)


# -- actions: what to do -----------------------------------------------------------------


@value
class StartWorker:
    """Start a worker process; answer with :class:`Spawned` or :class:`SpawnFailed`."""

    worker: WorkerId


@value
class Send:
    """Write ``RUN seq payload`` to the worker."""

    worker: WorkerId
    seq: int
    payload: bytes


@value
class SendCancel:
    """Write ``CANCEL seq``: the worker drops the task if it has not started it."""

    worker: WorkerId
    seq: int


@value
class Interrupt:
    """Interrupt task ``seq`` if the worker runs it now (``cancel_seq`` and ``SIGUSR1``)."""

    worker: WorkerId
    seq: int


@value
class Kill:
    """``SIGKILL`` the worker; its :class:`Exited` follows."""

    worker: WorkerId


@value
class SetTimer:
    """Feed :class:`Tick` at ``at`` (or earlier: a tick is harmless)."""

    at: float


@value
class Log:
    level: int
    message: str


Action = (
    StartWorker
    | Send
    | SendCancel
    | Interrupt
    | Kill
    | SetTimer
    | Log
    | WorkerExited
    | Reported
    | BackendEvent
)
