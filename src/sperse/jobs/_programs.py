"""The program of a job, checked on the client before any unit runs.

- ``WasmProgram``: a WebAssembly module (binary, or WAT text), compiled here once to refuse
  an invalid one with wasmtime's reason; it travels to workers by its sha256, its bytes only
  to a worker that asks (see ``sperse.jobs._worker``).
- ``PythonProgram``: a function taking bytes and returning bytes or str, named
  ``pkg.module:func`` (imported here, with the working directory on ``sys.path`` as
  ``python -m`` has it) or ``path/to/file.py:func``, or given as a callable. It travels like
  any ``@sperse.remote`` function: by reference when its module is installed where it
  runs, by value otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Callable
from typing import Any, Protocol

from sperse._core import PickledFunction
from sperse._serialize import dumps
from sperse._wasm import MAX_OUTPUT, load_module
from sperse.errors import SerializationError
from sperse.jobs._results import JobError
from sperse.jobs._worker import compile_module, new_engine, run_python_batch, run_wasm_batch

__all__ = ["Program", "PythonProgram", "WasmProgram", "load_function"]


class Program(Protocol):
    """What the job needs of a program: the function each batch calls, and the bytes a
    worker may ask for."""

    @property
    def name(self) -> str: ...

    @property
    def module(self) -> bytes | None:
        """Bytes to send to a worker that answers ``NEED_MODULE`` (None: never asked)."""
        ...

    def batch_function(
        self, timeout: float | None, max_memory: int | None, max_output: int = MAX_OUTPUT
    ) -> PickledFunction:
        """The function of one batch, called as ``f(units)`` or ``f(units, module)``."""
        ...


def _ship(fn: Callable[..., Any], what: str) -> PickledFunction:
    try:
        data = dumps(fn, what=what)
    except SerializationError as exc:
        raise JobError(str(exc)) from exc
    return PickledFunction(hashlib.sha256(data).hexdigest(), data)


class WasmProgram:
    """A WASI command module, validated here."""

    def __init__(self, source: str | os.PathLike[str] | bytes, name: str | None = None) -> None:
        try:
            import wasmtime  # noqa: F401
        except ImportError as exc:  # pragma: no cover - an install without the jobs extra
            raise JobError(
                "running WebAssembly needs the wasmtime package: pip install 'sperse[jobs]'"
            ) from exc
        try:
            data, label = load_module(source)
        except ValueError as exc:
            raise JobError(str(exc)) from None
        try:
            compile_module(new_engine(), data)
        except ValueError as exc:
            raise JobError(f"{label} was refused: {exc}") from None
        self._data = data
        self.key = hashlib.sha256(data).hexdigest()
        self._name = name or (label if label != "the module" else f"module {self.key[:12]}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def module(self) -> bytes:
        return self._data

    def batch_function(
        self, timeout: float | None, max_memory: int | None, max_output: int = MAX_OUTPUT
    ) -> PickledFunction:
        fn = functools.partial(run_wasm_batch, self.key, timeout, max_memory, max_output=max_output)
        return _ship(fn, f"the runner of {self._name}")


class PythonProgram:
    """A function ``bytes -> bytes | str``."""

    def __init__(self, target: str | Callable[[bytes], bytes | str]) -> None:
        if isinstance(target, str):
            fn = load_function(target)
            self._name = target
        elif callable(target):
            fn = target
            self._name = getattr(target, "__qualname__", None) or repr(target)
        else:
            raise JobError(f"python= takes 'pkg.module:func' or a function, not {target!r}")
        _by_value_if_own(fn)
        self._fn = fn

    @property
    def name(self) -> str:
        return self._name

    @property
    def module(self) -> None:
        return None

    def batch_function(
        self, timeout: float | None, max_memory: int | None, max_output: int = MAX_OUTPUT
    ) -> PickledFunction:
        fn = functools.partial(run_python_batch, self._fn, timeout)
        return _ship(fn, f"the function {self._name}")


def _by_value_if_own(fn: Callable[..., Any]) -> None:
    """Ship the function's module by value when it is the user's own (not installed here), so
    that a server without it can run it: a file given by path, or a package under the working
    directory (``sperse.remote`` does so only for top-level modules)."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    if module is None or not file or module.__name__.split(".")[0] in _NEVER_BY_VALUE:
        return
    path = os.path.realpath(file)
    if path.startswith(_installed_roots()):
        return
    import cloudpickle

    with contextlib.suppress(ValueError, TypeError):
        cloudpickle.register_pickle_by_value(module)


_NEVER_BY_VALUE = frozenset({"sperse", "__main__"})


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(path)
    return tuple(os.path.realpath(root) + os.sep for root in roots)


def load_function(spec: str) -> Callable[[bytes], bytes | str]:
    """``pkg.module:func`` or ``path/to/file.py:func`` → the function, or ``JobError``."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise JobError(f"--python takes MODULE:FUNCTION (e.g. mypkg.tasks:run), not {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        module = _import_file(module_name)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's own modules
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise JobError(f"cannot import {module_name!r} for --python {spec}: {exc}") from None
    fn: Any = module
    for part in attr.split("."):
        try:
            fn = getattr(fn, part)
        except AttributeError:
            raise JobError(f"{module_name!r} has no function {attr!r}") from None
    if not callable(fn):
        raise JobError(f"{spec} is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise JobError(f"no such Python file: {path!r}")
    name = os.path.splitext(os.path.basename(path))[0]
    existing = sys.modules.get(name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == (
        os.path.abspath(path)
    ):
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise JobError(f"cannot import {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise JobError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module
