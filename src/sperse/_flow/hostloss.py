"""What the server executor's driver (:mod:`sperse._flow.servers`) does when a host fails:
it could not be created in time, its ``watch`` or a delivery to it failed (its server or
worker died), or it stayed silent too long.

Each failure becomes a ``FlowError`` report to the run's controller naming the host's
operators and its server, which ends the run (a batch flow's ``restart`` then runs it
again, see the ``servers`` module docstring). The kinds in :data:`LOST` are losses of a
host, that running again can help; an item that cannot be pickled is the operator's.

**A service goes on.** When a host of a service is lost (a kind of :data:`LOST` naming a
server: its own ``watch`` failed, or a host could not deliver to it), the driver replaces
every host of that server as a reshape to the same plan does (:mod:`sperse._flow.rehost`),
placing them on the servers left: the survivors are quiesced and hand their keyed state
over; the lost hosts' keyed state is gone (their keys start again from the initial state).
The requests the requests replica had taken by then were answered, or were lost with the
server; ``Moved`` tells each client which (``Moved.lost``), and the client fails those with
``ServerLost`` naming the service and the operators, or sends them again when no operator
up to the lost ones keeps state and the request's ``retries`` allow. Requests that came
meanwhile wait in the requests replica's inbox and go on. The run still fails (and every
waiting request with it) when the lost server held the requests replica (where the
clients send), or when no server left matches a lost operator's placement.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sperse._core import ErrorInfo
from sperse._flow.host import LOST, lost_info, unpicklable
from sperse._flow.messages import FlowError, ReplicaEvent, Report, Settle
from sperse._flow.rehost import Loss, Reshaping, rehost
from sperse.errors import SerializationError

if TYPE_CHECKING:
    from sperse._flow.servers import _Driver, _Host

__all__ = ["LOST", "check_time", "delivery_failed", "fail_host", "reported"]


def delivery_failed(
    d: _Driver, host: _Host, events: list[ReplicaEvent], error: BaseException
) -> list[Settle]:
    """A delivery of the driver's to ``host`` failed."""
    if isinstance(error, SerializationError):
        stage = d._plan.stages[host.key[0]]
        failure = unpicklable(d._plan, stage.nodes[0], events, error)
        return d._control(d._controller.handle(Report(failure)))
    return fail_host(d, host, f"could not be reached: {error}", lost_info(error))


def fail_host(d: _Driver, host: _Host, what: str, info: ErrorInfo | None = None) -> list[Settle]:
    """Report the failure of ``host`` (``what`` happened to it) to the controller."""
    if info is None:
        info = ErrorInfo("server_lost", "ServerLost", what)
    text = f"(replica {host.key[1]} on server {host.server!r}) {what}"
    failure = FlowError(d._names[host.key[0]], "", info, text, host.server)
    return reported(d, Report(failure))


def reported(d: _Driver, report: Report) -> list[Settle]:
    """A host's report to the controller, but the loss of a server under a service, which
    goes on (see the module docstring)."""
    failure = report.what
    if (
        not isinstance(failure, FlowError)
        or not failure.server
        or failure.error.kind not in LOST
        or not d._plan.logical.is_service()
    ):
        return d._control(d._controller.handle(report))
    server = failure.server
    if server in d._lost:
        return []  # told already: its hosts were replaced
    keys = frozenset(k for k, h in d._hosts.items() if h.server == server)
    if (0, 0) in keys or not keys:  # where the clients send: the service cannot go on
        return d._control(d._controller.handle(report))
    d._lost.add(server)
    lost = sorted({d._names[k[0]] for k in keys})
    stages = {k[0] for k in keys}
    keyed = [
        n.name
        for s in d._plan.stages
        if s.id in stages
        for n in map(d._plan.node, s.nodes)
        if n.kind == "scan"
    ]
    upto = max(stages)
    retry = not any(
        d._plan.node(n).kind == "scan" for s in d._plan.stages if s.id <= upto for n in s.nodes
    )
    why = (
        f"it was in flight through operator{'s' if len(lost) > 1 else ''} "
        f"{', '.join(map(repr, lost))}, lost with server {server!r} "
        f"({failure.error.type_name}: {failure.error.message})"
    )
    if keyed:
        why += (
            f"; the keyed state of {', '.join(map(repr, keyed))} there is lost too (those "
            "keys start again from the initial state)"
        )
    return rehost(d, d._plan, Reshaping(), Loss(server, keys, why, retry))


def check_time(d: _Driver, started: bool, deadline: float) -> list[Settle]:
    """Fail the run on a host not created in time, or silent for too long."""
    now = time.monotonic()
    for host in d._hosts.values():
        if not started and not host.ready and now > deadline:
            return fail_host(d, host, "was not created in time")
        if started and now - host.heard > d._config.silence:
            silence = d._config.silence
            return fail_host(d, host, f"did not answer for {silence:g} s")
    return []
