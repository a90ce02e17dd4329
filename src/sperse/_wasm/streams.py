"""An instance's stdout and stderr, bounded while they are written (see :mod:`sperse._wasm`).

``Streams``: pipes that wasmtime opens as ``/proc/self/fd/N`` and one thread per process
reads as they fill: stdout up to its limit (then its pipe is closed, and the program's next write fails
with ``EPIPE``), stderr's last ``MAX_DETAIL`` bytes. ``Files``: where there is no
``/proc/self/fd``, files in the sandbox's folder, checked when the instance has ended.
Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from typing import Final

__all__ = ["MAX_DETAIL", "PIPES", "Files", "Streams", "text_of"]

MAX_DETAIL: Final = 64 * 1024  # stderr kept for an error report


def text_of(data: bytes) -> str:
    return data[-MAX_DETAIL:].decode("utf-8", "replace")


PIPES: Final = os.path.isdir("/proc/self/fd") and hasattr(select, "epoll")
_READ: Final = 1 << 16


class _Pipe:
    """One pipe of an instance: our reading end (non-blocking), and what was read from it:
    up to ``limit`` bytes (past it, ``over``, nothing kept), or the last ``tail`` bytes."""

    __slots__ = ("chunks", "fd", "limit", "over", "size", "tail", "write_fd")

    def __init__(self, limit: int | None, tail: int | None) -> None:
        self.fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.limit = limit
        self.tail = tail
        self.chunks: list[bytes] = []
        self.size = 0
        self.over = False

    def take(self) -> bool:
        """Read what is there; False at its end, or past the limit (then stop reading)."""
        while True:
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                return True
            if not data:
                return False
            self.size += len(data)
            self.chunks.append(data)
            if self.limit is not None and self.size > self.limit:
                self.over = True
                self.chunks.clear()
                return False
            if self.tail is not None:
                while self.size - len(self.chunks[0]) >= self.tail:
                    self.size -= len(self.chunks.pop(0))


class _Reader:
    """The one thread of a process that reads every running instance's pipes as they fill
    (an instance blocks on a full pipe; the thread that runs it is inside wasmtime)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoll = select.epoll()
        self._pipes: dict[int, _Pipe] = {}
        self._thread: threading.Thread | None = None

    def add(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes[pipe.fd] = pipe
            self._epoll.register(pipe.fd, select.EPOLLIN)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sperse-wasm-output", daemon=True
                )
                self._thread.start()

    def remove(self, pipe: _Pipe) -> None:
        """Stop reading ``pipe`` (if it is still read): it is the caller's after this."""
        with self._lock:
            if self._pipes.pop(pipe.fd, None) is pipe:
                self._epoll.unregister(pipe.fd)

    def _run(self) -> None:
        while True:
            for fd, _ in self._epoll.poll():
                with self._lock:
                    pipe = self._pipes.get(fd)
                    if pipe is None or pipe.take():
                        continue
                    del self._pipes[fd]
                    self._epoll.unregister(fd)
                    if pipe.over:  # the program's next write fails (EPIPE)
                        os.close(pipe.fd)
                        pipe.fd = -1


_reader: _Reader | None = None
_reader_lock = threading.Lock()


def _the_reader() -> _Reader:
    global _reader
    with _reader_lock:
        if _reader is None:
            _reader = _Reader()
        return _reader


def _after_fork_in_child() -> None:
    global _reader, _reader_lock
    _reader = None  # its thread did not survive the fork
    _reader_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Streams:
    """An instance's stdout and stderr as pipes (wasmtime opens ``/proc/self/fd/N``), read
    as they are written by the process's reader thread: stdout up to ``max_output`` (then
    its pipe is closed: the program's next write fails), stderr's last ``MAX_DETAIL``
    bytes kept.

    ``finish``, once the store is closed (every write has returned: what was written is
    in the pipe), takes the pipes back and reads what is left without waiting for their
    end, so a process that inherited a writing end cannot keep it waiting."""

    def __init__(self, max_output: int) -> None:
        self._out = _Pipe(max_output, None)
        try:
            self._err = _Pipe(None, MAX_DETAIL)
        except BaseException:
            os.close(self._out.fd)
            os.close(self._out.write_fd)
            raise
        self._reading = False

    @property
    def over(self) -> bool:
        return self._out.over

    def paths(self) -> tuple[str, str]:
        return f"/proc/self/fd/{self._out.write_fd}", f"/proc/self/fd/{self._err.write_fd}"

    def start(self) -> None:
        """wasmtime has opened its own ends: close ours, and read."""
        reader = _the_reader()
        self._reading = True  # from here, finish takes back what was added
        for pipe in (self._out, self._err):
            os.close(pipe.write_fd)
            pipe.write_fd = -1
            reader.add(pipe)

    def finish(self) -> None:
        for pipe in (self._out, self._err):
            if self._reading:
                _the_reader().remove(pipe)
            if pipe.fd >= 0:
                if not pipe.over:
                    pipe.take()
                os.close(pipe.fd)
                pipe.fd = -1
            if pipe.write_fd >= 0:
                os.close(pipe.write_fd)
                pipe.write_fd = -1

    def output(self) -> bytes:
        return b"".join(self._out.chunks)

    def stderr(self) -> str:
        return text_of(b"".join(self._err.chunks))


class Files:
    """Stdout and stderr as files of the sandbox's folder (no ``/proc/self/fd``): the limit
    is checked when the instance has ended."""

    def __init__(self, folder: str, max_output: int) -> None:
        self._stdout = os.path.join(folder, "stdout")
        self._stderr = os.path.join(folder, "stderr")
        self._limit = max_output
        self.over = False
        self._output = b""
        self._text = ""

    def paths(self) -> tuple[str, str]:
        return self._stdout, self._stderr

    def start(self) -> None:
        pass

    def finish(self) -> None:
        try:
            size = os.path.getsize(self._stdout)
        except OSError:
            size = 0
        self.over = size > self._limit
        self._output = b"" if self.over else _read_and_remove(self._stdout)
        with contextlib.suppress(OSError):
            os.unlink(self._stdout)
        self._text = text_of(_read_tail_and_remove(self._stderr))

    def output(self) -> bytes:
        return self._output

    def stderr(self) -> str:
        return self._text


def _read_tail_and_remove(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - MAX_DETAIL))
            data = f.read()
    except FileNotFoundError:
        return b""
    with contextlib.suppress(OSError):
        os.unlink(path)
    return data


def _read_and_remove(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return b""
    with contextlib.suppress(OSError):
        os.unlink(path)
    return data
