"""Serialization of code and values: cloudpickle, pickle protocol 5.

- Functions, classes and lambdas defined at the prompt or in ``__main__`` travel
  by value; installed modules travel by reference; the user's own modules that
  are not installed (a ``mylib.py`` under the working directory, not in
  site-packages) travel by value too, so the server need not have them.
- Large buffers (numpy arrays and anything else supporting pickle protocol 5)
  travel out of band: ``dumps_oob`` returns them beside the pickle stream
  instead of copying them into it.
- Values held remotely (``RemoteValue``) travel as references: the pickle
  holds the object id (a persistent id), and whoever unpickles resolves it.
- Plain builtin data (numbers, strings, small tuples, lists and dicts of them)
  is pickled by the standard pickler: the same bytes cloudpickle would make, in
  a tenth of the time (most calls' arguments and results are such data).
- Between processes of one host, big out-of-band buffers may travel as shared
  memory files: :mod:`sperse._serialize.shm`.

- Code objects keep their file name and carry the source lines they span
  (``_named_code``): picklers may rename code (cloudpickle 3.1.3 calls all of it
  ``<dynamic-code>``), and code typed at a prompt or in a notebook cell exists nowhere
  else, yet a remote traceback must name the user's file, line and text.

Failures become ``SerializationError`` with a message naming what could not be
sent and why.
"""

from __future__ import annotations

import io
import linecache
import os
import pickle
import site
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from sperse.errors import SerializationError

__all__ = [
    "PROTOCOL",
    "RemoteRef",
    "RemoteValue",
    "describe",
    "dumps",
    "dumps_oob",
    "loads",
    "loads_oob",
]

PROTOCOL = 5
_REF_TAG = "sperse-ref"


@dataclass(frozen=True, slots=True)
class RemoteRef:
    """A value kept in a server's object store: what the client knows of it."""

    object_id: str
    server: str
    type_name: str
    size: int
    repr: str


class RemoteValue:
    """A value that stays where it was computed until a local cell needs it.

    Passing it to remote code sends only the reference. ``fetch()`` brings the
    value here (once: it is kept). When the last ``RemoteValue`` for an object
    is garbage-collected, ``on_release`` tells the server to free it.
    """

    __slots__ = ("__weakref__", "_fetch", "_lock", "_value", "ref")

    _MISSING: Any = object()

    def __init__(self, ref: RemoteRef, fetch: Callable[[RemoteRef, float | None], Any]) -> None:
        self.ref = ref
        self._fetch = fetch
        self._value: Any = RemoteValue._MISSING
        self._lock = threading.Lock()

    @property
    def fetched(self) -> bool:
        return self._value is not RemoteValue._MISSING

    def fetch(self, timeout: float | None = None) -> Any:
        """The value, brought from its server on first use."""
        with self._lock:
            if self._value is RemoteValue._MISSING:
                self._value = self._fetch(self.ref, timeout)
            return self._value

    def __reduce__(self) -> Any:
        raise SerializationError(
            f"{self!r} can only be sent to the server that holds it (as a reference)"
        )

    def __repr__(self) -> str:
        r = self.ref
        return f"<remote {r.type_name} on {r.server}, {_size(r.size)}: {r.repr}>"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


class _Pickler(cloudpickle.CloudPickler):  # type: ignore[misc]
    """cloudpickle that writes RemoteValues as references and records them, and code
    with its file name and source lines."""

    def __init__(self, file: io.BytesIO, buffers: list[pickle.PickleBuffer] | None = None) -> None:
        super().__init__(
            file, protocol=PROTOCOL, buffer_callback=None if buffers is None else buffers.append
        )
        self.refs: list[RemoteRef] = []
        self._spans: dict[str, list[tuple[int, int]]] = {}

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            return self._code_reduce(obj)
        return super().reducer_override(obj)

    def _code_reduce(self, code: types.CodeType) -> Any:
        """Code as cloudpickle builds it, renamed back to its file on load, with the lines
        of source it spans (once per pickle: a nested function's lines are its parent's)."""
        _, args = _CLOUDPICKLE_CODE_REDUCE(code)
        filename = code.co_filename
        first = code.co_firstlineno
        last = max((line for _, _, line in code.co_lines() if line), default=first)
        spans = self._spans.setdefault(filename, [])
        lines: tuple[str, ...] = ()
        if not any(a <= first and last <= b for a, b in spans):
            spans.append((first, last))
            lines = tuple(linecache.getlines(filename)[first - 1 : last])
        return _named_code, (args, filename, first, lines)

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, RemoteValue):
            self.refs.append(obj.ref)
            return (_REF_TAG, obj.ref.object_id)
        return None


