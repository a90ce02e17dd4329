"""``RayBackend``: remote work as Ray tasks, on a Ray cluster (docs/ray.md has the mapping).

``submit`` pickles the work with Sperse's own serializer (so the user's modules travel by
value and errors name the input that cannot be sent) and calls one Ray remote function,
``_run_task`` (:mod:`.worker`), on the caller's thread. Values already held in Ray
(``RemoteValue``s made by this backend, :mod:`.held`) travel as top-level ``ObjectRef``
arguments: Ray moves them from node to node, never through this process. The backend's I/O
thread (:mod:`.io_thread`) reports what Ray did; remote objects are actors
(:mod:`.objects`); placement is checked against the nodes (:mod:`.placement`).

Invariants: every submitted task ends in exactly one ``Done`` or ``Failed`` (``close`` fails
what is left); events of a task come in the order ``Started``, ``Output``..., then the end.
The actors of the remote objects a backend created are killed when they are released or
closed, and when the backend closes.

Ray is imported lazily: ``import sperse`` never imports it, nor does making a ``RayBackend``.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sperse._backends.ray.held import HeldValues
from sperse._backends.ray.imports import import_ray
from sperse._backends.ray.inflight import InFlight, Prepared, Task
from sperse._backends.ray.io_thread import IOThread
from sperse._backends.ray.join import check_joined, init_ray, wait_for_mailbox
from sperse._backends.ray.objects import ObjectTable
from sperse._backends.ray.placement import NodeView, RayOptions
from sperse._backends.ray.relay import _Mailbox
from sperse._backends.ray.worker import _run_task, nested_backends_are
from sperse._core import (
    Done,
    EventSink,
    Failed,
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    ObjectInfo,
    ServerInfo,
    StatementTask,
    TaskSpec,
)
from sperse._core.callbacks import sending_to
from sperse._exec.runner import dumps_work_oob
from sperse.errors import EnvUnavailable, SerializationError, ServerLost, SperseError

__all__ = ["RayBackend"]


@dataclass(slots=True)
class _Started:
    """What a started backend works with."""

    nodes: NodeView
    held: HeldValues
    objects: ObjectTable
    io: IOThread
    task_fn: Any  # ray.remote(_run_task)
    mailbox_name: tuple[str, str]  # namespace, name


class RayBackend:
    """Runs tasks on a Ray cluster: each Sperse task is one Ray task (docs/ray.md).

    ``address`` is what ``ray.init`` takes (:mod:`.join`). A Ray this process already runs
    (``ray.init`` called before) is used as it is, and left running by ``close``. A Ray
    started here listens on 127.0.0.1 only, with ``num_cpus``, custom ``resources`` (tags)
    and the server name ``name``.

    Remote objects are actors (``_ObjectActor``), named in ``OBJECTS_NAMESPACE`` by their
    object id, type and name, so that any process of the cluster finds them. The actors
    this backend created are killed when released, closed, or when it closes; Ray kills
    them too when this process exits (they are not detached).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        resources: Mapping[str, float] | None = None,
        name: str | None = None,
        inline_limit: int = 1 << 20,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.address = address
        self._num_cpus = num_cpus
        self._resources = dict(resources or {})
        self._name = name
        self._inline_limit = inline_limit
        self._init_options = dict(init_options or {})
        self._ray: Any = None
        self._owns_ray = False
        self._inflight = InFlight()
        self._started: _Started | None = None
        self._functions: dict[tuple[Any, ...], Any] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        if self._started is not None:
            raise SperseError("this RayBackend is already started")
        ray = import_ray()
        self._ray = ray
        if ray.is_initialized():
            check_joined(ray, self.address)
        else:
            init_ray(
                ray,
                self.address,
                num_cpus=self._num_cpus,
                resources=self._resources,
                name=self._name,
                init_options=self._init_options,
            )
            self._owns_ray = True
        mailbox: Any = None
        try:
            task_fn = ray.remote(_run_task)
            namespace = ray.get_runtime_context().namespace
            name = f"sperse-mailbox-{uuid.uuid4().hex[:12]}"
            mailbox = (
                ray.remote(_Mailbox)
                .options(name=name, namespace=namespace, num_cpus=0, max_concurrency=1000)
                .remote()
            )
            nodes = NodeView(ray, closed=lambda: self._inflight.closed)
            nodes.refresh()
            wait_for_mailbox(ray, mailbox)
        except BaseException:
            if mailbox is not None:  # in a Ray that stays, nothing of ours may stay
                with contextlib.suppress(Exception):
                    ray.kill(mailbox)
            self._shutdown_ray()
            raise
        held = HeldValues(ray, self._inline_limit, closed=lambda: self._inflight.closed)
        objects = ObjectTable(ray, nodes.where)
        io = IOThread(ray, sink, mailbox, self._inflight, held, nodes, objects)
        self._started = _Started(nodes, held, objects, io, task_fn, (namespace, name))
        io.start()

    def close(self) -> None:
        """Fail what is unfinished, stop the I/O thread, and leave Ray (stopping it if it was
        started here)."""
        if not self._inflight.close():
            return
        started = self._started
        if started is not None:
            started.io.join(10)
            mailbox, started.io.mailbox = started.io.mailbox, None
            if mailbox is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(mailbox)
            started.held.clear()
            started.objects.close()
        self._shutdown_ray()

    def _shutdown_ray(self) -> None:
        if self._owns_ray:
            self._owns_ray = False
            with contextlib.suppress(Exception):
                self._ray.shutdown()

    # ---- the Backend protocol (any thread) ---------------------------------------------------

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        started = self._require_started()
        for spec in specs:
            if spec.pip:
                raise EnvUnavailable(
                    f"{spec.label or spec.task_id}: env={{'pip': [...]}} is for sperse servers;"
                    " on Ray, give the cluster a runtime_env (ray.init(runtime_env=...))"
                )
        prepared = [self._prepare(started, spec) for spec in specs]  # raises before sending
        for ready in prepared:
            sent = ready.send()
            ended = sent if isinstance(sent, Done | Failed) else None
            if ended is not None:
                task = Task(ready.task_id, None, [], None, obj=ready.obj)
            else:
                summary, slots = (sent[0], list(sent[1:])) if isinstance(sent, list) else (sent, [])
                task = Task(ready.task_id, summary, slots, ready.names, sent_at=time.monotonic())
                task.obj, task.creating = ready.obj, ready.creating
            # Not accepted (closed): not cancelled either, since a task cancelled as it is
            # pushed to a worker can abort Ray's driver (InFlight.cancel); its result is
            # never read.
            if self._inflight.add(task, ended):
                continue
            if ready.creating and ready.obj is not None:  # created as the backend closed
                started.objects.forget(ready.obj, "is gone: the Ray backend is closed", True)
            raise self._inflight.broken or ServerLost("the Ray backend is closed")

    def cancel(self, task_id: str) -> None:
        """Interrupt the task (``KeyboardInterrupt`` in it); if it is still running
        ``CANCEL_GRACE`` seconds later (Ray's interrupt waits for a blocking call such as
        ``time.sleep`` to return), kill its worker. A call of a remote object is cancelled
        at once, its actor never killed."""
        summary = self._inflight.cancel(task_id)
        if summary is not None:
            with contextlib.suppress(Exception):  # already over: nothing to cancel
                self._ray.cancel(summary, force=False, recursive=True)

    def release(self, object_ids: Iterable[str]) -> None:
        """Drop held values; kill the actors of remote objects this backend created."""
        started = self._started
        if started is None:
            return
        for object_id in object_ids:
            if not started.held.release(object_id):
                started.objects.release(object_id)

    def objects(self, name: str = "") -> list[ObjectInfo]:
        """The remote objects of the Ray cluster, every client's (only the one called
        ``name``, if given), as each describes itself (``ObjectTable.listing``)."""
        return self._require_started().objects.listing(name)

    def servers(self) -> list[ServerInfo]:
        nodes = self._was_started().nodes.current()
        busy = self._inflight.busy()
        out = []
        for node in nodes.values():
            info = node.info
            out.append(
                ServerInfo(
                    info.name,
                    info.tags,
                    info.resources,
                    workers=info.workers,
                    busy=busy.get(node.node_id, 0),
                    address=info.address,
                )
            )
        return out

    def stats(self) -> dict[str, int]:
        started = self._was_started()
        counters = self._inflight.stats()
        counters["objects_held"] = len(started.held)
        counters["remote_objects"] = started.objects.owned()
        counters["nodes"] = len(started.nodes.current())
        return counters

    # ---- submitting --------------------------------------------------------------------------

    def _was_started(self) -> _Started:
        if self._started is None:
            raise SperseError("RayBackend.start() was not called")
        return self._started

    def _require_started(self) -> _Started:
        started = self._was_started()
        if self._inflight.closed:
            raise ServerLost("the Ray backend is closed")
        if self._inflight.broken is not None:
            raise self._inflight.broken
        return started

    def _prepare(self, started: _Started, spec: TaskSpec) -> Prepared:
        work = spec.work
        what = spec.label or spec.task_id
        objects = started.objects
        if isinstance(work, ObjectCreate):
            placed = started.nodes.ray_options(started.nodes.options(spec.placement, what))
            return objects.prepare_create(
                spec, work, placed, lambda: self._header(started, spec, None)
            )
        if isinstance(work, ObjectCall):
            return objects.prepare_call(spec, work, self._header(started, spec, None))
        if isinstance(work, ObjectClose):
            return objects.prepare_close(spec, work)
        options = started.nodes.options(spec.placement, what)
        names = work.defs if isinstance(work, StatementTask) and not work.is_expression else None
        header, held = self._header(started, spec, names)
        returns = 1 + (len(names) if names is not None else 1)
        fn = self._function(started, returns, spec.retries, options)
        return Prepared(spec.task_id, functools.partial(fn.remote, header, *held), names)

    def _header(
        self, started: _Started, spec: TaskSpec, names: tuple[str, ...] | None
    ) -> tuple[list[Any], list[Any]]:
        """The one argument of ``_run_task`` (and of an object's ``call``) for ``spec``, and
        the held values it refers to (the arguments after it): :mod:`.protocol`."""
        what = spec.label or spec.task_id
        with sending_to(*started.mailbox_name, via="ray"):  # callbacks come back by the mailbox
            data, buffers, refs = dumps_work_oob(spec.work, spec.label or "the task")
        ref_ids = list(dict.fromkeys(r.object_id for r in refs))
        held = started.held.refs(ref_ids)
        if any(ref is None for ref in held):
            raise SerializationError(
                f"{what}: an input is a remote value that this Ray backend does not hold (it "
                "was released, or comes from another cluster): fetch it, or compute it again"
            )
        header = [
            data,
            buffers,  # PickleBuffers: Ray sends them out of band
            ref_ids,
            spec.task_id,
            *started.mailbox_name,
            self._inline_limit,
            list(names) if names is not None else None,
        ]
        return header, held

    def _function(self, started: _Started, returns: int, retries: int, options: RayOptions) -> Any:
        key = (returns, retries, options)
        fn = self._functions.get(key)
        if fn is None:
            kwargs: dict[str, Any] = {
                "num_returns": returns,
                "max_retries": retries,
                "retry_exceptions": False,
                **started.nodes.ray_options(options),
            }
            fn = started.task_fn.options(**kwargs)
            if len(self._functions) > 256:
                self._functions.clear()
            self._functions[key] = fn
        return fn


# Nested work in a Ray worker goes to a RayBackend of its own (worker.py cannot import this
# module: it would be a cycle).
nested_backends_are(RayBackend)
