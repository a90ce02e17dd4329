"""``sperse.remote``: functions whose calls run on the cluster, classes whose instances live
on a server, ``run_on_all``, and ``put``."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from sperse._cluster.connect import current
from sperse._cluster.objects import RemoteClass
from sperse._cluster.pending import Pending, submit_call, submit_work, wait
from sperse._core import (
    PickledFunction,
    Put,
    pip_requirements,
)
from sperse._core.limits import MAX_RETRIES
from sperse._exec.runner import short_repr, type_name
from sperse._lang.placement import Placement, placement_from_options
from sperse._serialize import RemoteValue, dumps
from sperse.errors import (
    NoMatchingServer,
    SerializationError,
    UsageError,
)

__all__ = ["RemoteFunction", "put", "remote", "run_on_all"]

T = TypeVar("T")
P = ParamSpec("P")


class RemoteFunction(Generic[P, T]):
    """A function whose calls run on the cluster and return ``Pending`` at once."""

    def __init__(
        self,
        fn: Callable[P, T],
        *,
        placement: Placement | None = None,
        retries: int = 0,
        timeout: float | None = None,
        env: Mapping[str, object] | None = None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self.placement = placement or Placement()
        self.retries = _checked_retries(retries)
        self.timeout = _checked_timeout(timeout)
        self.env = env
        self._pip = pip_requirements(env)
        self._pickled: PickledFunction | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Pending[T]:
        cluster = current()
        try:
            fn = self._shipped()
        except SerializationError as exc:
            failed: Pending[T] = Pending(cluster, label=self._label())
            failed._settle(error=exc)
            return failed
        call = submit_call(
            cluster,
            fn,
            args,
            kwargs,
            placement=self.placement,
            retries=self.retries,
            label=self._label(),
            pip=self._pip,
        )
        if self.timeout is not None:
            call._time_out_after(self.timeout)
        return call

    def _label(self) -> str:
        return f"{getattr(self._fn, '__qualname__', 'function')}()"

    def _shipped(self) -> PickledFunction:
        """The function pickled once: later calls send the same bytes, workers cache it.

        Like Ray, the function (and the globals it uses) is captured on the first
        call; a redefinition makes a new remote function.
        """
        if self._pickled is None:
            data = dumps(self._fn, what=f"function {self._label()}")
            self._pickled = PickledFunction(hashlib.sha256(data).hexdigest(), data)
        return self._pickled

    def options(
        self,
        *,
        on: str | None = None,
        resources: Mapping[str, float] | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        env: Mapping[str, object] | None = None,
    ) -> RemoteFunction[P, T]:
        """The same function with other placement, retries, timeout or environment."""
        placement = placement_from_options(on, resources) if on or resources else self.placement
        return RemoteFunction(
            self._fn,
            placement=placement,
            retries=self.retries if retries is None else retries,
            timeout=self.timeout if timeout is None else timeout,
            env=self.env if env is None else env,
        )

    def local(self, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call the function here, synchronously (for tests and debugging)."""
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        where = f" on {self.placement}" if str(self.placement) else ""
        return f"<remote function {getattr(self._fn, '__qualname__', '?')}{where}>"


@overload
def remote(fn: type[T], /) -> RemoteClass[T]: ...  # type: ignore[overload-overlap]


@overload
def remote(fn: Callable[P, T], /) -> RemoteFunction[P, T]: ...


@overload
def remote(
    *,
    on: str | None = None,
    resources: Mapping[str, float] | None = None,
    retries: int = 0,
    timeout: float | None = None,
    env: Mapping[str, object] | None = None,
    name: str | None = None,
    max_concurrency: int | None = None,
    restart: bool | None = None,
) -> Callable[[Callable[P, T]], Any]: ...


