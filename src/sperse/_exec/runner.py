"""The code that runs inside a worker process: one task payload in, one result out.

Payload: the pickle of a ``StatementTask`` or ``CallTask``. Result: the
pickle of ``(True, value)`` or ``(False, ErrorInfo)``. User exceptions, and
results that cannot be pickled, are reported as data; the worker carries on.

``work_to_wire``/``work_from_wire``: the form in which the sperse client sends a
call of a function pickled once (``PickledFunction``): a plain tuple, which pickles
and unpickles in a tenth of the time of the dataclasses. A method call of a remote
object (``ObjectCall``) travels as a tuple too (``object_work_from_wire`` reads it);
other work as itself.
"""

from __future__ import annotations

import builtins
import linecache
import re
import reprlib
import traceback
from collections.abc import Callable
from typing import Any

from sperse._core import (
    CallTask,
    ErrorInfo,
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    PickledFunction,
    Put,
    StatementTask,
    Work,
)
from sperse._serialize import describe, dumps, dumps_oob, loads
from sperse.errors import SerializationError

__all__ = [
    "REPR_MAX",
    "cannot_send_back",
    "dumps_work",
    "dumps_work_oob",
    "encode_error",
    "execute",
    "object_work_from_wire",
    "run",
    "short_repr",
    "type_name",
    "work_from_wire",
    "work_to_wire",
]

_CALL = "sperse-call/1"
_OBJECT_CALL = "sperse-object-call/1"


def run(payload: bytes) -> bytes:
    try:
        work = loads(payload, what="the task")
    except SerializationError as exc:
        return dumps((False, ErrorInfo("serialization", "SerializationError", str(exc))))
    try:
        value = execute(work)
    except Exception as exc:
        return dumps((False, encode_error(exc, skip_frames=2)))
    try:
        return dumps((True, value), what="the result")
    except SerializationError as exc:
        return dumps(
            (
                False,
                ErrorInfo("serialization", "SerializationError", _unpicklable(work, value, exc)),
            )
        )


def _unpicklable(work: StatementTask | CallTask | Put, value: Any, exc: SerializationError) -> str:
    """Name the part of a result that cannot be sent back."""
    parts = value.items() if isinstance(work, StatementTask) and isinstance(value, dict) else ()
    for name, part in parts:
        try:
            dumps(part)
        except SerializationError as inner:
            return cannot_send_back(name, part, inner.__cause__ or inner)
    return cannot_send_back("", value, exc.__cause__ or exc)


def cannot_send_back(name: str, value: Any, cause: BaseException) -> str:
    """The message for a result (``name`` "") or a remote cell's name that cannot be pickled."""
    if name:
        return (
            f"cannot send `{name}` ({describe(value)}) back from the remote cell: {cause}. "
            "Keep it remote (use it inside the remote cell), delete it at the end of the "
            "cell, or make it picklable."
        )
    return f"cannot send the result ({describe(value)}) back: {cause}. Return something picklable."


REPR_MAX = 80
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxlong = REPR_MAX
_repr.maxother = 4 * REPR_MAX  # cut at the end by ``_cut``, not in the middle of a type name
_NUMBERS = frozenset({int, float, bool, type(None)})
_WORD = re.compile(r"[\w.]+$")


def type_name(value: Any) -> str:
    """``module.qualname`` of the value's type (just ``qualname`` for builtins)."""
    kind = type(value)
    module = getattr(kind, "__module__", "") or ""
    qualname = getattr(kind, "__qualname__", kind.__name__)
    return str(qualname if module == "builtins" else f"{module}.{qualname}")


