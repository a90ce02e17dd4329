"""Large byte strings through shared memory files, between the processes of one host.

A client and a server on one machine (and a server and its workers, always) move big
out-of-band pickle buffers as files in ``SHM_DIR`` (a tmpfs: its pages are memory) instead
of through sockets: the writer copies a buffer into a new file once (a big one into the
pages of a file it made ahead, :class:`Standby`), and names the file; the reader maps it
copy-on-write (:func:`map_copy`), which copies nothing up front and gives a writable buffer
(a numpy array built on it can be changed in place; the file never is).

Invariants:

- A name is a plain file name (no directory part) that starts with ``sperse-`` and holds
  only letters, digits, ``_`` and ``-`` (:func:`valid_name`); nothing else is ever opened,
  mapped or unlinked here. Names carry who made them: ``sperse-<server pid>-...`` for every
  file of a server's sessions and workers, so that a server sweeps its own when it stops
  (and those of servers that died, when one starts); ``sperse-probe-<client pid>-...`` for
  a client's same-host probe, which the client removes (or a server, once it is dead);
  ``sperse-<server pid>-standby-<pid>-...`` for a file made ahead by process ``pid``, not yet
  written, which that process removes (or the server, once it is dead).
  The one kind of folder: ``sperse-wasm-<pid>-...``, a WebAssembly sandbox's files where it
  needs some (:mod:`sperse._wasm`), removed by its process, or by a server starting or
  stopping once that process is dead.
- Files are created exclusively (``O_EXCL``), readable by their owner only, written once
  before they are named, and never rewritten: a mapping of one sees the bytes that were
  written, for as long as it lives.
- Every file has exactly one owner that unlinks it; who that is, the server documents. A
  mapping outlives the unlinking of its file.
- A file shorter than the size its name was given with is refused before it is mapped
  (touching a mapping past the end of its file would kill the process with SIGBUS).

Standard library only: worker processes import this module.
"""

from __future__ import annotations

import atexit
import contextlib
import hmac
import mmap
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "PREFIX",
    "SHM_DIR",
    "SHM_MIN",
    "ShmError",
    "Standby",
    "available",
    "check_probe",
    "close_written",
    "is_standby",
    "make_probe",
    "map_copy",
    "open_read",
    "open_to_write",
    "server_prefix",
    "standby",
    "sweep",
    "sweep_dead_servers",
    "sweep_dead_standbys",
    "unlink",
    "valid_name",
    "write",
]

SHM_DIR = "/dev/shm"
SHM_MIN = 256 << 10  # buffers at least this big travel as files
PREFIX = "sperse-"
_NAME = re.compile(r"sperse-[A-Za-z0-9_-]{1,200}\Z")
# a server's files, a client's probe, a WebAssembly sandbox's folder
_OWNED = re.compile(r"sperse-(probe-|wasm-)?(\d+)-")
_SERVER = re.compile(r"sperse-\d+-")
_STANDBY = re.compile(r"sperse-\d+-standby-(\d+)-")
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # no FIFO waits
_CHUNK = 1 << 30
_NEW = "-new"  # after a standby file's name while it is made
_NICE = 19  # a standby file is made with the CPU time the rest leaves


class ShmError(OSError):
    """A shared memory file could not be written or read (the message says which and why)."""


def available() -> bool:
    """Whether this host has a shared memory directory this process may write to."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK)


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def _path(name: str) -> str:
    if not valid_name(name):
        raise ShmError(f"{name!r} is not the name of a sperse shared memory file")
    return os.path.join(SHM_DIR, name)


def server_prefix(pid: int | None = None) -> str:
    """The prefix of every file of the server with process id ``pid`` (this process)."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}-"