_PLAIN_ATOMS = frozenset({int, float, str, bool, type(None), complex})
_PLAIN_BYTES_MAX = 1 << 16  # bigger bytes go through cloudpickle (the same result, in band)
_PLAIN_ITEMS_MAX = 64


def _plain(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` is builtin data only (numbers, strings, small bytes, and small
    tuples, lists and dicts of those): the standard pickler makes the same pickle as
    cloudpickle, ten times faster."""
    kind = type(obj)
    if kind in _PLAIN_ATOMS:
        return True
    if kind is bytes:
        return len(obj) <= _PLAIN_BYTES_MAX
    if depth >= 3:
        return False
    # Loops, not all(generator), and atoms checked inline: this runs for every task sent.
    if kind is tuple or kind is list:
        if len(obj) > _PLAIN_ITEMS_MAX:
            return False
        for item in obj:
            if type(item) not in _PLAIN_ATOMS and not _plain(item, depth + 1):
                return False
        return True
    if kind is dict:
        if len(obj) > _PLAIN_ITEMS_MAX:
            return False
        for key, value in obj.items():
            if type(key) is not str:
                return False
            if type(value) not in _PLAIN_ATOMS and not _plain(value, depth + 1):
                return False
        return True
    return False


def dumps_oob(
    obj: Any, *, what: str = "a value"
) -> tuple[bytes, list[pickle.PickleBuffer], list[RemoteRef]]:
    """Pickle ``obj`` with out-of-band buffers; returns (stream, buffers, the references to
    held values it contains, in order, with repeats)."""
    if _plain(obj):
        return pickle.dumps(obj, protocol=PROTOCOL), [], []
    _register_local_modules()
    file = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    pickler = _Pickler(file, buffers)
    try:
        pickler.dump(obj)
    except Exception as exc:
        raise _cannot_send(obj, what, exc) from exc
    return file.getvalue(), buffers, pickler.refs


class _RefUnpickler(pickle.Unpickler):
    """Resolves the references ``_Pickler`` wrote through ``resolve``."""

    def __init__(
        self,
        file: io.BytesIO,
        buffers: Sequence[bytes | memoryview],
        resolve: Callable[[str], Any],
    ) -> None:
        super().__init__(file, buffers=buffers)
        self._resolve = resolve

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == _REF_TAG:
            return self._resolve(pid[1])
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


def loads_oob(
    data: bytes | memoryview,
    buffers: Sequence[bytes | memoryview] = (),
    *,
    resolve: Callable[[str], Any] | None = None,
    what: str = "a value",
) -> Any:
    """Unpickle what ``dumps_oob`` made; ``resolve`` turns object ids into values.

    Writable buffers (``bytearray``, a copy-on-write mapping) give writable arrays.
    """
    try:
        if resolve is None:  # a reference in the stream fails: no persistent_load
            return pickle.loads(data, buffers=buffers)
        return _RefUnpickler(io.BytesIO(data), buffers, resolve).load()
    except SerializationError:
        raise
    except ModuleNotFoundError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot load {what}: {type(exc).__name__}: {exc}. The module that defines "
            "it may be missing or differ here."
        ) from exc


def dumps(obj: Any, *, what: str = "a value") -> bytes:
    """Pickle ``obj`` in band; ``what`` names it in the error (``"input x of cell [3]"``)."""
    _register_local_modules()
    file = io.BytesIO()
    try:
        _Pickler(file).dump(obj)
    except Exception as exc:
        raise _cannot_send(obj, what, exc) from exc
    return file.getvalue()


# ---- code keeps its file name and source lines ----------------------------------------

_CLOUDPICKLE_CODE_REDUCE: Callable[[types.CodeType], tuple[Any, tuple[Any, ...]]] = (
    cloudpickle.CloudPickler.dispatch_table[types.CodeType]
)
_carried: set[str] = set()  # files whose lines in linecache came with code, not from disk


def _named_code(
    args: tuple[Any, ...], filename: str, first: int, lines: tuple[str, ...]
) -> types.CodeType:
    """The code cloudpickle's ``args`` build, named ``filename`` again; its source ``lines``
    (from line ``first``) go into ``linecache`` unless this host reads that file itself."""
    code = types.CodeType(*args).replace(co_filename=filename)
    if lines and (filename in _carried or not linecache.getlines(filename)):
        _remember_lines(filename, first, lines)
    return code


def _remember_lines(filename: str, first: int, lines: tuple[str, ...]) -> None:
    entry = linecache.cache.get(filename)
    known = list(entry[2]) if entry is not None and len(entry) == 4 else []
    end = first - 1 + len(lines)
    if len(known) < end:
        known.extend("\n" for _ in range(end - len(known)))
    known[first - 1 : end] = lines
    # mtime None: linecache.checkcache keeps the entry (there is no file to compare with).
    linecache.cache[filename] = (sum(map(len, known)), None, known, filename)
    _carried.add(filename)


def loads(data: bytes, *, what: str = "a value") -> Any:
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(
            f"cannot load {what}: {type(exc).__name__}: {exc}. The module that defines "
            "it may be missing or differ here."
        ) from exc


def _cannot_send(obj: Any, what: str, exc: Exception) -> SerializationError:
    if isinstance(exc, SerializationError):
        return exc
    return SerializationError(
        f"cannot send {what} ({describe(obj)}): {type(exc).__name__}: {exc}. "
        "Only picklable values can cross processes: create it where it is used "
        "(inside the remote code), or make it picklable."
    )


def describe(obj: Any) -> str:
    """A short description of a value for messages: its type, and size when it has one."""
    kind = type(obj)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    try:
        size = len(obj)
    except Exception:
        return f"a {name}"
    return f"a {name} of length {size}"


# ---- the user's own modules travel by value -------------------------------------------

_judged: set[str] = set()  # the modules already looked at, from _judged_in
_judged_in = ""
_seen_modules = 0
_installed_roots: tuple[str, ...] | None = None


def _installed() -> tuple[str, ...]:
    global _installed_roots
    if _installed_roots is None:
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            path = sysconfig.get_paths().get(key)
            if path:
                roots.add(path)
        roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
        _installed_roots = tuple(os.path.realpath(r) + os.sep for r in roots)
    return _installed_roots


def is_local_module(name: str, file: str | None, cwd: str) -> bool:
    """A module of the user's own: a file under ``cwd`` that is not installed."""
    if not file or name == "__main__" or name.startswith("sperse"):
        return False
    path = os.path.realpath(file)
    if not path.startswith(cwd + os.sep):
        return False
    return not path.startswith(_installed())


def _register_local_modules() -> None:
    """Have cloudpickle ship the user's own modules by value (checked when modules change)."""
    global _seen_modules, _judged_in
    if len(sys.modules) == _seen_modules:
        return
    _seen_modules = len(sys.modules)
    cwd = os.path.realpath(os.getcwd())
    if cwd != _judged_in:  # what is the user's own depends on where they are
        _judged.clear()
        _judged_in = cwd
    for name, module in list(sys.modules.items()):
        if name in _judged or module is None or "." in name:
            continue
        _judged.add(name)
        if is_local_module(name, getattr(module, "__file__", None), cwd):
            try:
                cloudpickle.register_pickle_by_value(module)
            except (ValueError, TypeError):
                continue
