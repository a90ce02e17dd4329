"""Serialization of code and values: cloudpickle, pickle protocol 5.

Functions, classes and lambdas defined at the prompt or in ``__main__`` travel
by value; installed modules travel by reference. Failures become
``SerializationError`` with a message naming what could not be sent and why.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from sperse.errors import SerializationError

__all__ = ["describe", "dumps", "loads"]

PROTOCOL = 5


def dumps(obj: Any, *, what: str = "a value") -> bytes:
    """Pickle ``obj``; ``what`` names it in the error (``"input x of cell [3]"``)."""
    try:
        return bytes(cloudpickle.dumps(obj, protocol=PROTOCOL))
    except Exception as exc:
        raise SerializationError(
            f"cannot send {what} ({describe(obj)}): {type(exc).__name__}: {exc}. "
            "Only picklable values can cross processes: create it where it is used "
            "(inside the remote code), or make it picklable."
        ) from exc


def loads(data: bytes, *, what: str = "a value") -> Any:
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(
            f"cannot load {what}: {type(exc).__name__}: {exc}. The module that defines "
            "it may be missing or differ here."
        ) from exc


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