def new_name(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def write(prefix: str, data: Any) -> str:
    """Write ``data`` (any buffer) into a new file named ``prefix`` + random; return the name.

    A big one goes into this process's standby file when one of its size is ready
    (:class:`Standby`), and asks for the next. Raises ``ShmError`` (the file is gone then),
    e.g. when the directory is full.
    """
    view = memoryview(data).cast("B")
    with view:
        name = standby.use(prefix, view)  # (which asks for the next)
        if name is None:
            name = _write_new(prefix, view)
            standby.want(prefix, view.nbytes)
    return name


def _write_new(prefix: str, view: memoryview) -> str:
    name = new_name(prefix)
    path = _path(name)
    try:
        fd = os.open(path, _WRITE_FLAGS, 0o600)
    except OSError as exc:
        raise ShmError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        _write_all(fd, view)
    except OSError as exc:
        os.close(fd)
        unlink([name])
        raise ShmError(f"cannot write {view.nbytes} bytes to {path}: {exc.strerror}") from exc
    os.close(fd)
    return name


def open_to_write(prefix: str, size: int) -> tuple[str, int, int]:
    """(name, fd, capacity) of a file for about ``size`` bytes (a hint; 0: not known) named
    ``prefix`` + random: the standby file if it fits (capacity: its size), else a new one
    (0). End with :func:`close_written`. Raises ``OSError``, leaving no file."""
    taken = standby.take(prefix, size)
    if taken is None:
        name, capacity, flags = new_name(prefix), 0, _WRITE_FLAGS
    else:
        (name, capacity), flags = taken, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(_path(name), flags, 0o600)
    except OSError:
        if taken is not None:
            unlink([name])
        raise
    return name, fd, capacity


def close_written(prefix: str, fd: int, capacity: int, size: int) -> None:
    """Cut a file of :func:`open_to_write` to the ``size`` bytes written (a reader may map
    it whole), close it, ask for a standby file that size. ``OSError``: ``fd`` stays open."""
    if capacity > size:
        os.ftruncate(fd, size)
    os.close(fd)
    standby.want(prefix, size)


def _write_all(fd: int, view: memoryview) -> None:
    written = 0
    total = view.nbytes
    while written < total:
        written += os.pwrite(fd, view[written : written + _CHUNK], written)


# ---- standby files: the pages of the next big write, allocated ahead ------------------


class _File:
    """A standby file, ready."""

    __slots__ = ("made_at", "name", "server", "size")

    def __init__(self, server: str, name: str, size: int, made_at: float) -> None:
        self.server = server  # the server prefix of the names it may take
        self.name = name
        self.size = size
        self.made_at = made_at


class Standby:
    """One file per process made ahead of its next big write, its pages already allocated.

    Writing into a new tmpfs file costs more in allocating its pages than in copying the
    bytes (100 MB: about 45 ms, against 17 ms into pages allocated before). So after a
    write of at least ``min_size`` bytes, a thread of this process, at the lowest priority,
    makes a file of that size (``posix_fallocate``). The next big write for the same server
    (its prefix starts with the same ``sperse-<server pid>-``: a session's, a task
    attempt's) of at most its size, and more than half of it, takes it: the file gets a new
    name of the writer's prefix (a hard link), is written from its start and cut to its
    size. A file is still written once, before anyone knows its name. One file at a time,
    at most ``max_size`` bytes, only while ``SHM_DIR`` has ``room`` times its size free,
    and removed after ``idle`` seconds unused, at exit, or by :meth:`drop`.

    A standby file is named ``sperse-<server pid>-standby-<pid>-<random>`` (with ``-new``
    after it while it is made; it is renamed when ready): a server sweeps those of a
    process that died (:func:`sweep_dead_standbys`), and all of its own when it
    stops. A forked child starts with none (the parent's stays the parent's).
    """

    def __init__(
        self,
        *,
        min_size: int = 16 << 20,
        max_size: int = 1 << 30,
        idle: float = 5.0,
        room: int = 4,
    ) -> None:
        self.min_size = min_size
        self.max_size = max_size
        self.idle = idle
        self.room = room
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._file: _File | None = None  # ready
        self._wanted: tuple[str, int] | None = None
        self._epoch = 0  # a file made for an older epoch (before a drop) is removed
        self._busy = False  # the thread is making a file
        self._thread: threading.Thread | None = None
        self.tried = 0  # files the thread set out to make (made, or no room for them)
        self.made = 0  # files made ready
        self.expired = 0  # ready files removed unused after ``idle`` seconds

    def use(self, prefix: str, view: memoryview) -> str | None:
        """Write ``view`` into the ready file and name it (None: none fits, or it failed)."""
        size = view.nbytes
        taken = self.take(prefix, size)
        if taken is None:
            return None
        name, capacity = taken
        try:
            fd = os.open(_path(name), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                _write_all(fd, view)
                if capacity > size:
                    os.ftruncate(fd, size)  # a reader may map the whole file
            finally:
                os.close(fd)
        except OSError:
            unlink([name])
            return None
        self.want(prefix, size)
        return name

    def take(self, prefix: str, size: int) -> tuple[str, int] | None:
        """The ready file, for a write of ``size`` bytes with ``prefix``, under a new name
        of ``prefix``: (that name, the file's size). Its taker writes it from its start,
        cuts it to what it wrote, and asks for the next (:meth:`want`). None: no file fits
        (``size`` must be at least ``min_size``, at most the file's, and more than half).
        """
        if size < self.min_size:
            return None
        server = _server_of(prefix)
        with self._lock:
            ready = self._file
            if ready is None or ready.server != server or not size <= ready.size <= 2 * size:
                return None  # (cutting off more than half would cost about what it saves)
            self._file = None
        name = new_name(prefix)
        try:
            os.link(_path(ready.name), _path(name))  # never replaces a file
        except OSError:
            return None
        finally:
            unlink([ready.name])
        return name, ready.size

    def want(self, prefix: str, size: int) -> None:
        """Have a file of ``size`` bytes ready for the next write with ``prefix``."""
        if not self.min_size <= size <= self.max_size:
            return
        server = _server_of(prefix)
        if server is None:
            return
        with self._lock:
            ready = self._file
            if ready is not None and ready.server == server and ready.size >= size:
                return
            self._wanted = (server, size)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sperse-shm-standby", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def drop(self, prefix: str | None = None, timeout: float = 10.0) -> None:
        """Remove the ready file (for ``prefix``'s server; None: any) and forget what was
        wanted; a file being made is removed before this returns (within ``timeout``)."""
        server = None if prefix is None else _server_of(prefix)
        with self._lock:
            self._epoch += 1
            ready = self._file
            if ready is not None and (prefix is None or ready.server == server):
                self._file = None
            else:
                ready = None
            if self._wanted is not None and (prefix is None or self._wanted[0] == server):
                self._wanted = None
            self._changed.wait_for(lambda: not self._busy, timeout)
        if ready is not None:
            unlink([ready.name])

    def wait(self, done: Callable[[Standby], bool], timeout: float) -> bool:
        """Whether ``done(self)`` (of its counts), waiting up to ``timeout`` seconds for it."""
        with self._lock:
            return self._changed.wait_for(lambda: done(self), timeout)

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # (Linux: a thread's own niceness)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
        while True:  # a daemon thread: waits for work, or for the ready file to expire
            old, job = self._next()
            made = None
            try:
                if old is not None:
                    unlink([old.name])
                if job is not None:
                    server, size, epoch = job
                    made = self._make(server, size)
                    with self._lock:
                        self.tried += 1
                        if made is not None and epoch == self._epoch and self._file is None:
                            # Named as ready only once it is: what is seen in SHM_DIR is so.
                            try:
                                os.rename(_path(made.name + _NEW), _path(made.name))
                            except OSError:
                                pass  # (removed below)
                            else:
                                self._file, made = made, None
                                self.made += 1
            finally:
                if made is not None:  # dropped meanwhile, or it could not be named
                    unlink([made.name + _NEW])
                with self._lock:
                    self._busy = False
                    if old is not None and job is None:
                        self.expired += 1
                    self._changed.notify_all()

    def _next(self) -> tuple[_File | None, tuple[str, int, int] | None]:
        """Wait for a file to make (it replaces the ready one) or for the ready one to
        expire; returns the file to remove and what to make."""
        with self._lock:
            while self._wanted is None:
                ready = self._file
                if ready is None:
                    self._changed.wait()
                    continue
                left = ready.made_at + self.idle - time.monotonic()
                if left <= 0:
                    self._file = None
                    self._busy = True
                    return ready, None
                self._changed.wait(left)
            self._busy = True
            server, size = self._wanted
            self._wanted = None
            old, self._file = self._file, None
            return old, (server, size, self._epoch)

    def _make(self, server: str, size: int) -> _File | None:
        try:
            free = os.statvfs(SHM_DIR)
        except OSError:
            return None
        if free.f_bavail * free.f_frsize < self.room * size:
            return None
        name = f"{server}standby-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            fd = os.open(_path(name + _NEW), _WRITE_FLAGS, 0o600)
        except OSError:  # ShmError too: a prefix no name can start with
            return None
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:
            unlink([name + _NEW])
            return None
        finally:
            os.close(fd)
        return _File(server, name, size, time.monotonic())

    def _forked(self) -> None:
        self._reset()  # the parent's file, thread and lock are the parent's


standby = Standby()
os.register_at_fork(after_in_child=standby._forked)
atexit.register(standby.drop)


def _server_of(prefix: str) -> str | None:
    """``sperse-<server pid>-`` of a prefix that starts so (None: no server's)."""
    match = _SERVER.match(prefix)
    return match.group(0) if match else None


def is_standby(name: str) -> bool:
    """Whether ``name`` is a standby file's (made ahead, not yet written: :class:`Standby`)."""
    return _STANDBY.match(name) is not None


def sweep_dead_standbys() -> int:
    """Remove the standby files whose process no longer exists."""
    doomed = []
    for name in _names():
        match = _STANDBY.match(name)
        if match is not None and not _alive(int(match.group(1))):
            doomed.append(name)
    return unlink(doomed)


def _open_checked(name: str, size: int | None) -> tuple[int, int]:
    path = _path(name)
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        raise ShmError(
            f"cannot open shared memory file {path}: {exc.strerror} (it was released, or "
            "its owner is gone)"
        ) from exc
    try:
        info = os.fstat(fd)
    except OSError as exc:  # pragma: no cover - fstat of an open file
        os.close(fd)
        raise ShmError(f"cannot stat {path}: {exc.strerror}") from exc
    actual = info.st_size
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ShmError(f"{path} is not a regular file")
    if size is None:
        size = actual
    elif actual < size:
        os.close(fd)
        raise ShmError(f"shared memory file {path} holds {actual} bytes, not {size}")
    return fd, size


def map_copy(name: str, size: int | None = None) -> memoryview:
    """The first ``size`` bytes (default: all) of file ``name``, mapped copy-on-write:
    writable, nothing copied until written, the file never changed. Raises ``ShmError``."""
    fd, size = _open_checked(name, size)
    if size == 0:
        os.close(fd)
        return memoryview(bytearray())
    try:
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise ShmError(f"cannot map shared memory file {name}: {exc}") from exc
    finally:
        os.close(fd)
    return memoryview(mapping)


def open_read(name: str, size: int) -> int:
    """A file descriptor to read ``name`` with (``os.pread``: no SIGBUS if it shrinks)."""
    return _open_checked(name, size)[0]


def unlink(names: Iterable[str]) -> int:
    """Remove these files (those already gone are skipped); returns how many were removed."""
    removed = 0
    for name in names:
        if not valid_name(name):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))
            removed += 1
    return removed


