"""``@value``: the frozen slotted dataclass of the per-task path, frozen for the type checker.

A ``@dataclass(frozen=True, slots=True)`` builds each instance through one
``object.__setattr__`` call per field (its ``__setattr__`` refuses assignment, its own
``__init__`` included): about 1.2 µs for eight fields, against 0.25 µs for a plain slotted
dataclass. A task crosses a dozen such values on a server (its request, envelope, pool
events, actions, outcome), so that was a tenth of the server's time per task.

``@value`` makes a slotted dataclass with fields-based equality and hash, as frozen ones
have, whose ``__init__`` assigns its slots directly; ``dataclass_transform(frozen_default=
True)`` has ``mypy --strict`` treat it as frozen, so an assignment to a field is still an
error where the code is checked. Only what is built for every task uses it (see
docs/decisions.md); values elsewhere stay frozen at run time too.

Only ``__init__`` is generated (``dataclasses`` compiles each method it writes, about 0.1
ms apiece, and the server imports some eighty of these classes before it listens): the
equality, hash and repr are written once, here, over the fields in order, as the
dataclass's would be (``__eq__`` compares instances of the same class only).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

__all__ = ["value"]

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def value(cls: type[_T]) -> type[_T]:
    """A value class: ``@dataclass(frozen=True, slots=True)`` to the type checker."""
    made: Any = dataclasses.dataclass(slots=True, eq=False, repr=False)(cls)
    fields = dataclasses.fields(made)
    compared = _getter(tuple(f.name for f in fields if f.compare))
    hashed = _getter(tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash)))
    shown = tuple(f.name for f in fields if f.repr)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(compared(self) == compared(other))
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(hashed(self))

    def __repr__(self: Any) -> str:
        inside = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{self.__class__.__qualname__}({inside})"

    for method in (__eq__, __hash__, __repr__):
        if method.__name__ not in made.__dict__:
            method.__qualname__ = f"{made.__qualname__}.{method.__name__}"
            setattr(made, method.__name__, method)
    return made  # type: ignore[no-any-return]


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The named attributes of an instance, as a tuple."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    if names:
        single = operator.attrgetter(names[0])
        return lambda instance: (single(instance),)
    return lambda instance: ()
