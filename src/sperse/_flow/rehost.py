"""Reshaping a service that runs on servers (``Service.scale``/``move``): the driver's side.

The driver thread (:mod:`sperse._flow.servers`) runs :func:`rehost` between two of its
events, so no report of the hosts is handled meanwhile. In order:

1. **Quiesce.** The requests replica's host (stage 0, where every client sends) is paused:
   it takes nothing more from its inbox (clients' requests wait there, in order) and
   returns once what it took is sent on and acknowledged. Then every other host, in stage
   order (a topological order), returns once it is idle with everything acknowledged: an
   acknowledgement means the receiver processed the delivery, and nothing new enters, so
   then no request is between two operators.
2. **Collect** each host's keyed state, idempotency memory and counts (``export``).
3. **New hosts** for every replica of the new plan but the requests replica, placed by the
   plan (the same tag expressions and pins as ``.on(...)``), started with their share of
   the state: each key to the replica ``stable_hash(key) % replicas`` that the batches of
   that key go to.
4. The requests replica's host **re-plans in place** (the clients keep sending to it; its
   channels from clients keep their numbering) and takes requests again.
5. The old hosts are closed, but those that answered clients: they stay until the service
   ends, answering a long poll with what is left in its mailbox, then ``Moved`` (where the
   answers are taken now).

A **lost server** (:mod:`sperse._flow.hostloss`) is a reshape to the same plan with a
:class:`Loss`: its hosts are neither quiesced, asked for their state, nor retired; the new
hosts go to the other servers; the requests replica's note of what it took (``taken``)
goes to the clients in ``Moved``, and its idempotency memory forgets the keys in flight.

Every request sent before is answered by the old replicas, every one after by the new:
none lost or answered twice, and those of one key stay in order (one path of ordered
channels before, one after, and nothing of the key in flight in between).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sperse._core import ErrorInfo
from sperse._core.routing import check_placement
from sperse._flow.messages import FlowError, Report, Settle
from sperse._flow.plan import LogicalPlan, Node, PhysicalPlan, physical
from sperse._flow.reshape import Handover
from sperse._flow.service import Moved
from sperse._flow.transport import Credits
from sperse._serialize import RemoteValue, dumps

if TYPE_CHECKING:
    from sperse._cluster.pending import Pending
    from sperse._flow.servers import _Driver

__all__ = ["RESHAPE_TIMEOUT", "Loss", "Reshaping", "rehost", "shippable"]

RESHAPE_TIMEOUT = 120.0  # seconds each step of a reshape may take before the run fails


class Reshaping:
    """A reshape asked of the driver thread: its new plan, or what failed it."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._plan: PhysicalPlan | None = None
        self._error: BaseException | None = None

    def settle(self, plan: PhysicalPlan | None, error: BaseException | None = None) -> None:
        self._plan, self._error = plan, error
        self._done.set()

    def result(self, timeout: float | None) -> PhysicalPlan | None:
        if not self._done.wait(timeout):
            return None
        if self._error is not None:
            raise self._error
        return self._plan


def planned(driver: _Driver, logical: LogicalPlan) -> PhysicalPlan:
    """The physical plan of ``logical`` on ``driver``'s servers; raises
    ``NoMatchingServer`` for a placement that no server meets (before anything changed)."""
    plan = physical(logical, driver._config.per_server)
    servers = driver._cluster.servers()
    for stage in plan.stages:
        names = " -> ".join(plan.node(n).name for n in stage.nodes)
        check_placement(stage.placement, servers, f"flow operator {names!r}")
    return plan


def rehost(
    driver: _Driver, plan: PhysicalPlan, box: Reshaping, loss: Loss | None = None
) -> list[Settle]:
    """Reshape ``driver``'s run for ``plan`` (see the module docstring), or with ``loss``
    replace the replicas lost with a server (:mod:`sperse._flow.hostloss`); a failure on
    the way fails the run (its hosts are in no state to go on), naming the service."""
    try:
        _rehost(driver, plan, loss)
    except Exception as exc:
        box.settle(None, exc)
        name = plan.logical.name
        if loss is not None:
            what = (
                f"lost server {loss.server!r} and could not replace what ran there "
                f"({loss.why}): {type(exc).__name__}: {exc}"
            )
            info = ErrorInfo("server_lost", "ServerLost", what)
            failure = FlowError(name, "", info, what, loss.server)
        else:
            what = f"could not be reshaped: {type(exc).__name__}: {exc}"
            failure = FlowError(name, "", ErrorInfo("internal", "FlowFailed", what), what)
        return driver._control(driver._controller.handle(Report(failure)))
    box.settle(plan)
    return []


