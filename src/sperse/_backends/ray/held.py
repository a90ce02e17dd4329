"""Driver side: values held in Ray's object store (docs/ray.md, "Held values").

A task's value above the inline limit stays in its slot, an ``ObjectRef`` owned by the
driver; the workspace gets a ``RemoteValue`` whose fetch is ``ray.get``. The ``ObjectRef`` is
kept here, by the value's id, until the ``RemoteValue`` is garbage-collected or released:
then it is dropped, and Ray frees the object. Passed to remote code, it travels as an
``ObjectRef`` argument of the task (``refs``), never through the driver.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from sperse._backends.ray.errors import first_line
from sperse._backends.ray.protocol import unpickle_buffers
from sperse._serialize import RemoteRef, RemoteValue, loads_oob
from sperse.errors import ServerLost, SperseError

__all__ = ["HeldValues"]


class HeldValues:
    """The ``ObjectRef``s of the values a backend holds, by id. Any thread."""

    def __init__(self, ray: Any, inline_limit: int, closed: Callable[[], bool]) -> None:
        self._ray = ray
        self._inline_limit = inline_limit
        self._closed = closed
        self._lock = threading.Lock()
        self._refs: dict[str, Any] = {}  # object id -> ObjectRef of a held value

    def __len__(self) -> int:
        with self._lock:
            return len(self._refs)

    def value(self, entry: list[Any], slot: Any, where: str) -> Any:
        """The value of a summary's entry (:mod:`.protocol`): a copy of an inline one, a
        ``RemoteValue`` of a held one."""
        if entry[0] == "inline":
            _, data, buffers = entry
            copies: list[Any] = [bytearray(b) for b in buffers]  # writable, as elsewhere
            return loads_oob(data, copies, what=f"a result from {where}")
        _, type_name_, size, text = entry
        object_id = slot.hex()
        handle = RemoteValue(RemoteRef(object_id, where, type_name_, size, text), self._fetch)
        with self._lock:
            self._refs[object_id] = slot
        weakref.finalize(handle, self.release, object_id)
        return handle

    def refs(self, object_ids: list[str]) -> list[Any]:
        """The ``ObjectRef``s of these values (None for one not held)."""
        with self._lock:
            return [self._refs.get(object_id) for object_id in object_ids]

    def release(self, object_id: str) -> bool:
        """Drop a held value (False: it is not one)."""
        with self._lock:
            return self._refs.pop(object_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._refs.clear()

    def _fetch(self, ref: RemoteRef, timeout: float | None) -> Any:
        with self._lock:
            object_ref = self._refs.get(ref.object_id)
        if self._closed():
            raise ServerLost(
                f"{ref.type_name} held on {ref.server} is gone: the Ray backend is closed"
            )
        if object_ref is None:
            raise SperseError(f"{ref.type_name} held on {ref.server} was released")
        ray = self._ray
        try:
            data, buffers = ray.get(object_ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"fetching {ref.type_name} from {ref.server} took more than {timeout} s"
            ) from None
        except ray.exceptions.RayError as exc:
            raise ServerLost(
                f"{ref.type_name} held on {ref.server} is lost: {first_line(exc)}. Compute it "
                "again (give the task retries to have Ray rebuild lost values)"
            ) from exc
        what = f"{ref.type_name} fetched from {ref.server}"
        return loads_oob(data, unpickle_buffers(buffers, self._inline_limit), what=what)
