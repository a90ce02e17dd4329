"""``Pending`` values: the script-level API of work in flight.

A ``Pending`` settles exactly once, to a value or an error, on whichever
thread learns the outcome; that is only data. User code attached to it
(``then`` callbacks) runs on the user's thread, through the cluster's queue.
A call whose arguments include unfinished Pendings is held on the client
until they settle, then sent with their values; if one fails, the call fails
with ``UpstreamError`` and is never sent.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from sperse._core import (
    BackendEvent,
    CallTask,
    Done,
    Failed,
    Output,
    PickledFunction,
    Started,
    SupportsLogs,
    TaskSpec,
    Work,
)
from sperse._core.chunks import last_characters
from sperse._exec.runner import short_repr
from sperse._lang.placement import Placement
from sperse._serialize import RemoteValue
from sperse.errors import (
    NotReadyError,
    ObjectLost,
    SperseError,
    TaskCancelled,
    TaskTimeout,
    UpstreamError,
)

if TYPE_CHECKING:
    from sperse._cluster.cluster import Cluster

__all__ = [
    "Gate",
    "OutputPrinter",
    "Pending",
    "as_completed",
    "gather",
    "submit_call",
    "submit_work",
    "wait",
]

T = TypeVar("T")
U = TypeVar("U")
P = ParamSpec("P")

_UNSET: Any = object()
LOGS_KEPT = 1 << 20  # characters of a task's output a Pending keeps for ``logs()``


_hook_queue = threading.local()


def run_hooks(hooks: Iterable[Callable[[Any], None]], subject: Any) -> None:
    """Call each hook with ``subject``; hooks that settle more (a chain of 10,000 calls of a
    remote object, each sent when the one before it has gone) run after these, from the
    outermost call on this thread, so a chain never deepens the stack. A hook that raises
    does not stop the others; the first error is raised once all have run."""
    queue: collections.deque[tuple[Callable[[Any], None], Any]] | None = getattr(
        _hook_queue, "queue", None
    )
    if queue is not None:
        queue.extend((hook, subject) for hook in hooks)
        return
    queue = _hook_queue.queue = collections.deque((hook, subject) for hook in hooks)
    error: BaseException | None = None
    try:
        while queue:
            hook, arg = queue.popleft()
            try:
                hook(arg)
            except BaseException as exc:
                error = error or exc
    finally:
        _hook_queue.queue = None
    if error is not None:
        raise error


class Pending(Generic[T]):
    """A value that is being computed elsewhere."""

    __slots__ = (
        "__weakref__",
        "_cluster",
        "_error",
        "_hooks",
        "_lock",
        "_logs",
        "_settled",
        "_started_at",
        "_task_id",
        "_value",
        "label",
        "where",
    )

    def __init__(self, cluster: Cluster, label: str = "") -> None:
        self._cluster = cluster
        self.label = label
        self.where = ""
        self._task_id: str | None = None
        self._started_at: float | None = None
        self._lock = threading.Lock()
        self._settled = False
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self._hooks: list[Callable[[Pending[T]], None]] = []
        self._logs: list[tuple[str, str]] = []  # (stream, text) as the task printed it

    # ---- settling (any thread) ----------------------------------------------

    def _settle(self, value: Any = _UNSET, error: BaseException | None = None) -> bool:
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            self._value = value
            self._error = error
            hooks, self._hooks = self._hooks, []
        if hooks:
            run_hooks(hooks, self)
        self._cluster.wake()
        return True

    def _on_settle(self, hook: Callable[[Pending[T]], None]) -> None:
        """Call ``hook`` (on the settling thread) once this settles; now if it has."""
        with self._lock:
            if not self._settled:
                self._hooks.append(hook)
                return
        hook(self)

    # ---- the public API ------------------------------------------------------

    def done(self) -> bool:
        """True once a value or an error has arrived (or it was cancelled)."""
        return self._settled

    def result(self, timeout: float | None = None) -> T:
        """Wait for the value and return it, or raise the error it ended in.

        Raises ``TimeoutError`` if ``timeout`` seconds pass first; the work
        goes on (``cancel()`` stops it).
        """
        if not self._cluster.run_until(self.done, timeout, every_event=False):
            raise TimeoutError(
                f"{self!r} did not finish within {timeout} s; it is still running "
                "(call .cancel() to stop it, or wait longer)"
            )
        if self._error is not None:
            raise self._error
        value = self._value
        if isinstance(value, RemoteValue):
            return value.fetch(timeout)  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]

    def fetch(self, timeout: float | None = None) -> T:
        """Like ``result``: a value kept on its server (large) is brought here."""
        return self.result(timeout)

    @property
    def remote_value(self) -> RemoteValue | None:
        """The handle of a result kept on its server, without fetching it (None if inline)."""
        return self._value if isinstance(self._value, RemoteValue) else None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like ``result`` and return the error, or None on success."""
        try:
            self.result(timeout)
        except TimeoutError:
            raise
        except BaseException as exc:
            return exc
        return None

    def value(self) -> T:
        """The value now, without waiting: ``NotReadyError`` if it has not arrived."""
        if not self._settled:
            raise NotReadyError(f"{self!r} has no value yet; use .result(timeout) to wait")
        return self.result(0)

    def then(self, fn: Callable[[T], U]) -> Pending[U]:
        """A Pending of ``fn(value)``; ``fn`` runs on the user's thread when this is ready
        (at once if it is ready and this is the user's thread: a statement that reads a
        settled Pending at the prompt sees its callback run before the next statement, as
        ``result()`` would have run it under plain Python).

        If this fails, the returned Pending fails with the same error and ``fn``
        never runs.
        """
        child: Pending[U] = Pending(self._cluster, label=f"{self.label}.then")

        def run_callback() -> None:
            if self._error is not None:
                child._settle(error=self._error)
                return
            try:
                child._settle(fn(self.result(None)))
            except BaseException as exc:
                child._settle(error=exc)

        if self._settled and self._cluster.is_user_thread():
            run_callback()  # ready already, and this is where it would run: now, in order
        else:
            self._on_settle(lambda _: self._cluster.post(run_callback))
        return child

    def cancel(self) -> bool:
        """Stop the work. False if it had already finished."""
        return self._stop(TaskCancelled(f"{self.label or 'the task'} was cancelled"))

    def _stop(self, error: TaskCancelled) -> bool:
        if not self._settle(error=error):
            return False
        if self._task_id is not None:
            self._cluster.cancel(self._task_id)
        return True

    def _time_out_after(self, seconds: float) -> None:
        """Cancel the work with ``TaskTimeout`` if it has not ended ``seconds`` from now."""
        error = TaskTimeout(
            f"{self.label or 'the task'} did not finish within its timeout of {seconds:g} s, "
            "so it was cancelled: give it a longer timeout=, or make it faster"
        )
        self._cluster.call_later(seconds, functools.partial(self._stop, error))

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> T:
        loop = asyncio.get_running_loop()
        while not self.done():
            wakeup = asyncio.Event()

            def wake(event: asyncio.Event = wakeup) -> None:
                loop.call_soon_threadsafe(event.set)

            key = self._cluster.add_waker(wake)
            try:
                self._cluster.drain()
                if not self.done():
                    await wakeup.wait()
            finally:
                self._cluster.remove_waker(key)
        self._cluster.drain()
        return self.result(0)

    def __repr__(self) -> str:
        name = f" {self.label}" if self.label else ""
        if not self._settled:
            if self._started_at is None:
                return f"<Pending{name}: waiting>"
            elapsed = time.monotonic() - self._started_at
            return f"<Pending{name}: running on {self.where} for {elapsed:.1f} s>"
        if self._error is not None:
            return f"<Pending{name}: failed: {type(self._error).__name__}>"
        return f"<Pending{name}: done: {short_repr(self._value, 60)}>"

    # ---- running a task ------------------------------------------------------

    @property
    def log_id(self) -> str | None:
        """The key under which its server keeps what it printed for a while after it ended
        (``sperse logs LOG_ID``), once it started on a server that keeps logs; else None."""
        backend = self._cluster.backend
        if self._task_id is None or not self.where or not isinstance(backend, SupportsLogs):
            return None
        return backend.log_id(self._task_id, self.where)

    def logs(self, stream: Literal["stdout", "stderr"] | None = None) -> str:
        """What the task printed so far (both streams in the order it arrived, or only
        ``stream``), as it printed it: the last ``LOGS_KEPT`` characters of it."""
        with self._lock:
            return "".join(text for s, text in self._logs if stream is None or s == stream)

    def _keep_log(self, stream: str, text: str) -> None:
        with self._lock:
            self._logs.append((stream, text))
            size = sum(len(t) for _, t in self._logs) if len(self._logs) % 64 == 0 else 0
            if size > LOGS_KEPT or len(text) > LOGS_KEPT:
                self._logs = last_characters(self._logs, LOGS_KEPT)

    def _listen(self, event: BackendEvent, printer: OutputPrinter) -> None:
        """Listener for this Pending's task (backend thread)."""
        match event:
            case Started(where=where):
                self.where = where
                self._started_at = time.monotonic()
            case Output(where=where, stream=stream, text=text):
                printer.write(where, stream, text)
                self._keep_log(stream, text)
            case Done(value=value):
                printer.flush()
                self._settle(value)
            case Failed(where=where, error=error):
                printer.flush()
                self._settle(error=error.to_exception(self.label, where))


