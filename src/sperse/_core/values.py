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
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar, dataclass_transform

__all__ = ["value"]

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def value(cls: type[_T]) -> type[_T]:
    """A value class: ``@dataclass(frozen=True, slots=True)`` to the type checker."""
    return dataclasses.dataclass(slots=True, unsafe_hash=True)(cls)
