"""Remote objects (DESIGN §5): an instance that lives in a worker process of one server.

``sperse.remote(Counter)`` is a ``RemoteClass``; calling it creates the instance remotely
and returns an ``ObjectProxy`` at once. ``proxy.incr(5)`` returns a ``Pending``; calls of
one object run in the order they were made (``max_concurrency=N``: N at once). Reading an
attribute, ``proxy.count``, is a ``Pending`` too. Only public names are exposed.

Invariants:

- Creation is a task like any other, routed by the placement; the calls made before it is
  placed wait for it here (in order), then go to the server that holds the object (pinned
  to it). A constructor that fails makes every call fail with ``ObjectLost`` naming it.
- The proxy made by ``RemoteClass`` *owns* the object: when it is garbage-collected (or
  ``close()``), the object is destroyed. Proxies made elsewhere (unpickled in remote code,
  ``get_object``) borrow it: they never destroy it, and fail with ``ObjectLost`` once it is
  gone, as Ray's actor handles do once their owner exits.
- A proxy pickles to its object's id, server and address: passed to remote code on any
  server, it calls the same object there (remote code reaches the object's server with the
  cluster token its own server gave it).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import current, worker_cluster
from sperse._cluster.pending import Gate, Pending, submit_work
from sperse._core import (
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    ObjectInfo,
    PickledFunction,
)
from sperse._core.limits import MAX_CONCURRENCY
from sperse._lang.placement import Placement, placement_from_options
from sperse._serialize import dumps
from sperse.errors import ObjectLost, SerializationError, UnknownObject

__all__ = ["ObjectProxy", "RemoteClass", "get_object", "objects", "public_methods"]

T = TypeVar("T")


def public_methods(cls: type) -> tuple[str, ...]:
    """The names a proxy calls as methods: public callables of the class."""
    return tuple(
        sorted(
            name
            for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name, None))
        )
    )


class RemoteClass(Generic[T]):
    """A class whose instances live on a server. Calling it returns an ``ObjectProxy``."""

    def __init__(
        self,
        cls: type[T],
        *,
        placement: Placement | None = None,
        name: str = "",
        max_concurrency: int = 1,
        restart: bool = False,
    ) -> None:
        if not isinstance(cls, type):
            raise TypeError(f"sperse.remote on a class makes remote objects; got {cls!r}")
        if not 1 <= max_concurrency <= MAX_CONCURRENCY:
            raise ValueError(
                f"max_concurrency must be from 1 to {MAX_CONCURRENCY} (calls of one remote "
                f"object running at once; servers refuse more), not {max_concurrency}"
            )
        self._cls = cls
        self.placement = placement or Placement()
        self.name = name
        self.max_concurrency = max_concurrency
        self.restart = restart
        self._pickled: PickledFunction | None = None
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__

    def __call__(
        self,
        *args: Any,
        on: str | None = None,
        name: str | None = None,
        max_concurrency: int | None = None,
        restart: bool | None = None,
        resources: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> ObjectProxy:
        """Create an instance remotely: ``Counter(5, on="db", name="hits")``. The keywords
        ``on``, ``name``, ``max_concurrency``, ``restart`` and ``resources`` are Sperse's; a
        constructor that takes one of them gets it through ``options(...).new(...)``."""
        chosen = self.options(
            on=on,
            name=name,
            max_concurrency=max_concurrency,
            restart=restart,
            resources=resources,
        )
        return chosen.new(*args, **kwargs)

    def options(
        self,
        *,
        on: str | None = None,
        name: str | None = None,
        max_concurrency: int | None = None,
        restart: bool | None = None,
        resources: Mapping[str, float] | None = None,
    ) -> RemoteClass[T]:
        """The same class with other options for the instances it creates."""
        placement = placement_from_options(on, resources) if on or resources else self.placement
        other = RemoteClass(
            self._cls,
            placement=placement,
            name=self.name if name is None else name,
            max_concurrency=self.max_concurrency if max_concurrency is None else max_concurrency,
            restart=self.restart if restart is None else restart,
        )
        other._pickled = self._pickled
        return other

    def with_placement(self, placement: Placement) -> RemoteClass[T]:
        """The same class, placed by ``placement`` (the ``remote[...]`` of a statement)."""
        other = self.options()
        other.placement = placement
        return other

    def new(self, *args: Any, **kwargs: Any) -> ObjectProxy:
        """Create an instance remotely with exactly these constructor arguments."""
        return self.create_on(current(), args, kwargs)

    def create_on(
        self, cluster: Cluster, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> ObjectProxy:
        """Create an instance on ``cluster``."""
        type_name = self._cls.__qualname__
        methods = public_methods(self._cls)
        object_id = secrets.token_hex(16)
        proxy = ObjectProxy(object_id, type_name, methods, self.name, cluster=cluster)
        label = f"{type_name}()"
        created: Pending[Any] = Pending(cluster, label=label)
        try:
            shipped = self._shipped()
        except SerializationError as exc:
            created._settle(error=exc)
        else:
            name, concurrency, restart = self.name, self.max_concurrency, self.restart

            def make(a: tuple[Any, ...], k: dict[str, Any]) -> ObjectCreate:
                return ObjectCreate(
                    object_id, shipped, a, k, name, concurrency, restart, type_name, methods
                )

            submit_work(
                cluster,
                make,
                args,
                kwargs,
                placement=self.placement,
                retries=0,
                label=label,
                pending=created,
            )
        proxy._created(created)
        return proxy

    def _shipped(self) -> PickledFunction:
        if self._pickled is None:
            data = dumps(self._cls, what=f"class {self._cls.__qualname__}")
            self._pickled = PickledFunction(hashlib.sha256(data).hexdigest(), data)
        return self._pickled

    def __repr__(self) -> str:
        where = f" on {self.placement}" if str(self.placement) else ""
        return f"<remote class {self._cls.__qualname__}{where}>"


class AttributeRead(Pending[Any]):
    """The Pending of ``proxy.attr`` for a name that is not a known method."""

    __slots__ = ("_object_name",)
    _object_name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{self.label} is not a method of {self._object_name} (its methods are listed by "
            f"dir(proxy)); reading it gives a Pending of the attribute"
        )


class ObjectProxy:
    """Stands for a remote object: method calls and attribute reads return ``Pending``."""

    __slots__ = (
        "__weakref__",
        "_address",
        "_closed",
        "_cluster",
        "_last_sent",
        "_lock",
        "_methods",
        "_name",
        "_object_id",
        "_ready",
        "_server",
        "_type_name",
    )

    def __init__(
        self,
        object_id: str,
        type_name: str,
        methods: tuple[str, ...],
        name: str = "",
        *,
        cluster: Cluster | None = None,
        server: str = "",
        address: str = "",
    ) -> None:
        self._object_id = object_id
        self._type_name = type_name
        self._methods = frozenset(methods)
        self._name = name
        self._cluster = cluster  # set: this proxy owns the object (it made it)
        self._server = server
        self._address = address
        self._ready: Pending[Any] | None = None  # the creation, until it is placed
        self._closed = False
        self._lock = threading.Lock()
        self._last_sent: Gate | None = None

    # ---- creation (owner) ------------------------------------------------------------

    def _created(self, created: Pending[Any]) -> None:
        cluster = self._cluster
        assert cluster is not None
        ready: Pending[Any] = Pending(cluster, label=created.label)
        self._ready = ready

        def placed(done: Pending[Any]) -> None:
            if done._error is not None:
                ready._settle(
                    error=ObjectLost(
                        f"{self._describe()} does not exist: its creation failed: {done._error}"
                    )
                )
                return
            self._server = done.where
            self._address = _address_of(cluster, done.where)
            ready.where = done.where
            ready._settle(None)

        created._on_settle(placed)
        weakref.finalize(self, _release, cluster, self._object_id)

    def _when_ready(self, hook: Callable[[Pending[Any]], None]) -> None:
        """Call ``hook`` with the creation's outcome (a Pending: None, or ObjectLost)."""
        assert self._ready is not None
        self._ready._on_settle(hook)

    def ready(self, timeout: float | None = None) -> ObjectProxy:
        """Wait until the object exists (raises ``ObjectLost`` if it could not be made)."""
        if self._ready is not None:
            self._ready.result(timeout)
        return self

    # ---- the object's API ------------------------------------------------------------

    @property
    def object_id(self) -> str:
        return self._object_id

    @property
    def where(self) -> str:
        """The server that holds the object ("" until it is placed)."""
        return self._server

    @property
    def type_name(self) -> str:
        return self._type_name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(
                f"{attr!r} of {self._describe()} is private: a remote object exposes only "
                "public names (no leading underscore)"
            )
        if attr in self._methods:
            return _Method(self, attr)
        read = AttributeRead(self._target(), label=f"{self._type_name}.{attr}")
        read._object_name = self._describe()
        return self._submit(attr, (), {}, attribute=True, into=read)

    def __dir__(self) -> list[str]:
        return sorted(self._methods)

    def close(self) -> Pending[None]:
        """Destroy the object now: later calls, and calls still waiting, fail with
        ``ObjectLost``. Returns the close's ``Pending`` (None when done); on a sperse
        server, only the client that created an unnamed object may close it: another's
        close fails with ``RemoteError`` (``PermissionError``) and the object lives on."""
        with self._lock:
            closed, self._closed = self._closed, True
        if closed:
            done: Pending[None] = Pending(self._target(), label="close")
            done._settle(None)
            return done
        return self._submit_work(ObjectClose(self._object_id), "close", ())

    def _describe(self) -> str:
        named = f" {self._name!r}" if self._name else ""
        return f"remote object{named} ({self._type_name} {self._object_id[:8]})"

    def _target(self) -> Cluster:
        if self._cluster is not None:
            return self._cluster
        return worker_cluster(self._address) or current()

    def _submit(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        attribute: bool = False,
        into: Pending[Any] | None = None,
    ) -> Pending[Any]:
        object_id = self._object_id

        def make(a: tuple[Any, ...], k: dict[str, Any]) -> ObjectCall:
            return ObjectCall(object_id, name, a, k, attribute)

        label = f"{self._type_name}.{name}" + ("" if attribute else "()")
        return self._submit_work(make, label, (args, kwargs), into=into)

    def _submit_work(
        self,
        work: Any,
        label: str,
        arguments: tuple[()] | tuple[tuple[Any, ...], Mapping[str, Any]],
        *,
        into: Pending[Any] | None = None,
    ) -> Pending[Any]:
        cluster = self._target()
        args, kwargs = arguments if arguments else ((), {})
        make = work if callable(work) else (lambda a, k: work)
        if self._closed and not isinstance(work, ObjectClose):
            failed = into if into is not None else Pending(cluster, label=label)
            failed._settle(error=ObjectLost(f"{label}: {self._describe()} was closed"))
            return failed
        ready = self._ready
        after: list[Pending[Any] | Gate] = []
        if ready is not None and (not ready.done() or ready._error is not None):
            after.append(ready)  # waits for the creation, or fails with its error
        # Calls are sent in the order they were made: each waits until the one before it
        # has gone (the first ones wait for the creation; later ones must not overtake).
        sent = Gate()
        with self._lock:
            previous, self._last_sent = self._last_sent, sent
        if previous is not None and not previous.done():
            after.append(previous)
        return submit_work(
            cluster,
            make,
            args,
            kwargs,
            placement=self._placement,
            retries=0,
            label=label,
            pending=into,
            after=after,
            sent=sent,
        )

    def _placement(self) -> Placement:
        if not self._server:
            return _ANYWHERE
        pinned = _PINS.get(self._server)
        if pinned is None:
            pinned = _PINS[self._server] = Placement(pin=self._server)
        return pinned

    # ---- pickling: a borrowed proxy of the same object ---------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        if not self._server:
            if self._ready is not None and not self._ready.done():
                raise SerializationError(
                    f"{self._describe()} is still being created: wait for it "
                    "(proxy.ready()) before sending its proxy elsewhere"
                )
            raise SerializationError(f"{self._describe()} does not exist")
        state = (
            self._object_id,
            self._type_name,
            tuple(sorted(self._methods)),
            self._name,
            self._server,
            self._address,
        )
        return (_borrowed, state)

    def __repr__(self) -> str:
        where = f" on {self._server}" if self._server else ""
        return f"<{self._describe()}{where}>"