def short_repr(value: Any, limit: int = REPR_MAX) -> str:
    """One line of at most ``limit`` characters; never raises."""
    if type(value) in _NUMBERS and (type(value) is not int or -(10**30) < value < 10**30):
        return repr(value)  # the common case, without reprlib
    try:
        text = _repr.repr(value)
    except Exception as exc:  # reprlib catches most; a broken __repr__ of a container may not
        text = f"<{type_name(value)}: repr failed with {type(exc).__name__}>"
    return _cut(" ".join(text.split()), limit)


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in "…"; a name that would be cut in its
    middle (``[1, 2, numpy.ndar…``) is left out whole instead, unless it starts in the first
    quarter (then there is little else to show)."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    if text[limit - 1].isalnum() or text[limit - 1] in "_.":
        word = _WORD.search(head)
        if word is not None and word.start() >= limit // 4:
            head = head[: word.start()]
    return head.rstrip() + "…"


def work_to_wire(work: Work) -> Any:
    """What to pickle for ``work``: a tuple for a call of a ``PickledFunction`` or of a
    remote object's method."""
    if isinstance(work, CallTask) and isinstance(work.fn, PickledFunction):
        kwargs = work.kwargs if type(work.kwargs) is dict else dict(work.kwargs)
        return (_CALL, work.fn.key, work.fn.data, work.args, kwargs)
    if isinstance(work, ObjectCall):
        kwargs = work.kwargs if type(work.kwargs) is dict else dict(work.kwargs)
        return (_OBJECT_CALL, work.object_id, work.name, work.args, kwargs, work.attribute)
    return work


def dumps_work(work: Work, what: str) -> bytes:
    """``work`` pickled in band (``dumps``), failures naming the part that cannot be sent."""
    try:
        return dumps(work, what=what)
    except SerializationError as exc:
        raise _unpicklable_part(work, what, exc) from exc.__cause__


def dumps_work_oob(work: Work, what: str) -> tuple[bytes, list[Any], list[Any]]:
    """``work`` as ``work_to_wire`` sends it, pickled with out-of-band buffers
    (``dumps_oob``), failures naming the part that cannot be sent."""
    try:
        return dumps_oob(work_to_wire(work), what=what)
    except SerializationError as exc:
        raise _unpicklable_part(work, what, exc) from exc.__cause__


def _unpicklable_part(work: Work, what: str, error: SerializationError) -> SerializationError:
    """The error for the first argument (or function) of ``work`` that cannot be pickled,
    named as the user wrote it ("argument 2 of f()"), not as the task that carries it."""
    parts: list[tuple[str, Any]] = []
    if isinstance(work, CallTask | ObjectCreate):
        function = work.fn if isinstance(work, CallTask) else work.cls
        parts.append((f"the function of {what}", function))
    if isinstance(work, CallTask | ObjectCreate | ObjectCall):
        parts += [(f"argument {i} of {what}", a) for i, a in enumerate(work.args, 1)]
        parts += [(f"argument `{k}` of {what}", v) for k, v in work.kwargs.items()]
    for name, part in parts:
        try:
            dumps(part, what=name)
        except SerializationError as exc:
            return exc
    return error


def work_from_wire(obj: Any) -> StatementTask | CallTask | Put | None:
    """The work ``work_to_wire`` described; None if ``obj`` is no work at all."""
    if isinstance(obj, StatementTask | CallTask | Put):
        return obj
    if (
        type(obj) is tuple
        and len(obj) == 5
        and obj[0] == _CALL
        and isinstance(obj[1], str)
        and isinstance(obj[2], bytes)
        and isinstance(obj[3], tuple)
        and isinstance(obj[4], dict)
    ):
        return CallTask(PickledFunction(obj[1], obj[2]), obj[3], obj[4])
    return None


def object_work_from_wire(obj: Any) -> ObjectCreate | ObjectCall | ObjectClose | None:
    """The remote object work ``work_to_wire`` described; None if ``obj`` is none."""
    if isinstance(obj, ObjectCreate | ObjectCall | ObjectClose):
        return obj
    if (
        type(obj) is tuple
        and len(obj) == 6
        and obj[0] == _OBJECT_CALL
        and isinstance(obj[1], str)
        and isinstance(obj[2], str)
        and isinstance(obj[3], tuple)
        and isinstance(obj[4], dict)
        and isinstance(obj[5], bool)
    ):
        return ObjectCall(obj[1], obj[2], obj[3], obj[4], obj[5])
    return None


def execute(work: StatementTask | CallTask | Put) -> Any:
    if isinstance(work, Put):  # a backend that holds no values: it comes back
        return work.value
    if isinstance(work, CallTask):
        fn = _function(work.fn) if isinstance(work.fn, PickledFunction) else work.fn
        return fn(*work.args, **work.kwargs)
    source = "\n" * (work.first_line - 1) + work.source
    lines = source.splitlines(keepends=True)
    linecache.cache[work.filename] = (len(source), None, lines, work.filename)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    namespace.update(work.inputs)
    if work.is_expression:
        return eval(compile(source, work.filename, "eval"), namespace)
    exec(compile(source, work.filename, "exec"), namespace)
    return {name: namespace[name] for name in work.defs if name in namespace}


_functions: dict[str, Callable[..., Any]] = {}
_FUNCTIONS_KEPT = 256


def _function(pickled: PickledFunction) -> Callable[..., Any]:
    """Unpickle a function once per worker; later calls reuse it."""
    fn = _functions.get(pickled.key)
    if fn is None:
        fn = loads(pickled.data, what="the function")
        if len(_functions) >= _FUNCTIONS_KEPT:
            _functions.pop(next(iter(_functions)))
        _functions[pickled.key] = fn
    return fn


def encode_error(exc: BaseException, *, skip_frames: int = 0) -> ErrorInfo:
    """``exc`` as data, its traceback without the first ``skip_frames`` (ours)."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    kind = type(exc)
    module = kind.__module__
    type_name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = f"<{type_name} whose str() failed>"
    text = "".join(traceback.format_exception(kind, exc, tb))
    return ErrorInfo("raised", type_name, message, text)
