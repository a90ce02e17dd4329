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
``MODULES_KEPT`` modules, across jobs). Each unit then gets a fresh store and instance,
made from a pre-linked ``InstancePre``.

**Sandbox.** A unit's WASI context has its input as stdin, stdout and stderr going to
private files of this worker, no arguments beyond the program name, no environment, no
preopened directory and no sockets. Memory is capped by the store's limiter; time by epoch
interruption: a ticker thread advances the engine's epoch every ``TICK`` seconds while a
unit with a time limit runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    import wasmtime

__all__ = [
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

Outcome = tuple[Any, ...]

NEED_MODULE: Final = "sperse.jobs/need-module"
"""What a worker answers when it has not got the module named by the batch's key."""

MODULES_KEPT: Final = 8
TICK: Final = 0.01  # seconds between epoch ticks while a time-limited unit runs
MAX_DETAIL: Final = 64 * 1024  # stderr kept for an error report
MAX_OUTPUT: Final = 1 << 30  # a unit's output above this fails it
_PROGRAM_NAME: Final = "unit"


def _ok(output: bytes, seconds: float) -> Outcome:
    return (True, output, seconds)


def _failed(kind: UnitKind, message: str, detail: str, seconds: float) -> Outcome:
    return (False, kind, message, detail[-MAX_DETAIL:], seconds)


def _text(data: bytes) -> str:
    return data[-MAX_DETAIL:].decode("utf-8", "replace")


# ---- WebAssembly ------------------------------------------------------------------------


def new_engine() -> wasmtime.Engine:
    """The engine every module is compiled for: epoch interruption on (time limits)."""
    import wasmtime

    config = wasmtime.Config()
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def compile_module(engine: wasmtime.Engine, data: bytes) -> tuple[wasmtime.Module, Any]:
    """Compile ``data`` and link it against WASI: ``(module, InstancePre)``.

    Raises ``ValueError`` with wasmtime's reason when the bytes are no valid module, it
    imports something WASI does not provide, or it is not a WASI command (no ``_start``).
    """
    import wasmtime

    try:
        module = wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as exc:
        raise ValueError(f"not a valid WebAssembly module: {exc}") from None
    if not any(export.name == "_start" for export in module.exports):
        raise ValueError(
            "not a WASI command: the module exports no `_start` function (build it as a "
            "program with a main function, e.g. `zig cc -target wasm32-wasi`, not as a "
            "library or reactor)"
        )
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    try:
        pre = linker.instantiate_pre(module)
    except wasmtime.WasmtimeError as exc:
        raise ValueError(
            f"the module imports something a sandboxed WASI command cannot have: {exc}"
        ) from None
    return module, pre


class _Ticker:
    """Advances the engine's epoch every ``TICK`` seconds while a time-limited unit runs."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._cond = threading.Condition()
        self._active = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sperse-wasm-epoch", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._active == 0:
                    self._cond.wait()
            # The clock of the time limit: wasm code runs with the GIL released.
            time.sleep(TICK)
            self._engine.increment_epoch()


class _Sandbox:
    """The compiled module and this worker's private stdout/stderr files."""

    def __init__(self, engine: wasmtime.Engine, ticker: _Ticker, data: bytes) -> None:
        self._engine = engine
        self._ticker = ticker
        self._module, self._pre = compile_module(engine, data)
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._dir = tempfile.mkdtemp(prefix=f"sperse-wasm-{os.getpid()}-", dir=base)
        self._stdout = os.path.join(self._dir, "stdout")
        self._stderr = os.path.join(self._dir, "stderr")
        self._stdin = os.path.join(self._dir, "stdin")

    def close(self) -> None:
        for path in (self._stdout, self._stderr, self._stdin):
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    def run(self, data: bytes, timeout: float | None, max_memory: int | None) -> Outcome:
        import wasmtime

        started = time.perf_counter()
        config = wasmtime.WasiConfig()
        config.argv = [_PROGRAM_NAME]
        self._set_stdin(config, data)
        config.stdout_file = self._stdout
        config.stderr_file = self._stderr
        store = wasmtime.Store(self._engine)
        store.set_wasi(config)
        if max_memory is not None:
            store.set_limits(memory_size=max_memory)
        limit = contextlib.nullcontext() if timeout is None else self._ticker.running()
        store.set_epoch_deadline(1 << 62 if timeout is None else int(timeout / TICK) + 2)
        code = 0
        error: BaseException | None = None
        memory_used = 0
        with limit:
            try:
                instance = self._pre.instantiate(store)
                start = instance.exports(store)["_start"]
                try:
                    start(store)
                except wasmtime.ExitTrap as exc:
                    code = exc.code
                finally:
                    memory_used = _memory_size(instance, store)
            except wasmtime.ExitTrap as exc:  # an exit while instantiating
                code = exc.code
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                error = exc
        del store, config
        output = _read_and_remove(self._stdout)
        stderr = _text(_read_and_remove(self._stderr))
        seconds = time.perf_counter() - started
        if error is not None:
            return _wasm_failure(error, stderr, seconds, timeout, max_memory, memory_used)
        if code != 0:
            return _failed("exit", f"exited with code {code}", stderr, seconds)
        if len(output) > MAX_OUTPUT:
            return _failed(
                "output", f"wrote {len(output)} bytes, over {MAX_OUTPUT}", stderr, seconds
            )
        return _ok(output, seconds)

    def _set_stdin(self, config: wasmtime.WasiConfig, data: bytes) -> None:
        """The unit's input as stdin: straight from memory where this wasmtime allows it
        (its C API has ``wasi_config_set_stdin_bytes``), else through a file."""
        ffi = _stdin_ffi()
        if ffi is None:
            with open(self._stdin, "wb") as f:
                f.write(data)
            config.stdin_file = self._stdin
            return
        import ctypes

        vec = ffi.wasm_byte_vec_t()
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data) if data else None
        ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buffer)
        ffi.wasi_config_set_stdin_bytes(config.ptr(), ctypes.byref(vec))  # takes ownership


