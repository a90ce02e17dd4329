"""Large byte strings through shared memory files, between the processes of one host.

A client and a server on one machine (and a server and its workers, always) move big
out-of-band pickle buffers as files in ``SHM_DIR`` (a tmpfs: its pages are memory) instead
of through sockets: the writer copies a buffer into a new file once, and names the file;
the reader maps it copy-on-write (:func:`map_copy`), which copies nothing up front and
gives a writable buffer (a numpy array built on it can be changed in place; the file never
is).

Invariants:

- A name is a plain file name (no directory part) that starts with ``sperse-`` and holds
  only letters, digits, ``_`` and ``-`` (:func:`valid_name`); nothing else is ever opened,
  mapped or unlinked here. Names carry who made them: ``sperse-<server pid>-...`` for every
  file of a server's sessions and workers, so that a server sweeps its own when it stops
  (and those of servers that died, when one starts); ``sperse-probe-<client pid>-...`` for
  a client's same-host probe, which the client removes (or a server, once it is dead).
  The one kind of folder: ``sperse-wasm-<pid>-...``, a WebAssembly sandbox's files where it
  needs some (:mod:`sperse._wasm`), removed by its process, or by a server starting or
  stopping once that process is dead.
- Files are created exclusively (``O_EXCL``), readable by their owner only, and never
  rewritten: a mapping of one sees the bytes that were written, for as long as it lives.
- Every file has exactly one owner that unlinks it; who that is, the server documents. A
  mapping outlives the unlinking of its file.
- A file shorter than the size its name was given with is refused before it is mapped
  (touching a mapping past the end of its file would kill the process with SIGBUS).

Standard library only: worker processes import this module.
"""

from __future__ import annotations

import contextlib
import hmac
import mmap
import os
import re
import secrets
import stat
from collections.abc import Iterable
from typing import Any

__all__ = [
    "PREFIX",
    "SHM_DIR",
    "SHM_MIN",
    "ShmError",
    "available",
    "check_probe",
    "make_probe",
    "map_copy",
    "open_read",
    "server_prefix",
    "sweep",
    "sweep_dead_servers",
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
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # no FIFO waits
_CHUNK = 1 << 30


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

    Raises ``ShmError`` (the file is gone then), e.g. when the directory is full.
    """
    view = memoryview(data).cast("B")
    name = new_name(prefix)
    path = _path(name)
    try:
        fd = os.open(path, _WRITE_FLAGS, 0o600)
    except OSError as exc:
        raise ShmError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        with view:
            written = 0
            total = view.nbytes
            while written < total:
                written += os.write(fd, view[written : written + _CHUNK])
    except OSError as exc:
        os.close(fd)
        unlink([name])
        raise ShmError(f"cannot write {view.nbytes} bytes to {path}: {exc.strerror}") from exc
    os.close(fd)
    return name


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
