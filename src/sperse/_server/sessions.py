"""The state of a session and of its tasks, as the server's state machine keeps it.

Pure data with the few rules that concern one session alone: which terminal events it keeps
for resubmissions after a resume (the last ``RETAIN_EVENTS``, at most ``_RETAIN_BYTES``
inline bytes of them), and how a failure's text is clipped before it is recorded.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sperse._core import Done, Failed
from sperse._server.envelope import PickledBytes
from sperse._server.model import RETAIN_EVENTS, TEXT_MAX, HeldObject, PeerRef, inline_bytes

if TYPE_CHECKING:
    from sperse._server.remote import RemoteObject

__all__ = ["SessionState", "TaskState", "clip", "clipped"]

_RETAIN_BYTES = 32 << 20  # inline bytes of the terminal events a session keeps


@dataclass(slots=True, eq=False)
class TaskState:
    session: SessionState
    task_id: str
    label: str
    inline_limit: int
    retries_left: int
    retries: int
    work: PickledBytes | None  # kept only while a retry may need it
    objects: dict[str, HeldObject] = field(default_factory=dict)  # used: pinned till the end
    uploads: tuple[str, ...] = ()  # its shared memory files
    pool_id: str = ""
    cancel_requested: bool = False
    worker: int = 0  # of the current attempt, once it started
    announced: bool = True  # its Started was emitted (or there is none to emit)
    waiting: dict[str, PeerRef] = field(default_factory=dict)  # pulls it waits for
    obj: RemoteObject | None = None  # the remote object it creates or calls
    creates: bool = False
    pip: tuple[str, ...] = ()  # runs in that pip environment's pool
    queued: bool = False  # in its session's ``ready`` queue, not handed to a pool

    @property
    def what(self) -> str:
        return f"task {self.label!r}" if self.label else f"task {self.task_id}"

    @property
    def log_key(self) -> str:
        return f"{self.session.session_id}/{self.task_id}"


class SessionState:
    """One client's tasks and objects; outlives its streams."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.tasks: dict[str, TaskState] = {}  # by the client's task id: not finished yet
        self.finished: collections.OrderedDict[str, Done | Failed] = collections.OrderedDict()
        self.finished_bytes = 0
        self.objects: dict[str, HeldObject] = {}
        self.object_bytes = 0
        self.remote_objects: dict[str, RemoteObject] = {}  # it created, alive
        # Its tasks ready to run that wait for room in the pools (see TaskTable.dispatch),
        # how many of its tasks are in the pools, and whether its client has so many events
        # unread that none may start (back-pressure).
        self.ready: collections.deque[TaskState] = collections.deque()
        self.in_pools = 0
        self.paused = False
        self.attached = False  # a stream is attached
        self.expires = False  # its grace period runs (a timer is set)
        self.closed = False

    def retain(self, event: Done | Failed) -> None:
        size = inline_bytes(event) if isinstance(event, Done) else 0
        if size > _RETAIN_BYTES:
            return
        self.finished[event.task_id] = event
        self.finished_bytes += size
        while len(self.finished) > RETAIN_EVENTS or self.finished_bytes > _RETAIN_BYTES:
            _, old = self.finished.popitem(last=False)
            if isinstance(old, Done):
                self.finished_bytes -= inline_bytes(old)

    def __repr__(self) -> str:
        return f"<Session {self.session_id} tasks={len(self.tasks)} objects={len(self.objects)}>"


def clip(text: str, limit: int = TEXT_MAX, *, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep_end:
        return f"[{cut} characters cut]\n" + text[-limit:]
    return text[:limit] + f" [{cut} characters cut]"


def clipped(event: Failed) -> Failed:
    error = event.error
    message, traceback = clip(error.message), clip(error.traceback, keep_end=True)
    clipped_error = dataclasses.replace(error, message=message, traceback=traceback)
    return Failed(event.task_id, event.where, clipped_error)
