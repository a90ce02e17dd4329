"""The bounds of :mod:`sperse._core.limits`, checked where a client's message arrives.

Invariants:

- Every count and size a ``ClientMessage`` carries that could make the server do work or
  hold memory out of proportion to the message is checked here, before anything is queued
  or started for it: what a task asks (:func:`task_over`), a ``Submit``'s number of tasks
  and a task's id (:func:`submit_violation`, :func:`task_violation`), and ``Hello``'s
  strings (:func:`hello_violation`).
- A task over a bound fails alone (a ``ValueError`` naming the field, its value and the
  limit); its session and every other session carry on. A message that cannot be answered
  task by task is a protocol violation: its stream ends with ``Error("protocol")``.
- The rest of what a client sends is bounded by the message limit (``MAX_MESSAGE``) and
  costs the server a constant per item (a ``Cancel``'s or a ``Release``'s ids, the name of
  a listing, a fetch's object id): looked up, never stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from sperse._core.limits import (
    MAX_CONCURRENCY,
    MAX_ID,
    MAX_INLINE_LIMIT,
    MAX_METHODS,
    MAX_PIP,
    MAX_PIP_TEXT,
    MAX_REFS,
    MAX_RETRIES,
    MAX_TASKS,
    MAX_TEXT,
)
from sperse._wire import pb

__all__ = ["hello_violation", "submit_violation", "task_over", "task_violation"]


def _count(field: str, count: int, limit: int, what: str = "") -> str:
    if count <= limit:
        return ""
    return f"{field} is {count}, over the limit of {limit}{f' {what}' if what else ''}"


def _texts(field: str, texts: Iterable[str], limit: int) -> str:
    for text in texts:
        if len(text) > limit:
            return f"{field} has {len(text)} characters, over the limit of {limit}"
    return ""


def submit_violation(tasks: int) -> str:
    """Why a ``Submit`` of ``tasks`` tasks breaks the protocol ("" if it does not)."""
    if tasks <= MAX_TASKS:
        return ""
    return (
        f"a Submit of {tasks} tasks, over the limit of {MAX_TASKS} per message: send them in "
        "several messages"
    )


def task_violation(task: pb.Task) -> str:
    """Why ``task`` cannot even be failed by its id ("" if it can)."""
    if not task.task_id:
        return "a Task without a task_id"
    if len(task.task_id) > MAX_ID:
        return f"a task_id of {len(task.task_id)} characters, over the limit of {MAX_ID}"
    return ""


def task_over(task: pb.Task) -> str:
    """The first bound ``task`` passes, said for its failure ("" if none)."""
    if (  # the common task, checked in one go: a plain call or statement, or a method call
        len(task.label) <= MAX_TEXT
        and task.retries <= MAX_RETRIES
        and task.inline_limit <= MAX_INLINE_LIMIT
        and not task.refs
        and not task.peer_refs
        and not task.pip
        and (not task.HasField("object") or _plain_call(task.object))
        and not task.HasField("put")
    ):
        return ""
    return (
        _texts("its label", (task.label,), MAX_TEXT)
        or _count("retries", task.retries, MAX_RETRIES, "re-runs")
        or _count("inline_limit", task.inline_limit, MAX_INLINE_LIMIT, "bytes")
        or _count("the number of held values it uses", len(task.refs), MAX_REFS)
        or _texts("an object id in refs", task.refs, MAX_ID)
        or _peer_refs(task.peer_refs)
        or _pip(task.pip)
        or (_object_op(task.object) if task.HasField("object") else "")
        or (_put(task) if task.HasField("put") else "")
    )


def _plain_call(op: pb.ObjectOp) -> bool:
    """``op`` is within every bound of :func:`_object_op` and names no methods."""
    return (
        not op.methods
        and len(op.object_id) <= MAX_ID
        and len(op.kind) <= MAX_TEXT
        and len(op.name) <= MAX_TEXT
        and len(op.type_name) <= MAX_TEXT
        and op.max_concurrency <= MAX_CONCURRENCY
    )


def _peer_refs(peer_refs: Iterable[pb.PeerRef]) -> str:
    refs = list(peer_refs)
    return (
        _count("the number of values to pull from other servers", len(refs), MAX_REFS)
        or _texts("an object id in peer_refs", (p.object_id for p in refs), MAX_ID)
        or _texts("a server name in peer_refs", (p.server for p in refs), MAX_TEXT)
        or _texts("an address in peer_refs", (p.address for p in refs), MAX_TEXT)
    )


def _pip(pip: Iterable[str]) -> str:
    requirements = list(pip)
    if len(requirements) > MAX_PIP or any(len(r) > MAX_PIP_TEXT for r in requirements):
        return (
            f"an environment of at most {MAX_PIP} pip requirements of at most {MAX_PIP_TEXT} "
            f"characters each is allowed (this one has {len(requirements)})"
        )
    return ""


def _object_op(op: pb.ObjectOp) -> str:
    return (
        _texts("the remote object's id", (op.object_id,), MAX_ID)
        or _texts("the remote object operation", (op.kind,), MAX_TEXT)
        or _texts("the remote object's name", (op.name,), MAX_TEXT)
        or _texts("the remote object's type name", (op.type_name,), MAX_TEXT)
        or _count(
            "max_concurrency", op.max_concurrency, MAX_CONCURRENCY, "calls of one object at once"
        )
        or _count("the number of its methods", len(op.methods), MAX_METHODS)
        or _texts("a method name", op.methods, MAX_TEXT)
    )


def _put(task: pb.Task) -> str:
    """A put holds the value it carries: it uses nothing, and runs nowhere."""
    if task.refs or task.peer_refs or task.HasField("object") or task.pip:
        return (
            "a put (Task.put) that also names held values, a remote object or pip "
            "requirements: it holds the value it carries and runs nothing"
        )
    return _texts("the put's type name", (task.put.type_name,), MAX_TEXT) or _texts(
        "the put's repr", (task.put.repr,), MAX_TEXT
    )


def hello_violation(hello: pb.Hello) -> str:
    """Why an authenticated ``Hello`` is refused for its sizes ("" if it is not)."""
    return _texts("session_id", (hello.session_id,), MAX_ID) or _texts(
        "a name or version in Hello",
        (hello.client_name, hello.client_version, hello.python_version, hello.protocol),
        MAX_TEXT,
    )
