"""Bounds on what one client may ask of a server: sizes and counts a message carries.

A server checks each where it arrives (:mod:`sperse._server.bounds`), so that no single
authenticated message can make it do unbounded work or hold unbounded memory for one
request, whatever the rest of its clients do. A task over a bound fails alone, with a
``ValueError`` that names the field, its value and the limit; a message that cannot be
answered task by task (too many tasks, an id too long to name a task by) ends its stream
with ``Error("protocol")``. Clients check the ones a user sets (``max_concurrency``,
``retries``) before anything is sent. The list, with the error each gives, is in
``docs/server.md`` ("Bounds").

Plain numbers, below both sides: the client (``sperse._cluster``) and the server import them.
"""

from __future__ import annotations

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_ID",
    "MAX_INLINE_LIMIT",
    "MAX_METHODS",
    "MAX_PIP",
    "MAX_PIP_TEXT",
    "MAX_REFS",
    "MAX_RETRIES",
    "MAX_TASKS",
    "MAX_TEXT",
]

MAX_CONCURRENCY = 1000  # calls of one remote object running at once (each may be a thread)
MAX_RETRIES = 100  # re-runs of a task whose worker died
MAX_INLINE_LIMIT = 64 << 20  # a task's inline_limit: results under it travel in its Done
MAX_REFS = 10_000  # held values one task uses (refs), and values pulled from peers (peer_refs)
MAX_METHODS = 4096  # public methods a remote object's listing names
MAX_PIP = 64  # pip requirements of one task's environment
MAX_PIP_TEXT = 1000  # characters of one requirement
MAX_TASKS = 10_000  # tasks of one Submit message
MAX_ID = 256  # characters of an id: a task's, an object's, a session's
MAX_TEXT = 1024  # characters of a label, a name, a type or method name, an address
