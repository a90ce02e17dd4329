"""The tasks servers report (``Coordinator.ReportTasks``), into the coordinator's dashboard.

A server sends its task events in batches (:mod:`sperse._server.task_feed`), and only when
its join reply asked for them (``report_tasks``: the coordinator serves a dashboard). Here
each note becomes a call on the dashboard's :class:`~sperse._dashboard.hub.Hub`, keyed
``SERVER/<word>.s<N>/TASK`` (a task id is unique within its client's session only).

Invariants:

- Notes are applied in the order they came; the times are the server's (wall clock).
- When a server leaves or is removed, its tasks that had not ended fail (``server_lost``):
  no event will come for them. When a session ends on a server, its tasks that had not
  ended are cancelled, for the same reason.
- Only notes of a member the registry knows are applied (a report from a server that was
  removed is answered ``known=False``: it joins again with its next heartbeat).
"""

from __future__ import annotations

from sperse._dashboard.hub import Hub
from sperse._wire import pb

__all__ = ["apply_report", "server_gone"]


def apply_report(hub: Hub, report: pb.TaskReport) -> None:
    server = report.server
    hub.dropped(report.dropped)
    with hub.task_batch() as tasks:
        for note in report.notes:
            kind = note.kind
            task = f"{server}/{note.task}"
            if kind == "task":  # merged: what befell it since its last note, in order
                if note.queued_at:
                    label = note.label or note.task.rpartition("/")[2]
                    tasks.submitted(task, label, note.queued_at, server=server, client=note.client)
                if note.started_at:
                    tasks.started(task, server, note.started_at, note.worker)
                if note.text:
                    tasks.output(task, note.text)
                if note.ended_at:
                    tasks.ended(task, server, note.ended_at, error=_error(note))
            elif kind == "queued":
                label = note.label or note.task.rpartition("/")[2]
                tasks.submitted(task, label, note.at, server=server, client=note.client)
            elif kind == "started":
                tasks.started(task, server, note.at, note.worker)
            elif kind == "output":
                tasks.output(task, note.text)
            elif kind in ("done", "failed"):
                tasks.ended(task, server, note.at, error=_error(note))
            elif kind == "session_ended":
                tasks.end_open(task, note.at, SESSION_ENDED)


SESSION_ENDED = ("cancelled", "TaskCancelled", "its client's session ended on the server", "")


def _error(note: pb.TaskNote) -> tuple[str, str, str, str] | None:
    if not note.error_kind:
        return None
    return (note.error_kind, note.error_type, note.error_message, note.traceback)


def server_gone(hub: Hub, server: str, reason: str) -> None:
    hub.tasks_ended(
        f"{server}/",
        ("server_lost", "ServerLost", f"server {server!r} is gone from the cluster: {reason}", ""),
    )