class OutputPrinter:
    """Prints a task's live output on the user's thread, each line prefixed ``[where] ``."""

    def __init__(self, cluster: Cluster, sink: Callable[[str, str], None] | None = None) -> None:
        self._cluster = cluster
        self._sink = sink or _print_line
        self._partial: dict[str, str] = {}
        self._where = ""

    def write(self, where: str, stream: str, text: str) -> None:
        self._where = where
        buffered = self._partial.pop(stream, "") + text
        *lines, rest = buffered.split("\n")
        if rest:
            self._partial[stream] = rest
        for line in lines:
            self._emit(stream, f"[{where}] {line}")

    def flush(self) -> None:
        for stream, rest in list(self._partial.items()):
            self._emit(stream, f"[{self._where}] {rest}")
        self._partial.clear()

    def _emit(self, stream: str, line: str) -> None:
        sink = self._sink
        self._cluster.post(lambda: sink(stream, line))


def _print_line(stream: str, line: str) -> None:
    import sys

    print(line, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)


def submit_call(
    cluster: Cluster,
    fn: Callable[..., Any] | PickledFunction,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    placement: Placement,
    retries: int,
    label: str,
    pip: tuple[str, ...] = (),
) -> Pending[Any]:
    """Send ``fn(*args, **kwargs)``, first waiting for any Pending among the arguments."""
    return submit_work(
        cluster,
        functools.partial(CallTask, fn),
        args,
        kwargs,
        placement=placement,
        retries=retries,
        label=label,
        pip=pip,
    )


