"""What the driver and the Ray workers exchange, and the names they agree on.

Lists, not tuples, throughout: Ray sends lists of plain values as msgpack, and pickles tuples.

- **A task's argument** (``_run_task``, and an object actor's ``__init__`` and ``call``): one
  list, the *header* (Ray serializes each argument of a call on its own, so one, not eight)::

      [data, buffers, ref_ids, task_id, mailbox_namespace, mailbox_name, inline_limit, names]

  ``data`` and ``buffers``: the work's pickle (Sperse's serializer) and its out-of-band
  buffers; ``ref_ids``: the ids of the held values it refers to, which follow the header as
  further arguments, ``[pickle, buffers]`` each (Ray resolves them: they never pass through
  the driver); ``names``: the names a statement defines (None: one value).
- **What a task returns**: ``1 + slots`` objects. First the *summary*::

      [node_id, sent, tail, True, entries]                       # it ran
      [node_id, sent, tail, False, [kind, type, message, traceback]]   # an error, as data

  ``sent``: the items the task put in the mailbox (the driver reports the end only once it
  has them); ``tail``: the output not sent yet, ``[[stream, text], ...]``. An entry is
  ``["inline", data, buffers]`` (the value's pickle, under ``inline_limit``) or ``["held",
  type, size, repr]`` (the value stays in its slot, an ``ObjectRef`` owned by the driver);
  for a statement, ``entries`` is ``[[name, entry], ...]``. Then one slot per value
  (``[pickle, buffers]``, or None).
- **Mailbox items** (workers ``put`` lists of them, the driver ``take``s them)::

      [task_id, node_id, "started", "", ""]
      [task_id, node_id, "output", stream, text]
      [task_id, node_id, "callback", callback_id, pickled (args, kwargs)]

- **A remote object's actor** is named ``OBJECT_ID/TYPE/NAME`` in ``OBJECTS_NAMESPACE``;
  its ``info`` (in the concurrency group ``INFO_GROUP``) answers ``[pid, calls, built,
  node_id, methods, max_concurrency, restart]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "INFO_GROUP",
    "NAME_LABEL",
    "OBJECTS_NAMESPACE",
    "ActorName",
    "actor_name",
    "describe_object",
    "parse_actor_name",
    "unpickle_buffers",
]

NAME_LABEL: Final = "sperse/name"  # a node's server name: `ray start --labels sperse/name=db-1`
OBJECTS_NAMESPACE: Final = "sperse-objects"  # the Ray namespace of remote objects' actors
INFO_GROUP: Final = "sperse-info"  # the concurrency group of _ObjectActor.info


def unpickle_buffers(buffers: Sequence[Any], copy_under: int) -> list[Any]:
    """Buffers to unpickle from: small ones copied (their arrays writable, as on the other
    backends), big ones as they are (zero-copy, read-only views of Ray's object store)."""
    out: list[Any] = []
    for buffer in buffers:
        view = memoryview(buffer)
        out.append(bytearray(view) if view.nbytes < copy_under else view)
    return out


def describe_object(object_id: str, type_name: str, name: str) -> str:
    """A remote object as ``ObjectProxy`` names it: ``remote object 'hits' (Counter 1a2b3c4d)``."""
    named = f" {name!r}" if name else ""
    kind = f"{type_name} " if type_name else ""
    return f"remote object{named} ({kind}{object_id[:8]})"


@dataclass(frozen=True, slots=True)
class ActorName:
    """What the name of a remote object's actor says: ``OBJECT_ID/TYPE/NAME``."""

    actor_name: str
    object_id: str
    type_name: str
    name: str


def actor_name(object_id: str, type_name: str, name: str) -> str:
    return f"{object_id}/{type_name}/{name}"


def parse_actor_name(actor_name: str) -> ActorName | None:
    parts = actor_name.split("/", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    return ActorName(actor_name, *parts)
