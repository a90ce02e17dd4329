"""Why a submitted task is refused before it is queued: pure checks of a ``TaskRequest``."""

from __future__ import annotations

from sperse._core import ErrorInfo, Failed
from sperse._server.model import TaskRequest
from sperse._server.sessions import SessionState

__all__ = ["refusal", "what"]


def what(request: TaskRequest) -> str:
    """The task, as a message names it."""
    return f"task {request.label!r}" if request.label else f"task {request.task_id}"


def refusal(request: TaskRequest, session: SessionState, server: str) -> Failed | None:
    """Why server ``server`` cannot run ``request`` for ``session`` (None: it can, as far as
    the request itself tells; a remote object it names is checked next)."""
    task_id = request.task_id
    if request.over:
        message = (
            f"{what(request)} was refused by server {server!r}: {request.over} (the bounds a "
            "server keeps for every client are listed in docs/server.md, 'Bounds')"
        )
        return Failed(task_id, server, ErrorInfo("raised", "ValueError", message))
    if request.work is None:
        return Failed(
            task_id, server, ErrorInfo("serialization", "SerializationError", request.refused)
        )
    if not request.work.data:
        return Failed(
            task_id,
            server,
            ErrorInfo(
                "internal",
                "UnknownTask",
                f"{what(request)} is not known to server {server!r} and came without work: it "
                "finished too long ago to be remembered, or its session was lost",
            ),
        )
    if request.refs:
        elsewhere = {p.object_id for p in request.peer_refs}
        missing = [r for r in request.refs if r not in session.objects and r not in elsewhere]
    else:
        missing = []
    if missing:
        return Failed(
            task_id,
            server,
            ErrorInfo(
                "internal",
                "UnknownObject",
                f"{what(request)} uses object {missing[0]!r}, which server {server!r} does not "
                "hold (it was released, or its session expired): compute it again",
            ),
        )
    op = request.object
    if op is not None and op.kind not in ("create", "call"):
        return Failed(
            task_id,
            server,
            ErrorInfo(
                "internal",
                "UnknownObjectOp",
                f"{what(request)}: {op.kind!r} is not an operation on remote objects this server "
                "knows (create, call, close): install the same sperse version on both sides",
            ),
        )
    return None