_ffi_checked = False
_ffi: Any = None


def _stdin_ffi() -> Any:
    global _ffi_checked, _ffi
    if not _ffi_checked:
        _ffi_checked = True
        try:
            from wasmtime import _ffi as ffi

            if hasattr(ffi, "wasi_config_set_stdin_bytes") and hasattr(ffi, "wasm_byte_vec_new"):
                _ffi = ffi
        except ImportError:  # pragma: no cover - another wasmtime layout
            _ffi = None
    return _ffi


def _memory_size(instance: Any, store: Any) -> int:
    import wasmtime

    try:
        memory = instance.exports(store).get("memory")
        if isinstance(memory, wasmtime.Memory):
            return int(memory.data_len(store))
    except wasmtime.WasmtimeError:
        pass
    return 0


def _wasm_failure(
    error: BaseException,
    stderr: str,
    seconds: float,
    timeout: float | None,
    max_memory: int | None,
    memory_used: int,
) -> Outcome:
    import wasmtime

    text = str(error).strip()
    first = text.splitlines()[-1].strip() if text else type(error).__name__
    code = error.trap_code if isinstance(error, wasmtime.Trap) else None
    if code == wasmtime.TrapCode.INTERRUPT:
        return _failed("timeout", f"ran past its time limit of {timeout:g} s", stderr, seconds)
    near_limit = max_memory is not None and memory_used + 65536 > max_memory
    if max_memory is not None and (near_limit or "memory minimum size" in text):
        limit = _mib(max_memory)
        return _failed(
            "memory",
            f"needed more than its memory limit of {limit} ({first})",
            f"{stderr}\n{text}".strip(),
            seconds,
        )
    if isinstance(error, wasmtime.Trap):
        return _failed("trap", f"trapped: {first}", f"{stderr}\n{text}".strip(), seconds)
    return _failed("error", f"wasmtime: {first}", f"{stderr}\n{text}".strip(), seconds)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _read_and_remove(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return b""
    with contextlib.suppress(OSError):
        os.unlink(path)
    return data


class _WasmWorker:
    """This worker's engine, ticker and compiled modules (most recently used last)."""

    def __init__(self) -> None:
        self.engine = new_engine()
        self.ticker = _Ticker(self.engine)
        self.modules: OrderedDict[str, _Sandbox] = OrderedDict()
        self.compiled = 0

    def sandbox(self, key: str, module: bytes | None) -> _Sandbox | None:
        sandbox = self.modules.get(key)
        if sandbox is not None:
            self.modules.move_to_end(key)
            return sandbox
        if module is None:
            return None
        if hashlib.sha256(module).hexdigest() != key:
            raise ValueError(f"the module sent does not have the digest {key}")
        sandbox = _Sandbox(self.engine, self.ticker, module)
        self.compiled += 1
        self.modules[key] = sandbox
        while len(self.modules) > MODULES_KEPT:
            _, old = self.modules.popitem(last=False)
            old.close()
        return sandbox


_wasm_worker: _WasmWorker | None = None


def run_wasm_batch(
    key: str,
    timeout: float | None,
    max_memory: int | None,
    units: list[bytes],
    module: bytes | None = None,
) -> list[Outcome] | str:
    """Run each unit in a fresh instance of the module ``key``; ``NEED_MODULE`` if this
    worker has not got it and ``module`` (its bytes) was not sent."""
    global _wasm_worker
    if _wasm_worker is None:
        _wasm_worker = _WasmWorker()
    sandbox = _wasm_worker.sandbox(key, module)
    if sandbox is None:
        return NEED_MODULE
    return [sandbox.run(data, timeout, max_memory) for data in units]


def compiled_here() -> int:
    """How many modules this process compiled (for tests of the per-worker cache)."""
    return 0 if _wasm_worker is None else _wasm_worker.compiled


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
    stderr = io.StringIO()
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(stderr),
            _time_limit(timeout),
        ):
            value = fn(data)
    except _UnitTimeout:
        seconds = time.perf_counter() - started
        return _failed(
            "timeout", f"ran past its time limit of {timeout:g} s", stderr.getvalue(), seconds
        )
    except Exception as exc:
        seconds = time.perf_counter() - started
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        # Drop this module's frame: the traceback starts in the user's function.
        if len(lines) > 2 and lines[0].startswith("Traceback"):
            lines = [lines[0], *lines[2:]]
        detail = stderr.getvalue() + "".join(lines)
        return _failed("raised", f"{type(exc).__qualname__}: {exc}", detail, seconds)
    seconds = time.perf_counter() - started
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes | bytearray | memoryview):
        return _failed(
            "output",
            f"returned {type(value).__name__}; a job's function must return bytes or str",
            stderr.getvalue(),
            seconds,
        )
    return _ok(bytes(value), seconds)


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
