"""Ray's exceptions as Sperse's errors, in one place (docs/ray.md, "Errors").

A task's own errors never get here: the worker reports them as data (``ErrorInfo``). These
are the task's fate in Ray: cancelled, its worker or node died, it could not be scheduled.
The errors of remote objects' actors (``RayActorError``) become ``ObjectLost`` in
:mod:`.objects`, which knows what became of each object.
"""

from __future__ import annotations

from sperse._backends.ray.imports import import_ray
from sperse._core import ErrorInfo, ErrorKind
from sperse._exec.runner import type_name

__all__ = ["first_line", "ray_error"]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ray_error(exc: BaseException, node_id: str) -> ErrorInfo:
    """A Ray exception from ``ray.get`` of a task's summary, as Sperse's error data.

    User code's exceptions never get here (``_run_task`` reports them as data); these are the
    task's fate in Ray: cancelled, its worker or node died, it could not be scheduled.
    """
    ray = import_ray()
    errors = ray.exceptions
    where = f" on Ray node {node_id[:8]}" if node_id else ""
    kind: ErrorKind
    if isinstance(exc, errors.TaskCancelledError):
        return ErrorInfo("cancelled", "TaskCancelled", "cancelled")
    if isinstance(exc, errors.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        name = type_name(cause) if cause is not None else exc.function_name
        if isinstance(cause, KeyboardInterrupt | errors.TaskCancelledError):
            return ErrorInfo("cancelled", "TaskCancelled", "cancelled")
        message = str(cause) if cause is not None else first_line(exc)
        return ErrorInfo("raised", name, message, str(exc.traceback_str))
    if isinstance(exc, errors.OutOfMemoryError):
        kind, message = "worker_died", f"Ray killed its worker{where} to free memory"
    elif isinstance(exc, errors.WorkerCrashedError):
        kind, message = "worker_died", f"the Ray worker running it died{where}"
    elif isinstance(exc, errors.NodeDiedError | errors.LocalRayletDiedError):
        kind, message = "server_lost", f"the Ray node running it died{where}"
    elif isinstance(exc, errors.TaskUnschedulableError):
        kind, message = "server_lost", "no Ray node can run it now (its pinned node left?)"
    elif isinstance(exc, errors.ObjectLostError):
        kind, message = "server_lost", "an input held in Ray was lost"
    else:
        kind, message = "internal", f"Ray failed to run it{where}"
    return ErrorInfo(kind, type(exc).__name__, f"{message}: {first_line(exc)}")