def submit_work(
    cluster: Cluster,
    make: Callable[[tuple[Any, ...], dict[str, Any]], Work],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    placement: Placement | Callable[[], Placement],
    retries: int,
    label: str,
    pending: Pending[Any] | None = None,
    after: Iterable[Pending[Any] | Gate] = (),
    sent: Gate | None = None,
    pip: tuple[str, ...] = (),
) -> Pending[Any]:
    """Send the work ``make(args, kwargs)`` once the Pendings among the arguments (and those
    of ``after``) have settled, with their values; an argument that failed fails it with
    ``UpstreamError``. ``placement`` may be computed then; ``pending`` is the one to settle
    (a new one by default); ``sent`` is opened once the work is sent (or will never be)."""
    if pending is None:
        pending = Pending(cluster, label=label)
    out = pending
    inputs: list[Pending[Any] | Gate] = [
        a for a in (*args, *kwargs.values()) if isinstance(a, Pending)
    ]
    inputs.extend(after)
    # One count per input plus one for this function, released after every hook
    # is registered: an input that settles meanwhile is counted exactly once.
    remaining = [len(inputs) + 1]
    lock = threading.Lock()

    def send() -> None:
        try:
            submit()
        finally:
            if sent is not None:
                sent.open()

    def submit() -> None:
        if out.done():  # cancelled while it waited for its inputs
            return
        for arg in inputs:
            if arg._error is not None:
                error = arg._error
                if not isinstance(error, ObjectLost):  # a remote object's: says it all
                    name = arg.label or "a Pending"
                    error = UpstreamError(
                        f"{label}: an argument failed ({name}): {error}", upstream=arg.label
                    )
                out._settle(error=error)
                return
        real_args = tuple(a._value if isinstance(a, Pending) else a for a in args)
        real_kwargs = {k: v._value if isinstance(v, Pending) else v for k, v in kwargs.items()}
        task_id = cluster.new_task_id()
        out._task_id = task_id
        printer = OutputPrinter(cluster)
        try:
            where = placement() if callable(placement) else placement
            spec = TaskSpec(
                task_id, make(real_args, real_kwargs), where, retries, label=label, pip=pip
            )
            cluster.submit(spec, lambda event: out._listen(event, printer))
        except SperseError as exc:
            out._settle(error=exc)

    def input_settled(_: object) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            send()

    for arg in inputs:
        arg._on_settle(input_settled)
    input_settled(out)
    return out