def _names() -> list[str]:
    try:
        return os.listdir(SHM_DIR)
    except OSError:
        return []


def sweep(*prefixes: str) -> int:
    """Remove every file whose name starts with one of ``prefixes``."""
    wanted = tuple(p for p in prefixes if p.startswith(PREFIX) and len(p) > len(PREFIX))
    if not wanted:
        return 0
    return unlink(name for name in _names() if name.startswith(wanted))


def sweep_dead_servers() -> int:
    """Remove the files of servers (``sperse-<pid>-...``), the probes of clients
    (``sperse-probe-<pid>-...``) and the folders of WebAssembly sandboxes
    (``sperse-wasm-<pid>-...``) whose process no longer exists."""
    dead: dict[int, bool] = {}
    doomed = []
    folders = 0
    for name in _names():
        match = _OWNED.match(name)
        if match is None:
            continue
        pid = int(match.group(2))
        if pid not in dead:
            dead[pid] = not _alive(pid)
        if not dead[pid]:
            continue
        if match.group(1) == "wasm-":
            folders += _remove_folder(name)
        else:
            doomed.append(name)
    return unlink(doomed) + folders


def _remove_folder(name: str) -> int:
    """Remove the folder ``name`` of ``SHM_DIR`` and the files in it, if it is a folder of
    this user (never following a link); 1 if it was removed."""
    if not valid_name(name):
        return 0
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return 0
        for entry in os.listdir(fd):
            with contextlib.suppress(OSError):
                os.unlink(entry, dir_fd=fd)
    except OSError:
        return 0
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        return 0
    return 1


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we can judge: keep its files
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- the same-host probe ------------------------------------------------------------------


def make_probe() -> tuple[str, bytes]:
    """A new file holding a random nonce: (its name, the nonce). Raises ``ShmError``."""
    nonce = secrets.token_bytes(32)
    return write(f"{PREFIX}probe-{os.getpid()}-", nonce), nonce


def check_probe(name: str, nonce: bytes) -> bool:
    """Whether file ``name`` holds ``nonce`` and belongs to this process's user: then the
    client that made it shares this host's shared memory, and its files and ours can be
    read both ways."""
    if not name.startswith(f"{PREFIX}probe-") or not valid_name(name) or len(nonce) < 16:
        return False
    try:
        fd = os.open(os.path.join(SHM_DIR, name), _READ_FLAGS)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return False
        if info.st_size != len(nonce):
            return False
        return hmac.compare_digest(os.pread(fd, len(nonce) + 1, 0), nonce)
    except OSError:
        return False
    finally:
        os.close(fd)
