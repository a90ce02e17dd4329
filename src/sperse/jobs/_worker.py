"""What runs inside a worker process: a batch of units in, one outcome per unit out.

Imported by every worker that runs a job, so it imports the standard library only;
wasmtime is imported the first time a WebAssembly batch runs.

Outcomes are plain tuples (they pickle in a fraction of the time of dataclasses)::

    (True, output: bytes, seconds: float)
    (False, kind: str, message: str, detail: str, seconds: float)

``kind`` is one of ``UnitKind`` below; ``detail`` is the unit's captured stderr (and, for
a Python unit, the traceback). A unit that fails is reported as data and the worker goes
on with the next one: a trap, a loop stopped by the time limit, a refused memory growth or
a non-zero exit code never ends the worker.

**The module travels once per worker.** ``run_wasm_batch`` is shipped as a small
``functools.partial`` naming the module by its sha256 (``key``), not holding its bytes. A
worker that has not compiled that module yet answers ``NEED_MODULE``; the client sends
that batch again with the bytes, and the worker compiles it once and keeps it (the last
``sperse._wasm.MODULES_KEPT`` modules, across jobs). Each unit then gets a fresh store and instance,
made from a pre-linked ``InstancePre``.

**Sandbox.** The WebAssembly sandbox (:mod:`sperse._wasm`, shared with flows'
``map_wasm``): a unit's WASI context has its input as stdin, stdout and stderr going to
pipes this worker reads as they fill, no arguments beyond the program name, no environment,
no preopened directory and no sockets; memory capped by the store's limiter (the store
closed when the unit ends), stdout by ``max_output``, time by epoch interruption.
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Final, Literal

from sperse._wasm import (
    MAX_DETAIL,
    MAX_OUTPUT,
    Outcome,
    compile_module,
    failed,
    new_engine,
    ok,
    process_host,
)

__all__ = [
    "MAX_DETAIL",
    "MAX_OUTPUT",
    "NEED_MODULE",
    "Outcome",
    "UnitKind",
    "compile_module",
    "new_engine",
    "run_python_batch",
    "run_wasm_batch",
]

UnitKind = Literal[
    "exit",  # a WASI program exited with a non-zero code
    "trap",  # WebAssembly trapped (unreachable, out-of-bounds access, stack overflow, ...)
    "timeout",  # the unit ran past its time limit
    "memory",  # the unit needed more memory than its limit
    "raised",  # a Python unit raised
    "output",  # a unit's output is not bytes, or too big
    "input",  # the unit's input could not be read (on the client)
    "worker_died",  # the worker process running it died, more often than retries allow
    "server_lost",  # its server was lost, more often than retries allow
    "error",  # anything else (wasmtime refused to instantiate, ...)
]

NEED_MODULE: Final = "sperse.jobs/need-module"
"""What a worker answers when it has not got the module named by the batch's key."""


def run_wasm_batch(
    key: str,
    timeout: float | None,
    max_memory: int | None,
    units: list[bytes],
    module: bytes | None = None,
    *,
    max_output: int = MAX_OUTPUT,
) -> list[Outcome] | str:
    """Run each unit in a fresh instance of the module ``key``; ``NEED_MODULE`` if this
    worker has not got it and ``module`` (its bytes) was not sent."""
    sandbox = process_host().sandbox(key, module)
    if sandbox is None:
        return NEED_MODULE
    return [sandbox.run(data, timeout, max_memory, max_output) for data in units]


def compiled_here() -> int:
    """How many modules this process compiled (for tests of the per-worker cache)."""
    return process_host().compiled


# ---- Python functions -------------------------------------------------------------------


class _UnitTimeout(BaseException):
    """Raised in the main thread when a Python unit runs past its time limit.

    A ``BaseException``, so that ``except Exception`` in the unit lets it through.
    """


def run_python_batch(
    fn: Callable[[bytes], bytes | str], timeout: float | None, units: list[bytes]
) -> list[Outcome]:
    """``fn(data)`` for each unit, its stdout and stderr captured, its exceptions as data."""
    return [_run_python_unit(fn, data, timeout) for data in units]


def _run_python_unit(
    fn: Callable[[bytes], bytes | str], data: bytes, timeout: float | None
) -> Outcome:
    started = time.perf_counter()
    stderr = _Tail(MAX_DETAIL)
    try:
        with (
            contextlib.redirect_stdout(_Dropped()),
            contextlib.redirect_stderr(stderr),
            _time_limit(timeout),
        ):
            value = fn(data)
    except _UnitTimeout:
        seconds = time.perf_counter() - started
        return failed(
            "timeout", f"ran past its time limit of {timeout:g} s", stderr.getvalue(), seconds
        )
    except Exception as exc:
        seconds = time.perf_counter() - started
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        # Drop this module's frame: the traceback starts in the user's function.
        if len(lines) > 2 and lines[0].startswith("Traceback"):
            lines = [lines[0], *lines[2:]]
        detail = stderr.getvalue() + "".join(lines)
        return failed("raised", f"{type(exc).__qualname__}: {exc}", detail, seconds)
    seconds = time.perf_counter() - started
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes | bytearray | memoryview):
        return failed(
            "output",
            f"returned {type(value).__name__}; a job's function must return bytes or str",
            stderr.getvalue(),
            seconds,
        )
    return ok(bytes(value), seconds)


class _Dropped(io.TextIOBase):
    """A unit's stdout: what it prints there is dropped as it is written (never kept)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


class _Tail(io.TextIOBase):
    """A unit's stderr: only its last ``limit`` characters are kept, as it is written, so a
    unit that writes gigabytes there costs its worker no more than that."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._parts.append(text[-self._limit :])
        self._size += min(len(text), self._limit)
        if self._size > 2 * self._limit:
            kept = "".join(self._parts)[-self._limit :]
            self._parts, self._size = [kept], len(kept)
        return len(text)

    def getvalue(self) -> str:
        return "".join(self._parts)[-self._limit :]


@contextlib.contextmanager
def _time_limit(timeout: float | None) -> Iterator[None]:
    """Interrupt the main thread after ``timeout`` seconds (SIGALRM). Elsewhere, or with no
    limit, nothing: the client's deadline for the whole batch is the backstop then."""
    if (
        timeout is None
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    armed = [True]

    def expire(signum: int, frame: FrameType | None) -> None:
        if armed[0]:
            raise _UnitTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
