"""What the dashboard shows, as pure state: no threads, no I/O, time passed in.

- ``Journal``: every change gets the next sequence number; a page that has seen up to ``seq``
  asks for what came after (``since``) and gets the changes coalesced by key (the newest
  change of a server or task only), or ``None`` when the changes it missed were forgotten
  already (it reloads the snapshots then). Coalesced as changes come, not as pages read: it
  holds one entry per key, ordered by its last change, so a task queued, started and done
  between two looks is one entry, and a look that takes at most ``most_tasks`` tasks costs
  that many steps however many tasks changed. Bounded: at most ``limit`` keys of tasks (and
  as many of the rest) are kept. A task's change holds its row, made JSON only when sent.
  Inside ``TaskTable.held()`` (a server's report) a task's changes are one entry, made at
  its end.
- ``ServerTable``: the servers now; ``update`` takes a whole list (a coordinator's
  membership, a client's ``servers()``) and journals only what differs: a new or changed
  server, a server gone.
- ``TaskTable``: tasks by id, newest last, at most ``keep`` of them (the oldest finished
  ones are forgotten first; the counts by state stay exact). Pages are served newest first
  from the table, never the whole of it; a task's output is kept up to ``LOG_LIMIT``
  characters (its end).
- ``workspace`` snapshots are plain JSON-ready dicts, replaced whole (a workspace of a few
  thousand cells is a few hundred KiB); only their version goes through the journal.

Everything here is JSON-ready: dicts of str, int, float, bool, lists. No value a task made
ever reaches the dashboard, only names, labels, states, times, errors as text and output.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sperse._core.values import value

__all__ = [
    "LOG_LIMIT",
    "TASK_STATES",
    "Change",
    "Journal",
    "ServerTable",
    "TaskRow",
    "TaskTable",
]

LOG_LIMIT = 64 * 1024  # characters of a task's output kept (its end)

TASK_STATES = ("queued", "running", "done", "failed", "cancelled")
TaskState = Literal["queued", "running", "done", "failed", "cancelled"]
Topic = Literal["server", "server_gone", "task", "workspace", "flow"]

JSON = dict[str, Any]


@value  # one per change of a task: made without object.__setattr__ per field
class Change:
    seq: int
    topic: Topic
    key: str
    data: JSON | TaskRow  # a task's row (as it is now), or a JSON-ready dict

    def json(self) -> JSON:
        data = self.data
        return data.as_json() if isinstance(data, TaskRow) else data


class Journal:
    """The newest change of each key, numbered from 1, ordered by their last change; the
    keys changed longest ago are dropped past ``limit`` (tasks and the rest apart)."""

    def __init__(self, limit: int = 20_000) -> None:
        self._limit = limit
        self._tasks: OrderedDict[str, Change] = OrderedDict()
        # Servers, workspaces, flows: a server gone and a server (back) share a key.
        self._rest: OrderedDict[tuple[str, str], Change] = OrderedDict()
        self._forgotten = 0  # the newest seq dropped: a page that saw less must reload
        self.seq = 0

    def add(self, topic: Topic, key: str, data: JSON | TaskRow) -> int:
        self.seq += 1
        change = Change(self.seq, topic, key, data)
        if topic == "task":
            tasks = self._tasks
            tasks.pop(key, None)
            tasks[key] = change
            if len(tasks) > self._limit:
                self._forgotten = max(self._forgotten, tasks.popitem(last=False)[1].seq)
        else:
            rest = self._rest
            slot = ("server" if topic == "server_gone" else topic, key)
            rest.pop(slot, None)
            rest[slot] = change
            if len(rest) > self._limit:
                self._forgotten = max(self._forgotten, rest.popitem(last=False)[1].seq)
        return self.seq

    def since(self, seq: int) -> list[Change] | None:
        """The changes after ``seq``, the newest per key, in order; ``None`` if some of them
        were dropped already."""
        found = self.newest(seq, len(self._tasks))
        return None if found is None else found[0]

    def newest(self, seq: int, most_tasks: int) -> tuple[list[Change], bool] | None:
        """``since``, with at most ``most_tasks`` tasks (those changed last), and whether
        more tasks than that changed."""
        if seq < self._forgotten:
            return None
        found: list[Change] = []
        for change in reversed(self._rest.values()):
            if change.seq <= seq:
                break
            found.append(change)
        tasks: list[Change] = []
        more = False
        for change in reversed(self._tasks.values()):
            if change.seq <= seq:
                break
            if len(tasks) >= most_tasks:
                more = True
                break
            tasks.append(change)
        if found:
            return sorted(found + tasks, key=_seq), more
        tasks.reverse()
        return tasks, more


def _seq(change: Change) -> int:
    return change.seq


class ServerTable:
    """The servers now, by name."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.servers: dict[str, JSON] = {}

    def update(self, servers: Iterable[Mapping[str, Any]]) -> bool:
        """Replace the list; journal what changed. True if anything did."""
        fresh = {str(s["name"]): dict(s) for s in servers}
        changed = False
        for name in [n for n in self.servers if n not in fresh]:
            del self.servers[name]
            self._journal.add("server_gone", name, {"name": name})
            changed = True
        for name, server in fresh.items():
            if self.servers.get(name) != server:
                self.servers[name] = server
                self._journal.add("server", name, server)
                changed = True
        return changed

    def snapshot(self) -> list[JSON]:
        return [self.servers[n] for n in sorted(self.servers)]