@dataclass(frozen=True, slots=True)
class Loss:
    """The hosts lost with ``server`` (the keys of their replicas), and what their clients'
    requests in flight are told (``why``; ``retry``: they may be sent again)."""

    server: str
    keys: frozenset[tuple[int, int]]
    why: str
    retry: bool


def _rehost(d: _Driver, plan: PhysicalPlan, loss: Loss | None) -> None:
    old, hosts = d._plan, dict(d._hosts)
    source = hosts[(0, 0)]
    gone = loss.keys if loss is not None else frozenset()
    _wait(source.proxy.pause())
    for key in sorted(hosts):
        if key != (0, 0) and key not in gone:
            _wait(hosts[key].proxy.quiesce())
    state = Handover.merged([_wait(h.proxy.export()) for k, h in hosts.items() if k not in gone])
    if loss is not None:  # what the requests replica took so far was answered, or lost
        d._notice = (_wait(source.proxy.taken()), loss.why, loss.retry)
        if state.idem is not None:
            state.idem.forget_in_flight()

    d._plan = plan
    d._names = {s.id: " -> ".join(plan.node(n).name for n in s.nodes) for s in plan.stages}
    d._heads = {s.id: plan.node(s.nodes[0]).name for s in plan.stages}
    d._shipped = dumps(shippable(plan), what=f"the operators of flow {plan.logical.name!r}")
    servers = [s for s in d._cluster.servers() if s.name not in d._lost]
    d._places = {**d._place(servers), (0, 0): source.server}  # raises NoMatchingServer
    new = {key: d._make_host(key, server) for key, server in d._places.items() if key != (0, 0)}
    for host in new.values():
        ready = threading.Event()
        host.proxy._when_ready(lambda _, ready=ready: ready.set())  # type: ignore[misc]
        if not ready.wait(RESHAPE_TIMEOUT):
            raise TimeoutError(f"a host of {d._names[host.key[0]]!r} was not created in time")
        host.ready = True
    with d._lock:
        d._hosts = {(0, 0): source, **new}
    respond = _respond_stage(plan)
    epoch = d._epoch = d._epoch + 1
    responds = [d._hosts[(respond, r)].proxy for r in range(plan.stages[respond].replicas)]
    moved = Moved(epoch, responds, *d._notice) if d._notice else Moved(epoch, responds)
    # Started together (nothing flows before the source's replan below): a start takes a
    # round trip and its host's set-up, about 50 ms, so one after the other they added up.
    starts = [
        host.proxy.start(d._peers(key), "", state.share(plan, *key))  # type: ignore[arg-type]
        for key, host in new.items()
    ]
    for started in starts:
        _wait(started)
    config = {"names": d._names, "servers": d._places}
    _wait(
        source.proxy.replan(
            d._shipped, d._peers((0, 0)), state.share(plan, 0, 0),  # type: ignore[arg-type]
            config, None if respond == 0 else moved,
        )
    )  # fmt: skip

    old_respond = _respond_stage(old)
    for key, host in hosts.items():
        if key == (0, 0):
            continue
        if key in gone:
            with contextlib.suppress(Exception):
                host.proxy.close()  # best effort: its server is gone
        elif key[0] == old_respond:
            host.proxy.retire(moved)  # its clients take what is left, then go on
            d._kept.append(host.proxy)
        else:
            _wait(host.proxy.finish())  # its watch returns now, not on a closed object
            host.proxy.close()
    d._controller = type(d._controller)(plan)
    d._credits["ctl"] = Credits(1)
    for feed in d._feeds:
        feed.stage = plan.stages[0]
        feed.turn = 0
    now = time.monotonic()
    for host in d._hosts.values():
        host.heard = now
        if host is not source:
            d._call(host, "info", ("info", host))
            d._watch(host)


def _respond_stage(plan: PhysicalPlan) -> int:
    node = next(n for n in plan.logical.nodes if n.kind == "respond")
    return plan.stage_of[node.id]


def _wait(pending: Pending[Any]) -> Any:
    value = pending.result(RESHAPE_TIMEOUT)
    return value.fetch(60) if isinstance(value, RemoteValue) else value


def shippable(plan: PhysicalPlan) -> PhysicalPlan:
    """``plan`` as the hosts get it: sources fed from this process lose their items (an
    iterable, a queue) and keep only what they are."""
    logical = LogicalPlan(plan.logical.name)
    for node in plan.logical.nodes:
        if node.kind == "source" and node.args[0] != "lines":
            node = Node(
                node.id, node.kind, node.name, ("client",), node.inputs, node.placement,
                node.replicas, node.keyed, node.loop,
            )  # fmt: skip
        logical.nodes.append(node)
    logical.loops = list(plan.logical.loops)
    return PhysicalPlan(logical, plan.stages, plan.stage_of, plan.loops)
