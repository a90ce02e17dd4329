"""The WebAssembly sandbox of jobs (``sperse submit --wasm``) and flows (``map_wasm``):
a module compiled once per process and kept, each input run in a fresh instance.

Standard library only at import (workers import it); wasmtime is imported when a module is
first compiled.

**The calling convention: bytes in, bytes out.** An input is the instance's stdin and its
stdout is the output, as for a WASI command. The function called is ``_start`` (a WASI
command: jobs) or any exported function without parameters (``map_wasm(module, export)``;
a module that exports ``_initialize``, a WASI reactor, has it called first in each
instance). A non-zero exit code, a trap, a limit passed fail that input, as data.

Outcomes are plain tuples (they pickle in a fraction of the time of dataclasses)::

    (True, output: bytes, seconds: float)
    (False, kind: str, message: str, detail: str, seconds: float)

``kind`` is ``exit``, ``trap``, ``timeout``, ``memory``, ``output`` or ``error``;
``detail`` is what the instance wrote to stderr (and wasmtime's full message).

**Sandbox.** An instance's WASI context has its input as stdin (bytes in memory), stdout
and stderr going to pipes read as they are written, no arguments beyond the program name, no
environment, no preopened directory (no files) and no sockets. Time is capped by epoch
interruption: a ticker thread advances the engine's epoch every ``TICK`` seconds while an
instance with a time limit runs.

**Bounds, enforced while the instance runs.** Memory: the store's limiter refuses a
``memory.grow`` past ``max_memory`` (an instance that then fails is reported as ``memory``
when its memory ended within ``MEMORY_NEAR`` of the cap: the size of the refused growth is
not known); the store is closed as soon as the instance ends, so its memory is returned
then, not when the collector finds it. Output: stdout past ``max_output`` bytes fails the
write (the pipe is closed: the program gets ``EPIPE``) and the input as ``output``. Stderr:
only its last ``MAX_DETAIL`` bytes are kept, the rest is read and dropped.

**Files.** None where this wasmtime takes stdin as bytes and ``/proc/self/fd`` exists
(Linux). Elsewhere a sandbox uses a private folder ``sperse-wasm-<pid>-*`` (in ``/dev/shm``
where it can), removed when the sandbox is closed or collected and at exit; one whose process
died without removing it is swept by the next server to start on the host
(:func:`sperse._serialize.shm.sweep_dead_servers`).

**Caching.** :class:`WasmHost` (one per process) keeps the compiled modules by their
sha256 and export (the last ``MODULES_KEPT``); a :class:`Sandbox` is one user's compiled
module with its own stdout/stderr files, so two threads never share one: jobs keep one per
module, each flow replica makes its own from the process's compiled module.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sperse._wasm.streams import MAX_DETAIL, PIPES, Files, Streams, text_of

if TYPE_CHECKING:
    import wasmtime

__all__ = [
    "MAX_DETAIL",
    "MODULES_KEPT",
    "Outcome",
    "Sandbox",
    "WasmHost",
    "compile_module",
    "failed",
    "load_module",
    "new_engine",
    "ok",
    "process_host",
    "text_of",
]

Outcome = tuple[Any, ...]

MODULES_KEPT: Final = 8
TICK: Final = 0.01  # seconds between epoch ticks while a time-limited instance runs
MAX_OUTPUT: Final = 1 << 30  # default: an output above this fails its input
MEMORY_NEAR: Final = 4  # a failed instance whose memory is within 1/4 of the cap: ``memory``
_PROGRAM_NAME: Final = "unit"


def ok(output: bytes, seconds: float) -> Outcome:
    return (True, output, seconds)


def failed(kind: str, message: str, detail: str, seconds: float) -> Outcome:
    return (False, kind, message, detail[-MAX_DETAIL:], seconds)


def new_engine() -> wasmtime.Engine:
    """The engine every module is compiled for: epoch interruption on (time limits)."""
    import wasmtime

    config = wasmtime.Config()
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def compile_module(
    engine: wasmtime.Engine, data: bytes, entry: str = "_start"
) -> tuple[wasmtime.Module, Any]:
    """Compile ``data`` and link it against WASI: ``(module, InstancePre)``.

    Raises ``ValueError`` with wasmtime's reason when the bytes are no valid module, it
    imports something WASI does not provide, or it does not export the function ``entry``
    (``_start``: it is not a WASI command).
    """
    import wasmtime

    try:
        module = wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as exc:
        raise ValueError(f"not a valid WebAssembly module: {exc}") from None
    exports = {export.name: export.type for export in module.exports}
    if entry == "_start" and entry not in exports:
        raise ValueError(
            "not a WASI command: the module exports no `_start` function (build it as a "
            "program with a main function, e.g. `zig cc -target wasm32-wasi`, not as a "
            "library or reactor)"
        )
    kind = exports.get(entry)
    if not isinstance(kind, wasmtime.FuncType):
        functions = sorted(name for name, t in exports.items() if isinstance(t, wasmtime.FuncType))
        raise ValueError(
            f"the module exports no function {entry!r} (its functions: "
            f"{', '.join(functions) or 'none'})"
        )
    if kind.params or kind.results:
        raise ValueError(
            f"the export {entry!r} takes or returns values; it must take none and return none "
            "(its input is stdin, its output stdout)"
        )
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    try:
        pre = linker.instantiate_pre(module)
    except wasmtime.WasmtimeError as exc:
        raise ValueError(
            f"the module imports something a sandboxed WASI program cannot have: {exc}"
        ) from None
    return module, pre


def load_module(source: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    """The binary module of ``source`` (a path, or bytes; binary or WAT text) and a label
    for messages. ``ValueError`` if it cannot be read or is neither."""
    if isinstance(source, bytes | bytearray):
        data, label = bytes(source), "the module"
    else:
        try:
            data, label = Path(source).read_bytes(), os.fspath(source)
        except OSError as exc:
            raise ValueError(
                f"cannot read the module {os.fspath(source)!r}: {exc.strerror}"
            ) from None
    if data[:4] == b"\0asm":
        return data, label
    import wasmtime

    try:  # WAT text
        return bytes(wasmtime.wat2wasm(data.decode("utf-8"))), label
    except (UnicodeDecodeError, wasmtime.WasmtimeError) as exc:
        raise ValueError(
            f"{label} is not a WebAssembly module: it is neither a binary module "
            f"(which starts with \\0asm) nor WAT text that wasmtime accepts: {exc}"
        ) from None


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


class Sandbox:
    """A compiled module, the export to call, and (where it needs one) a private folder:
    one user at a time (a job's worker, a flow replica)."""

    def __init__(
        self, engine: wasmtime.Engine, ticker: _Ticker, compiled: tuple[Any, Any], entry: str
    ) -> None:
        self._engine = engine
        self._ticker = ticker
        self._module, self._pre = compiled
        self._entry = entry
        self._init = entry != "_start" and any(
            e.name == "_initialize" for e in self._module.exports
        )
        self._dir: str | None = None
        # Closed by its owner, or when collected (a flow replica's), or at exit.
        self._remove: weakref.finalize | None = None  # type: ignore[type-arg]

    def close(self) -> None:
        if self._remove is not None:
            self._remove()

    def _folder(self) -> str:
        """The private folder (made on first use): only without pipes or stdin bytes."""
        if self._dir is None:
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            self._dir = tempfile.mkdtemp(prefix=f"sperse-wasm-{os.getpid()}-", dir=base)
            self._remove = weakref.finalize(self, _remove_folder, self._dir)
        return self._dir

    def run(
        self,
        data: bytes,
        timeout: float | None,
        max_memory: int | None,
        max_output: int = MAX_OUTPUT,
    ) -> Outcome:
        import wasmtime

        started = time.perf_counter()
        config = wasmtime.WasiConfig()
        config.argv = [_PROGRAM_NAME]
        self._set_stdin(config, data)
        streams = Streams(max_output) if PIPES else Files(self._folder(), max_output)
        try:
            config.stdout_file, config.stderr_file = streams.paths()
            store = wasmtime.Store(self._engine)
            store.set_wasi(config)
            streams.start()
            try:
                code, error, memory_used = self._call(store, timeout, max_memory)
            finally:
                store.close()  # the instance's memory goes now, not when collected
            del store, config
        finally:
            streams.finish()
        output, stderr = streams.output(), streams.stderr()
        seconds = time.perf_counter() - started
        if streams.over:
            return failed(
                "output",
                f"wrote more than its output limit of {_mib(max_output)} to stdout: raise it "
                "with --max-output MB (max_output_mb= in Python)",
                stderr,
                seconds,
            )
        if error is not None:
            return _wasm_failure(error, stderr, seconds, timeout, max_memory, memory_used)
        if code != 0:
            return failed("exit", f"exited with code {code}", stderr, seconds)
        return ok(output, seconds)

    def _call(
        self, store: wasmtime.Store, timeout: float | None, max_memory: int | None
    ) -> tuple[int, BaseException | None, int]:
        """Instantiate and call the entry: ``(exit code, error, memory at the end)``; the
        error without its traceback (which would hold the store's frames)."""
        import wasmtime

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
                exports = instance.exports(store)
                try:
                    if self._init:
                        exports["_initialize"](store)
                    exports[self._entry](store)
                except wasmtime.ExitTrap as exc:
                    code = exc.code
                finally:
                    memory_used = _memory_size(instance, store)
            except wasmtime.ExitTrap as exc:  # an exit while instantiating
                code = exc.code
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                error = exc.with_traceback(None)
        return code, error, memory_used

    def _set_stdin(self, config: wasmtime.WasiConfig, data: bytes) -> None:
        """The unit's input as stdin: straight from memory where this wasmtime allows it
        (its C API has ``wasi_config_set_stdin_bytes``), else through a file."""
        ffi = _stdin_ffi()
        if ffi is None:
            path = os.path.join(self._folder(), "stdin")
            with open(path, "wb") as f:
                f.write(data)
            config.stdin_file = path
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
        return failed("timeout", f"ran past its time limit of {timeout:g} s", stderr, seconds)
    if max_memory is not None and (
        memory_used > max_memory - max_memory // MEMORY_NEAR or "memory minimum size" in text
    ):
        return failed(
            "memory",
            f"needed more than its memory limit of {_mib(max_memory)} (it had "
            f"{_mib(memory_used)} when it failed: {first}): raise it with --max-memory MB "
            "(max_memory_mb= in Python)",
            f"{stderr}\n{text}".strip(),
            seconds,
        )
    if isinstance(error, wasmtime.Trap):
        return failed("trap", f"trapped: {first}", f"{stderr}\n{text}".strip(), seconds)
    return failed("error", f"wasmtime: {first}", f"{stderr}\n{text}".strip(), seconds)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _remove_folder(directory: str) -> None:
    for name in ("stdin", "stdout", "stderr"):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
    with contextlib.suppress(OSError):
        os.rmdir(directory)


class WasmHost:
    """This process's engine, ticker and compiled modules (most recently used last)."""

    def __init__(self) -> None:
        self.engine = new_engine()
        self.ticker = _Ticker(self.engine)
        self._lock = threading.Lock()
        self._compiled: OrderedDict[tuple[str, str], tuple[Any, Any]] = OrderedDict()
        self._sandboxes: OrderedDict[str, Sandbox] = OrderedDict()
        self.compiled = 0  # modules compiled by this process

    def compile(self, key: str, module: bytes, entry: str = "_start") -> tuple[Any, Any]:
        """The module of sha256 ``key`` (its bytes: ``module``) compiled, once per process
        while it is among the last ``MODULES_KEPT`` used."""
        with self._lock:
            found = self._compiled.get((key, entry))
            if found is not None:
                self._compiled.move_to_end((key, entry))
                return found
        if hashlib.sha256(module).hexdigest() != key:
            raise ValueError(f"the module sent does not have the digest {key}")
        made = compile_module(self.engine, module, entry)
        with self._lock:
            self.compiled += 1
            self._compiled[(key, entry)] = made
            while len(self._compiled) > MODULES_KEPT:
                self._compiled.popitem(last=False)
        return made

    def sandbox(self, key: str, module: bytes | None) -> Sandbox | None:
        """The sandbox of a job's module (``_start``), kept per module; None if it is not
        here and ``module`` was not sent."""
        with self._lock:
            sandbox = self._sandboxes.get(key)
            if sandbox is not None:
                self._sandboxes.move_to_end(key)
                return sandbox
        if module is None:
            return None
        sandbox = self.new_sandbox(key, module)
        with self._lock:
            self._sandboxes[key] = sandbox
            while len(self._sandboxes) > MODULES_KEPT:
                _, old = self._sandboxes.popitem(last=False)
                old.close()
        return sandbox

    def drop(self) -> None:
        with self._lock:
            self._compiled.clear()
            sandboxes = list(self._sandboxes.values())
            self._sandboxes.clear()
        for sandbox in sandboxes:
            sandbox.close()

    def new_sandbox(self, key: str, module: bytes, entry: str = "_start") -> Sandbox:
        """A sandbox of its own for one user (the compiled module shared); ``close()`` it."""
        return Sandbox(self.engine, self.ticker, self.compile(key, module, entry), entry)


_host: WasmHost | None = None
_host_lock = threading.Lock()


def process_host() -> WasmHost:
    """This process's :class:`WasmHost`, made on first use."""
    global _host
    with _host_lock:
        if _host is None:
            _host = WasmHost()
            atexit.register(_drop_host)
        return _host


def _drop_host() -> None:
    """Free the compiled modules before the interpreter tears wasmtime's bindings down
    (their finalizers would fail then)."""
    global _host
    with _host_lock:
        host, _host = _host, None
    if host is not None:
        host.drop()


def _after_fork_in_child() -> None:
    global _host, _host_lock
    _host = None  # the ticker thread did not survive the fork
    _host_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
