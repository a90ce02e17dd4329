"""``Cluster``: the client side of a backend, and the user-thread work queue.

Threads (DESIGN.md §2 rule 6): a backend reports events on a thread of its
own. There, the cluster only routes each event to the listener registered for
its task; listeners record data (a value arrived) and ``post`` anything that
runs user code (a cell, a ``then`` callback, printing output) to the cluster's
queue. That queue is drained on the user's thread: inside ``Pending.result``,
``Workspace.wait``/``process_events``, ``sperse.wait``, an ``await``, and at
interpreter exit.

Waiting (``run_until``) does not poll: the waiter sleeps on a ``Bell`` until it rings, and
it rings at every ``post``, every ``wake``, every event a backend reports (after its
listener has run) and every ``cancel`` (after the backend has been told). So a condition
passed to ``run_until`` is noticed as soon as it turns true through one of those; whatever
changes it otherwise must call ``wake`` (``Pending`` does when it settles, a progress
counter when it counts). A waiter whose condition only a settle can turn true (a
``Pending``'s ``result``, ``wait``, ``as_completed``) says so (``every_event=False``) and
sleeps through the other events: one wake-up per result, not one per event. Ctrl-C interrupts the sleep on the main thread (see ``bell``).
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from sperse._cluster.bell import Bell
from sperse._cluster.pending import submit_call
from sperse._core import (
    Backend,
    BackendEvent,
    CallTask,
    Done,
    ErrorInfo,
    EventSink,
    Failed,
    ObjectInfo,
    ServerInfo,
    StatementTask,
    TaskSpec,
    pip_requirements,
)
from sperse._core.clock import Clock, SystemClock
from sperse._core.routing import check_placement
from sperse._lang.placement import Placement
from sperse._state import snapshot
from sperse.errors import NoMatchingServer

__all__ = [
    "Cluster",
    "Dashboard",
    "TaskWatcher",
    "default",
    "detached",
    "in_use",
    "replace_default",
    "unuse",
    "use",
]

Listener = Callable[[BackendEvent], None]


class TaskWatcher(Protocol):
    """Hears of tasks without taking part (the dashboard): it records, and returns."""

    def submitted(self, specs: Sequence[TaskSpec]) -> None: ...

    def event(self, event: BackendEvent) -> None: ...


class Dashboard(Protocol):
    """A dashboard this client serves (``connect(dashboard=True)``)."""

    @property
    def url(self) -> str: ...

    def close(self) -> None: ...


class Cluster:
    """A started backend plus the queue of work for the user's thread."""

    def __init__(
        self,
        backend: Backend,
        *,
        env: Mapping[str, object] | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``env``: the environment of every task that gives none (``{"pip": [...]}``).
        ``clock``: what deadlines (``timeout=``) are measured by; a ``MockClock`` in tests
        (the default reads ``time.monotonic``)."""
        self.pip = pip_requirements(env)
        self.backend = backend
        # Reentrant: a signal handler (Ctrl-C at ``%wait``) may wake the cluster on the
        # thread that holds it.
        self._lock = threading.RLock()
        self._bell = Bell()  # what run_until sleeps on
        self._work: deque[Callable[[], None]] = deque()
        self._user_thread: int | None = None  # the thread that drains the queue
        self._listeners: dict[str, Listener] = {}
        self._wakers: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._token: contextvars.Token[Cluster | None] | None = None
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._watchers: list[TaskWatcher] = []
        # Where workspaces of this client publish their graph (name, snapshot), if they do:
        # set by connect(dashboard=True / share_workspace=True).
        self.share_workspace: Callable[[str, dict[str, Any]], None] | None = None
        self.dashboard: Dashboard | None = None
        self._closers: list[Callable[[], None]] = []  # run by close(), before the backend's
        backend.start(self._on_event)

    # ---- tasks ---------------------------------------------------------------

    def new_task_id(self) -> str:
        return f"t{next(self._ids)}"

    def submit(self, spec: TaskSpec, listener: Listener) -> None:
        """Send one task; ``listener`` hears its events on the backend's thread."""
        self.submit_many([(spec, listener)])

    def submit_many(self, tasks: Sequence[tuple[TaskSpec, Listener]]) -> None:
        """Send tasks. Raises ``NoMatchingServer`` or ``SerializationError``; nothing is sent then.
        A task without an environment of its own gets the cluster's (``connect(env=...)``)."""
        if self.pip:
            tasks = [
                (replace(spec, pip=self.pip), listener)
                if not spec.pip and isinstance(spec.work, CallTask | StatementTask)
                else (spec, listener)
                for spec, listener in tasks
            ]
        constrained = [spec for spec, _ in tasks if str(spec.placement)]
        if constrained:
            servers = self.backend.servers()
            for spec in constrained:
                check_placement(spec.placement, servers, spec.label or spec.task_id)
        with self._lock:
            for spec, listener in tasks:
                self._listeners[spec.task_id] = listener
        specs = [spec for spec, _ in tasks]
        for watcher in self._watchers:
            watcher.submitted(specs)
        try:
            self.backend.submit(specs)
        except BaseException as exc:
            with self._lock:
                for spec, _ in tasks:
                    self._listeners.pop(spec.task_id, None)
            for watcher in self._watchers:
                for spec in specs:
                    watcher.event(
                        Failed(
                            spec.task_id, "", ErrorInfo("internal", type(exc).__name__, str(exc))
                        )
                    )
            raise

    def cancel(self, task_id: str) -> None:
        with self._lock:
            known = self._listeners.pop(task_id, None) is not None
        if known:
            try:
                self.backend.cancel(task_id)
            finally:
                self._bell.ring()  # the backend may be free again now (as MemoryBackend is)

    def servers(self) -> list[ServerInfo]:
        """The servers of this cluster: name, tags, resources, workers, load, address."""
        return self.backend.servers()

    def stats(self) -> dict[str, int]:
        """Counters of the backend (objects held, tasks done, workers replaced, ...)."""
        return self.backend.stats()

    def state(self, server: str, timeout: float | None = 60.0) -> dict[str, Any]:
        """A copy of the per-server store of ``server`` (``sperse.state()`` there), for
        inspection: every key and its value."""
        pending = submit_call(
            self,
            snapshot,
            (),
            {},
            placement=Placement(pin=server),
            retries=0,
            label=f"the state of {server}",
        )
        found: dict[str, Any] = pending.result(timeout)
        return found

    def watch(self, watcher: TaskWatcher) -> Callable[[], None]:
        """Tell ``watcher`` of every task sent and every event (on the sender's and the
        backend's threads: it must only record). Returns what stops it."""
        self._watchers = [*self._watchers, watcher]
        return lambda: setattr(self, "_watchers", [w for w in self._watchers if w is not watcher])

    def _on_event(self, event: BackendEvent) -> None:
        for watcher in self._watchers:
            watcher.event(event)
        with self._lock:
            if isinstance(event, Done | Failed):
                listener = self._listeners.pop(event.task_id, None)
            else:
                listener = self._listeners.get(event.task_id)
        try:
            if listener is not None:
                listener(event)
        finally:
            # What a waiter reads may have changed with any event (where a task runs, how
            # busy the backend is), not only with those that settle or post something; a
            # waiter for settles only (run_until(every_event=False)) sleeps on: a Pending
            # that settles rings for it (wake).
            self._bell.ring_watchers()

    # ---- deadlines ---------------------------------------------------------------

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        """Call ``fn`` once ``delay`` seconds have passed on the cluster's clock, unless the
        cluster is closed first: on the clock's thread (data only, as on a backend's), or in
        ``MockClock.advance``."""
        self._clock.call_later(delay, lambda: None if self._closed else fn())

    # ---- the user-thread queue ----------------------------------------------

    def post(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` to run on the user's thread at the next drain."""
        with self._lock:
            self._work.append(fn)
        self.wake()

    def wake(self) -> None:
        """Have anyone waiting in ``run_until`` check their condition again (and ``await``s
        and front ends, through their wakers). Any thread; queues nothing."""
        self._bell.ring()
        with self._lock:
            wakers = list(self._wakers.values())
        for wake in wakers:
            wake()

    def _sleep(
        self, done: Callable[[], bool], timeout: float | None, every_event: bool = True
    ) -> None:
        """Sleep until rung or ``timeout``, unless work is queued or ``done()`` already."""
        self._bell.sleep(lambda: bool(self._work) or done(), timeout, every_event=every_event)

    def is_user_thread(self) -> bool:
        """Whether this thread is the one that runs the queue (the one that drained it last)."""
        return self._user_thread == threading.get_ident()

    def drain(self) -> int:
        """Run everything queued so far, on this thread. Returns how many ran."""
        self._user_thread = threading.get_ident()
        ran = 0
        while True:
            with self._lock:
                if not self._work:
                    return ran
                fn = self._work.popleft()
            fn()
            ran += 1

    def run_until(
        self, done: Callable[[], bool], timeout: float | None, *, every_event: bool = True
    ) -> bool:
        """Drain queued work until ``done()``; False if ``timeout`` passed first.

        ``done()`` is checked again after each drain and whenever the cluster is rung (see
        the module doc): a condition that turns true any other way is noticed only at the
        timeout. ``every_event=False``: ``done()`` turns true only when a ``Pending``
        settles (or through a ``post`` or ``wake``), so a backend's other events (a task
        started) do not wake this thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.drain()
            if done():
                self.drain()  # what was queued before the outcome (its output) runs first
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._sleep(done, remaining, every_event)

    def wait_for_work(self, timeout: float) -> bool:
        """Block until something is queued for the user's thread, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._work:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._sleep(_never, remaining)

    def add_waker(self, wake: Callable[[], None]) -> int:
        key = next(self._ids)
        with self._lock:
            self._wakers[key] = wake
        return key

    def remove_waker(self, key: int) -> None:
        with self._lock:
            self._wakers.pop(key, None)

    # ---- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Stop the backend; pending work ends in errors. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._clock.close()
        if self.dashboard is not None:
            self.dashboard.close()
        for closer in self._closers:
            closer()
        self.backend.close()
        # Nothing stays pending forever: what had not ended ends now, in an error.
        with self._lock:
            left, self._listeners = self._listeners, {}
        for task_id, listener in left.items():
            info = ErrorInfo(
                "server_lost", "ServerLost", "the cluster was closed before this task ended"
            )
            listener(Failed(task_id, "", info))
        self.drain()
        global _default
        with _default_lock:
            if _default is self:
                _default = None

    def on_close(self, closer: Callable[[], None]) -> None:
        """Have ``close`` call ``closer`` (it must not raise), before it stops the backend."""
        self._closers.append(closer)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Cluster:
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        self.close()


def _never() -> bool:
    return False


_current: contextvars.ContextVar[Cluster | None] = contextvars.ContextVar(
    "sperse_cluster", default=None
)
_default: Cluster | None = None
_default_lock = threading.Lock()


def use(cluster: Cluster) -> contextvars.Token[Cluster | None]:
    return _current.set(cluster)


def in_use() -> Cluster | None:
    """The cluster of the innermost ``with cluster:`` or ``use``, if it is open."""
    cluster = _current.get()
    return cluster if cluster is not None and not cluster.closed else None


def default() -> Cluster | None:
    """The default cluster (the one ``connect`` made last), if it is open."""
    with _default_lock:
        cluster = _default
    return cluster if cluster is not None and not cluster.closed else None


def replace_default(cluster: Cluster) -> Cluster | None:
    """Make ``cluster`` the default; returns the previous default (the caller closes it)."""
    global _default
    with _default_lock:
        old, _default = _default, cluster
    return old


def unuse(token: contextvars.Token[Cluster | None]) -> None:
    _current.reset(token)


class _NoServers:
    """The backend of :func:`detached`: no servers; remote work sent to it fails at once."""

    def start(self, sink: EventSink) -> None:
        pass

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        raise NoMatchingServer(
            "no cluster is connected, so there is no server to run this on: call "
            "sperse.connect() (or use a `with cluster:` block) first"
        )

    def cancel(self, task_id: str) -> None:
        pass

    def release(self, object_ids: Iterable[str]) -> None:
        pass

    def servers(self) -> list[ServerInfo]:
        return []

    def stats(self) -> dict[str, int]:
        return {}

    def objects(self, name: str = "") -> list[ObjectInfo]:
        return []

    def close(self) -> None:
        pass


_detached: Cluster | None = None


def detached() -> Cluster:
    """A cluster without servers, made once per process and never the default: the home of
    Pendings that a computation in this process settles when no cluster is in use (a flow
    run in-process, ``sperse.Flow(...).run()`` before any ``connect``). It starts no thread
    and no process; remote work sent to it fails with ``NoMatchingServer``."""
    global _detached
    with _default_lock:
        if _detached is None or _detached.closed:
            _detached = Cluster(_NoServers())
        return _detached