def remote(
    fn: Any = None,
    /,
    *,
    on: str | None = None,
    resources: Mapping[str, float] | None = None,
    retries: int = 0,
    timeout: float | None = None,
    env: Mapping[str, object] | None = None,
    name: str | None = None,
    max_concurrency: int | None = None,
    restart: bool | None = None,
) -> Any:
    """Make a function run remotely (each call returns a ``Pending`` at once), or a class
    whose instances live on a server (``sperse.remote(Counter)(on="db")`` returns an
    ``ObjectProxy`` whose method calls return ``Pending``).

    ``on`` is a tag expression (``"gpu & !slow"``) or ``"@server"`` to pin;
    ``resources`` the needs (``{"gpu_mem": 16}``); ``retries`` how many times
    to run it again when its worker dies (exceptions it raises are not retried);
    ``timeout`` the seconds from a call to its result, after which the call is cancelled
    (waiting, queued or running) and fails with ``TaskTimeout``; ``env`` what it needs
    installed (``{"pip": ["pkg==1.2"]}``, see ``sperse.connect``). For a
    class: ``name`` (find it with ``sperse.get_object``), ``max_concurrency`` (calls at
    once; default 1, in call order) and ``restart`` (rebuild it if its worker dies).
    """
    placement = placement_from_options(on, resources)
    for_class = {"name": name, "max_concurrency": max_concurrency, "restart": restart}

    def wrap(f: Any) -> Any:
        if isinstance(f, type):
            return RemoteClass(
                f,
                placement=placement,
                name=name or "",
                max_concurrency=max_concurrency or 1,
                restart=bool(restart),
            )
        given = [k for k, v in for_class.items() if v is not None]
        if given:
            raise TypeError(
                f"{', '.join(given)}: only for classes (remote objects), not for function "
                f"{getattr(f, '__qualname__', f)!r}"
            )
        return RemoteFunction(f, placement=placement, retries=retries, timeout=timeout, env=env)

    if (timeout is not None or env is not None) and isinstance(fn, type):
        raise TypeError("timeout, env: only for functions, not for classes (remote objects)")
    return wrap(fn) if fn is not None else wrap


def _checked_retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be a whole number, not {retries!r}")
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(
            f"retries must be from 0 to {MAX_RETRIES} (re-runs when the worker dies; servers "
            f"refuse more), not {retries}"
        )
    return retries


def _checked_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def run_on_all(
    fn: Callable[..., T],
    /,
    *args: Any,
    timeout: float | None = 60.0,
    on_error: Literal["raise", "return"] = "raise",
    **kwargs: Any,
) -> dict[str, T | BaseException]:
    """Run ``fn(*args, **kwargs)`` once on every server of the current cluster (a worker of
    each), as Dask's ``client.run`` and ipyparallel's ``%px`` do: to warm a cache, load a
    model, check an environment. Returns ``{server name: result}``, in the servers' order.

    ``on_error="raise"`` raises the first error met (the others still ran);
    ``"return"`` puts each error in the dict instead. ``TimeoutError`` after ``timeout``
    seconds (the calls go on).
    """
    cluster = current()
    servers = [s.name for s in cluster.servers()]
    if not servers:
        raise NoMatchingServer("run_on_all: the cluster has no server yet")
    remote_fn = fn if isinstance(fn, RemoteFunction) else RemoteFunction(fn)
    shipped = remote_fn._shipped()  # pickled once for every server
    label = remote_fn._label()
    calls = {
        name: submit_call(
            cluster,
            shipped,
            args,
            kwargs,
            placement=Placement(pin=name),
            retries=0,
            label=f"{label} on {name}",
        )
        for name in servers
    }
    _, left = wait(calls.values(), timeout)
    if left:
        names = ", ".join(n for n, p in calls.items() if p in left)
        raise TimeoutError(f"run_on_all({label}): no answer within {timeout} s from {names}")
    out: dict[str, T | BaseException] = {}
    for name, call in calls.items():
        error = call._error
        if error is not None and on_error == "raise":
            raise error
        out[name] = error if error is not None else call.result(0)
    return out


def put(value: T, /, *, on: str | None = None) -> Pending[T]:
    """Send ``value`` to a server once, to keep there, as Ray's ``ray.put`` does: the
    ``Pending`` it returns stands for it, and passing that to remote code sends only the
    reference. A 100 MB array used by ten calls is copied once, not ten times.

    The value is copied when ``put`` is called (changing it afterwards changes nothing
    there), and freed on the server when no one holds the ``Pending`` (or its
    ``RemoteValue``) any more. ``on`` chooses the server, as ``remote(on=...)`` does
    (tags, or ``"@name"``). A backend that keeps no values (``LocalBackend``,
    ``MemoryBackend``) hands the value back instead, and later calls send it by value.
    """
    if isinstance(value, Pending | RemoteValue):
        raise UsageError(
            "sperse.put: the value is a Pending or RemoteValue already: pass it to remote code "
            "as it is (only its reference travels)"
        )
    placement = placement_from_options(on) if on else Placement()
    kind, text = type_name(value), short_repr(value)
    return submit_work(
        current(),
        lambda args, _: Put(args[0], kind, text),
        (value,),
        {},
        placement=placement,
        retries=0,
        label=f"put({kind})",
    )