@dataclass(slots=True)
class TaskRow:
    """One task as the dashboard shows it. Times are wall-clock seconds."""

    id: str
    label: str
    state: TaskState = "queued"
    server: str = ""
    worker: int = 0  # the pid of the worker that runs it, where known
    client: str = ""  # the client that sent it (a coordinator's dashboard: its name)
    submitted: float = 0.0
    started: float | None = None
    ended: float | None = None
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    log: list[str] = field(default_factory=list)
    log_size: int = 0
    log_cut: bool = False

    def as_json(self, *, full: bool = False) -> JSON:
        row: JSON = {
            "id": self.id,
            "label": self.label,
            "state": self.state,
            "server": self.server,
            "worker": self.worker,
            "client": self.client,
            "submitted": self.submitted,
            "started": self.started,
            "ended": self.ended,
            "error_type": self.error_type,
            "error": self.error,
        }
        if full:
            row["traceback"] = self.traceback
            row["log"] = "".join(self.log)
            row["log_cut"] = self.log_cut
        return row


class TaskTable:
    """Tasks by id, in the order they were submitted; at most ``keep`` of them."""

    def __init__(self, journal: Journal, keep: int = 100_000) -> None:
        self._journal = journal
        self._keep = keep
        self._rows: OrderedDict[str, TaskRow] = OrderedDict()
        self.counts: dict[str, int] = dict.fromkeys(TASK_STATES, 0)
        self._held: dict[str, TaskRow] | None = None  # changed rows, inside ``held()``

    def __len__(self) -> int:
        return len(self._rows)

    def _set(self, row: TaskRow, state: TaskState) -> None:
        self.counts[row.state] -= 1
        self.counts[state] += 1
        row.state = state

    def _changed(self, row: TaskRow) -> None:
        held = self._held
        if held is None:
            self._journal.add("task", row.id, row)
        else:
            held.pop(row.id, None)
            held[row.id] = row

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Changes made inside are journalled at its end, one entry per task, in the order
        of their last change: a batch (a server's report) in which a task is queued, started
        and done costs the journal one entry for it, not three."""
        self._held = {}
        try:
            yield
        finally:
            held, self._held = self._held, None
            for task_id, row in held.items():
                self._journal.add("task", task_id, row)

    def submitted(
        self, task_id: str, label: str, now: float, *, server: str = "", client: str = ""
    ) -> None:
        if task_id in self._rows:
            return
        row = TaskRow(task_id, label, server=server, client=client, submitted=now)
        self._rows[task_id] = row
        self.counts["queued"] += 1
        self._changed(row)
        if len(self._rows) > self._keep:
            self._forget()

    def _forget(self) -> None:
        """Drop the oldest finished tasks until ``keep`` remain (running ones stay)."""
        excess = len(self._rows) - self._keep
        # The first ones only: a list of every id, at each task past ``keep``, stalled a
        # coordinator holding 100,000 tasks for seconds (heartbeats went unanswered).
        for task_id in list(itertools.islice(self._rows, excess * 2)):
            if excess <= 0:
                break
            if self._rows[task_id].state in ("done", "failed", "cancelled"):
                del self._rows[task_id]
                excess -= 1

    def started(self, task_id: str, server: str, now: float, worker: int = 0) -> None:
        row = self._rows.get(task_id)
        if row is None or row.state != "queued":
            return
        row.server = server
        row.worker = worker
        row.started = now
        self._set(row, "running")
        self._changed(row)

    def output(self, task_id: str, text: str) -> None:
        row = self._rows.get(task_id)
        if row is None:
            return
        row.log.append(text)
        row.log_size += len(text)
        while row.log_size > LOG_LIMIT and row.log:
            cut = row.log_size - LOG_LIMIT
            first = row.log[0]
            if len(first) <= cut:
                row.log.pop(0)
                row.log_size -= len(first)
            else:
                row.log[0] = first[cut:]
                row.log_size -= cut
            row.log_cut = True

    def ended(
        self,
        task_id: str,
        server: str,
        now: float,
        *,
        error: tuple[str, str, str, str] | None = None,
    ) -> None:
        """The task ended: in a value, or ``error`` = (kind, type name, message, traceback)."""
        row = self._rows.get(task_id)
        if row is None or row.state in ("done", "failed", "cancelled"):
            return
        row.server = row.server or server
        if row.started is None:
            row.started = now
        row.ended = now
        if error is None:
            self._set(row, "done")
        else:
            kind, row.error_type, row.error, row.traceback = error
            self._set(row, "cancelled" if kind == "cancelled" else "failed")
        self._changed(row)

    def end_open(self, prefix: str, now: float, error: tuple[str, str, str, str]) -> int:
        """End every task not ended yet whose id starts with ``prefix`` (a server gone, a
        session ended: no more events will come for them) with ``error``; how many."""
        ended = 0
        for task_id in [
            t
            for t, row in self._rows.items()
            if row.state in ("queued", "running") and t.startswith(prefix)
        ]:
            self.ended(task_id, "", now, error=error)
            ended += 1
        return ended

    def get(self, task_id: str) -> TaskRow | None:
        return self._rows.get(task_id)

    def page(self, *, state: str = "", offset: int = 0, limit: int = 50) -> tuple[list[JSON], int]:
        """Newest first: ``limit`` rows after skipping ``offset`` (of those in ``state``, if
        given), and how many there are in all (of that state)."""
        limit = max(0, min(limit, 1000))
        offset = max(0, offset)
        rows: list[JSON] = []
        if not state:
            total = len(self._rows)
            keys = list(self._rows)  # a list of ids: cheap next to building rows
            for task_id in reversed(keys[max(0, total - offset - limit) : total - offset]):
                rows.append(self._rows[task_id].as_json())
            return rows, total
        skipped = 0
        total = 0
        for row in reversed(self._rows.values()):
            if row.state != state:
                continue
            total += 1
            if skipped < offset:
                skipped += 1
            elif len(rows) < limit:
                rows.append(row.as_json())
        return rows, total

    def recent(self, since: float, limit: int = 2000) -> list[JSON]:
        """Tasks that ran or run after ``since`` (wall time), newest first, for the timeline."""
        rows: list[JSON] = []
        for row in reversed(self._rows.values()):
            if row.submitted < since - 3600:  # far older submissions: stop scanning
                break
            if row.started is not None and (row.ended is None or row.ended >= since):
                rows.append(row.as_json())
                if len(rows) >= limit:
                    break
        return rows
