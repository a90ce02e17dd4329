"""The two forkservers that fork the pool's workers, and what each imports before it forks.

Light on purpose: ``sperse server`` imports this first thing and starts the forkservers, so
that their imports run on the other core while the server imports the rest
(:mod:`sperse.server`). It imports nothing of sperse.

- The tasks' forkserver (``TASKS``, start method ``"forkserver-tasks"``) imports the worker
  and the tasks' runner only (``TASKS_PRELOAD``). It is ready well before the server
  listens, so a first task waits for neither the server's other imports nor the objects'.
- The objects' forkserver (``OBJECTS``, ``"forkserver"``) is forked by the tasks' one, once
  that one has imported what they share, and imports what a remote object's worker and a
  flow's host need besides (``OBJECTS_PRELOAD``). Forked, it pays for none of the tasks'
  imports again: both are ready as soon as one forkserver with all of them would be.

Both are ``multiprocessing.forkserver.ForkServer``s; the standard library's own (module-level)
one is left unused. Their processes' ``Popen`` is the standard library's but for the
forkserver it asks to fork (``_Popen._launch``), and the objects' forkserver is started as a
process of the tasks' (``_ObjectsForkServer.ensure_running``) rather than by a new
interpreter. Either runs ``multiprocessing.forkserver.main``, and its children run
``multiprocessing``'s code as any forked child does.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import os
import select
import socket
from multiprocessing import (
    connection,
    forkserver,
    popen_forkserver,
    process,
    reduction,
    resource_tracker,
    spawn,
    util,
)
from multiprocessing.context import ForkServerContext, set_spawning_popen
from typing import Any, ClassVar

__all__ = [
    "OBJECTS",
    "OBJECTS_PRELOAD",
    "TASKS",
    "TASKS_PRELOAD",
    "objects_forkserver_ready",
    "start_forkserver",
    "start_objects_forkserver",
]

# What a task's worker needs, imported once in the tasks' forkserver (a failed import is
# skipped there, and made again in the worker).
TASKS_PRELOAD = [
    "sperse._pool.worker",
    "sperse._server.runner",
    "sperse._pool.frozen",  # last: gc.freeze() of all the above
]

# What the objects' workers need besides: the objects' runner, the flow's host, and the
# client a host reaches other hosts with (gRPC among it: ~40 ms of CPU that each host of a
# flow with a hash edge paid at its start, beside the others' work). Imported only: the
# forkserver makes no channel, so nothing of gRPC's runs before a fork.
OBJECTS_PRELOAD = [
    "sperse._server.actor_runner",
    "sperse._flow.host",
    "sperse._cluster.objects",
    "sperse._backends.multi",
    "sperse._backends.sperse",
    "runpy",
]


class _Popen(popen_forkserver.Popen):
    """``popen_forkserver.Popen``, asking ``server`` to fork (the standard one asks
    ``multiprocessing``'s module-level forkserver). The rest is the standard library's."""

    server: ClassVar[forkserver.ForkServer]

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        fds: list[int] = self._fds  # type: ignore[attr-defined]  # (not in typeshed)
        close_fds: Any = util.close_fds  # type: ignore[attr-defined]
        self.sentinel, w = self.server.connect_to_new_process(fds)
        # Kept open till this Popen is gone: the child's sentinel of its parent.
        parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _ObjectsForkServer(forkserver.ForkServer):
    """A forkserver that the tasks' forkserver forks (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._process: process.BaseProcess | None = None
        self._alive_w = -1  # this process's write end of the alive pipe (see below)
        self._ready_r = -1  # readable once its imports are done (the byte it writes, or EOF)
        self._ready = False

    def ensure_running(self) -> None:
        """As ``ForkServer.ensure_running``: start it unless it runs (again, if it died).
        Returns once it is forked, before its imports end."""
        with self._lock:  # type: ignore[attr-defined]
            resource_tracker.ensure_running()
            if self._process is not None:
                if self._process.exitcode is None:
                    return
                os.close(self._alive_w)
                self._process.close()
                self._process = None
                if self._ready_r >= 0:
                    os.close(self._ready_r)
                self._ready_r, self._ready = -1, False
            with socket.socket(socket.AF_UNIX) as listener:
                address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
                listener.bind(address)
                if not util.is_abstract_socket_namespace(address):
                    os.chmod(address, 0o600)
                listener.listen()
                # Every process it forks has the write end: at the last one's exit, the
                # forkserver reads EOF, and exits.
                alive_r, alive_w = os.pipe()
                ready_r, ready_w = os.pipe()
                try:
                    server = TASKS.Process(
                        target=_serve_objects,
                        args=(listener, _Fd(alive_r), _Fd(ready_w)),
                        name="sperse-objects-forkserver",
                        daemon=True,  # not waited for at exit: it ends with its last client
                    )
                    server.start()
                except BaseException:
                    os.close(alive_w)
                    os.close(ready_r)
                    raise
                finally:
                    os.close(alive_r)
                    os.close(ready_w)
            self._ready_r = ready_r
            self._forkserver_address = address
            self._forkserver_alive_fd = self._alive_w = alive_w
            self._forkserver_pid = server.pid
            self._process = server

    def ready(self) -> bool:
        """Whether it runs and has imported what it preloads. Never waits: False while
        another thread starts it."""
        if not self._lock.acquire(blocking=False):  # type: ignore[attr-defined]
            return False
        try:
            if not self._ready and self._ready_r >= 0:
                readable, _, _ = select.select([self._ready_r], [], [], 0)
                if readable:
                    os.close(self._ready_r)
                    self._ready_r, self._ready = -1, True
            return self._ready and self._process is not None and self._process.exitcode is None
        finally:
            self._lock.release()  # type: ignore[attr-defined]


class _Fd:
    """A file descriptor sent to a forked child (duplicated into it as it starts)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_detach, (reduction.DupFd(self.fd),))


def _detach(duplicate: Any) -> int:
    fd: int = duplicate.detach()
    return fd


def _serve_objects(listener: socket.socket, alive_r: int, ready_w: int) -> None:
    """The objects' forkserver, in a child of the tasks' one: import the rest, say so,
    then serve."""
    for name in OBJECTS_PRELOAD:
        with contextlib.suppress(ImportError):  # made again in the worker, which says why
            importlib.import_module(name)
    gc.freeze()  # as sperse._pool.frozen does in the tasks' forkserver
    os.write(ready_w, b"!")
    os.close(ready_w)
    forkserver.main(listener.detach(), alive_r, [])


_tasks_server = forkserver.ForkServer()
_tasks_server.set_forkserver_preload(TASKS_PRELOAD)
_objects_server = _ObjectsForkServer()


class _TasksPopen(_Popen):
    server = _tasks_server


class _ObjectsPopen(_Popen):
    server = _objects_server


# Module-level, each of them: a process is pickled, its class by name, to the forkserver.
class _TaskProcess(process.BaseProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> _Popen:
        return _TasksPopen(process_obj)


class _ObjectProcess(process.BaseProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> _Popen:
        return _ObjectsPopen(process_obj)


class _TasksContext(ForkServerContext):
    Process = _TaskProcess  # type: ignore[assignment]


class _ObjectsContext(ForkServerContext):
    Process = _ObjectProcess  # type: ignore[assignment]


TASKS = _TasksContext()
OBJECTS = _ObjectsContext()


def start_forkserver() -> None:
    """Start the tasks' forkserver (and its imports) now, not at the first forked worker:
    about 0.1 s of CPU, once per process. Returns once it is started, before its imports
    end."""
    _tasks_server.ensure_running()


def objects_forkserver_ready() -> bool:
    """Whether the objects' forkserver has imported what it preloads (False if it was
    never started). Until then, a worker forked by the tasks' forkserver starts sooner."""
    return _objects_server.ready()


def start_objects_forkserver() -> None:
    """Start the objects' forkserver now (about 0.15 s of CPU more, once per process).
    Returns once the tasks' forkserver has forked it: after the tasks' imports."""
    _objects_server.ensure_running()
