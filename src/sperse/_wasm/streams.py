"""An instance's stdout and stderr, bounded while they are written (see :mod:`sperse._wasm`).

``Streams``: pipes that wasmtime opens as ``/proc/self/fd/N`` and a thread reads as they
fill: stdout up to its limit (then its pipe is closed, and the program's next write fails
with ``EPIPE``), stderr's last ``MAX_DETAIL`` bytes. ``Files``: where there is no
``/proc/self/fd``, files in the sandbox's folder, checked when the instance has ended.
Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Final

__all__ = ["MAX_DETAIL", "PIPES", "Files", "Streams", "text_of"]

MAX_DETAIL: Final = 64 * 1024  # stderr kept for an error report


def text_of(data: bytes) -> str:
    return data[-MAX_DETAIL:].decode("utf-8", "replace")


PIPES: Final = os.path.isdir("/proc/self/fd")
_READ: Final = 1 << 16


class Streams:
    """An instance's stdout and stderr as pipes (wasmtime opens ``/proc/self/fd/N``), read
    by a thread as they are written: stdout up to ``max_output`` (then its pipe is closed:
    the program's next write fails), stderr's last ``MAX_DETAIL`` bytes kept.

    The reader stops when both pipes are at their end, or when ``finish`` wakes it after
    the store is closed (every write has returned by then: what was written is in the
    pipe), so a process that inherited a writing end cannot keep it waiting."""

    def __init__(self, max_output: int) -> None:
        self._limit = max_output
        self.over = False
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._out_size = self._err_size = 0
        self._fds: list[int] = []
        self._thread: threading.Thread | None = None
        try:
            self._out_r, self._out_w = self._pipe()
            self._err_r, self._err_w = self._pipe()
            self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._fds.append(self._wake)
        except BaseException:
            self._close_all()
            raise

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self._fds += [r, w]
        return r, w

    def paths(self) -> tuple[str, str]:
        return f"/proc/self/fd/{self._out_w}", f"/proc/self/fd/{self._err_w}"

    def start(self) -> None:
        """wasmtime has opened its own ends: close ours, and read."""
        for fd in (self._out_w, self._err_w):
            self._close(fd)
        self._thread = threading.Thread(target=self._read, name="sperse-wasm-output", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        if self._thread is not None:
            os.eventfd_write(self._wake, 1)
            self._thread.join()
        self._close_all()

    def output(self) -> bytes:
        return b"".join(self._out)

    def stderr(self) -> str:
        return text_of(b"".join(self._err))

    def _read(self) -> None:
        import selectors

        with selectors.DefaultSelector() as selector:
            for fd in (self._out_r, self._err_r, self._wake):
                selector.register(fd, selectors.EVENT_READ)
            open_ = {self._out_r, self._err_r}
            woken = False
            while open_:
                if woken:  # the store is closed: read what is left, without waiting
                    for fd in open_:
                        os.set_blocking(fd, False)
                        while self._take(fd):
                            pass
                    break
                for key, _ in selector.select():
                    fd = int(key.fd)
                    if fd == self._wake:
                        woken = True
                    elif fd in open_ and not self._take(fd):
                        open_.discard(fd)
                        selector.unregister(fd)
                        if self.over and fd == self._out_r:
                            self._close(fd)  # the program's next write fails (EPIPE)

    def _take(self, fd: int) -> bool:
        """Read once from ``fd``; False at its end (or, for stdout, past the limit)."""
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return False
        if not data:
            return False
        if fd == self._err_r:
            self._err.append(data)
            self._err_size += len(data)
            while self._err_size - len(self._err[0]) >= MAX_DETAIL:
                self._err_size -= len(self._err.pop(0))
            return True
        self._out_size += len(data)
        if self._out_size > self._limit:
            self.over = True
            self._out.clear()
            return False
        self._out.append(data)
        return True

    def _close(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            os.close(fd)

    def _close_all(self) -> None:
        for fd in list(self._fds):
            self._close(fd)


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