_ANYWHERE = Placement()
_PINS: dict[str, Placement] = {}  # one per server name: made once, not per call


class _Method:
    """A bound remote method: calling it returns a ``Pending``."""

    __slots__ = ("_name", "_proxy")

    def __init__(self, proxy: ObjectProxy, name: str) -> None:
        self._proxy = proxy
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Pending[Any]:
        return self._proxy._submit(self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._proxy._type_name}.{self._name}>"


def _borrowed(
    object_id: str,
    type_name: str,
    methods: tuple[str, ...],
    name: str,
    server: str,
    address: str,
) -> ObjectProxy:
    return ObjectProxy(object_id, type_name, methods, name, server=server, address=address)


def _release(cluster: Cluster, object_id: str) -> None:
    if not cluster.closed:
        try:
            cluster.backend.release([object_id])
        except Exception:  # the cluster is going away: its sessions end, and objects with them
            return


def _address_of(cluster: Cluster, server: str) -> str:
    for info in cluster.servers():
        if info.name == server:
            return info.address
    return ""


def proxy_of(info: ObjectInfo, cluster: Cluster) -> ObjectProxy:
    return ObjectProxy(
        info.object_id,
        info.type_name,
        info.methods,
        info.name,
        server=info.server,
        address=_address_of(cluster, info.server),
    )


def objects(name: str = "") -> list[ObjectInfo]:
    """The remote objects on the servers of the current cluster (named ``name``, if given)."""
    return current().backend.objects(name)


def get_object(name: str) -> ObjectProxy:
    """A proxy of the remote object called ``name``, on any server of the current cluster
    (created with ``name=``): it borrows the object, which its creator still owns."""
    found = objects(name)
    if not found:
        raise UnknownObject(
            f"no remote object named {name!r} on the servers of this cluster: it was never "
            "created with name=..., or it was destroyed (closed, released, its client left); "
            "sperse.objects() lists those that exist"
        )
    return proxy_of(found[0], current())
