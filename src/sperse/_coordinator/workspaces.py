"""What clients share with the coordinator's dashboard (``Coordinator.Share``, sent by
:class:`~sperse._backends.client_share.ClientShare`): their workspaces' graphs, for the
Workspace page, and their flow runs, for the Flows page.

Invariants:

- A client's workspace or run is shown under ``<client> <name>`` (the client's
  ``host:pid`` and its own name for it), so two clients' never take each other's place.
- Only what a picture needs is kept (what a client sent, as JSON: ids, labels, states,
  names, counts, errors as one line), and it is only ever shown as text. What is not a JSON
  object of the expected shape (a graph's ``cells`` and ``edges`` lists, a run's
  ``operators`` list) is ignored.
- An empty ``data`` means the workspace ended (its client closed): it leaves the page. A
  run stays (ended, with its last counts), as on a client's dashboard.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sperse._dashboard.hub import Hub
from sperse._wire import pb

__all__ = ["apply_share", "shared_name"]

_SHAPES = {"workspace": ("cells", "edges"), "flow": ("operators", "edges")}


def shared_name(client: str, name: str) -> str:
    """The name the dashboard shows (and puts in its URLs: no ``/``)."""
    return f"{client} {name}".replace("/", "_")


def apply_share(hub: Hub, share: pb.ClientShare) -> bool:
    """Put ``share`` on ``hub``; whether it was taken."""
    shape = _SHAPES.get(share.kind)
    if shape is None:
        return False
    key = shared_name(share.client, share.name)
    if not share.data:
        if share.kind == "workspace":
            hub.workspace_gone(key)
        return True
    try:
        data: Any = json.loads(share.data)
    except ValueError:
        return False
    if not isinstance(data, dict) or not all(isinstance(data.get(f), list) for f in shape):
        return False
    if share.kind == "workspace":
        data["name"] = key
        hub.workspace(key, data)
    else:
        known = hub.flow_run(key)
        data["id"] = key
        data["client"] = share.client
        data["order"] = known["order"] if known is not None else time.time()  # newest first
        hub.flow(key, data)
    return True