class Gate:
    """Opens once; what waits for it (``submit_work(after=...)``) goes on then. Lighter than
    a Pending (no cluster, no wake-up): the send order of a remote object's calls."""

    __slots__ = ("_error", "_hooks", "_lock", "_open", "_value", "label")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = False
        self._hooks: list[Callable[[Gate], None]] = []
        self._error: BaseException | None = None
        self._value: Any = None
        self.label = ""

    def done(self) -> bool:
        return self._open

    def open(self) -> None:
        with self._lock:
            if self._open:
                return
            self._open = True
            hooks, self._hooks = self._hooks, []
        if hooks:
            run_hooks(hooks, self)

    def _on_settle(self, hook: Callable[[Gate], None]) -> None:
        with self._lock:
            if not self._open:
                self._hooks.append(hook)
                return
        hook(self)


def wait(
    pendings: Iterable[Pending[Any]],
    timeout: float | None = None,
    return_when: Literal["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"] = "ALL_COMPLETED",
) -> tuple[set[Pending[Any]], set[Pending[Any]]]:
    """Wait for Pendings like ``concurrent.futures.wait``: returns ``(done, not_done)``."""
    items = list(pendings)
    if not items:
        return set(), set()
    cluster = items[0]._cluster
    _wake_on_settle(cluster, items)
    first_open = 0  # items before it are done (a Pending stays done): each is checked once

    def finished() -> bool:
        nonlocal first_open
        if return_when == "FIRST_COMPLETED":
            return any(p.done() for p in items)
        if return_when == "FIRST_EXCEPTION" and any(
            p.done() and p._error is not None for p in items
        ):
            return True
        while first_open < len(items) and items[first_open].done():
            first_open += 1
        return first_open == len(items)

    cluster.run_until(finished, timeout, every_event=False)
    done = {p for p in items if p.done()}
    return done, set(items) - done


def gather(
    *pendings: Pending[Any] | Iterable[Pending[Any]], timeout: float | None = None
) -> list[Any]:
    """The values of all ``pendings``, in order; raises the first error met.

    Takes the Pendings as arguments (``gather(p1, p2)``) or one iterable of them
    (``gather([p1, p2])``, as Ray's ``get`` and Dask's ``gather`` do)."""
    items: Iterable[Any] = pendings
    if len(pendings) == 1 and not isinstance(pendings[0], Pending):
        items = pendings[0]
    deadline = None if timeout is None else time.monotonic() + timeout
    out = []
    for p in items:
        if not isinstance(p, Pending):
            raise TypeError(
                f"sperse.gather takes Pendings (or one list of them), not {type(p).__name__}: "
                "pass what a remote call returned"
            )
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        out.append(p.result(remaining))
    return out


def _wake_on_settle(cluster: Cluster, pendings: Iterable[Pending[Any]]) -> None:
    """A Pending wakes its own cluster when it settles; one of another cluster, waited for
    on ``cluster``, wakes that one as well."""
    for p in pendings:
        if p._cluster is not cluster:
            p._on_settle(lambda _: cluster.wake())


def _any_done(pendings: list[Pending[Any]]) -> bool:
    return any(p.done() for p in pendings)


def as_completed(
    pendings: Iterable[Pending[Any]], timeout: float | None = None
) -> Iterator[Pending[Any]]:
    """Yield each Pending as it finishes (done or failed)."""
    left = list(pendings)
    if not left:
        return
    cluster = left[0]._cluster
    _wake_on_settle(cluster, left)
    deadline = None if timeout is None else time.monotonic() + timeout
    while left:
        remaining = None if deadline is None else deadline - time.monotonic()
        if not cluster.run_until(functools.partial(_any_done, left), remaining, every_event=False):
            raise TimeoutError(f"{len(left)} of the Pendings did not finish within {timeout} s")
        still = []
        for p in left:
            if p.done():
                yield p
            else:
                still.append(p)
        left = still
