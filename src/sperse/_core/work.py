"""What a task asks for: the kinds of work, and ``TaskSpec`` (the work, where it may run,
its retries, its environment). Plain data, the same in every backend."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any

from sperse._core.values import value
from sperse._lang.placement import Placement

__all__ = [
    "CallTask",
    "ObjectCall",
    "ObjectClose",
    "ObjectCreate",
    "PickledFunction",
    "Put",
    "StatementTask",
    "TaskSpec",
    "Work",
    "pip_requirements",
]


@value
class StatementTask:
    """A remote statement: source text compiled where it runs, plus its inputs.

    ``first_line`` is the line of the statement in the user's input, so a
    remote traceback points at the line the user typed.
    """

    source: str
    filename: str
    first_line: int
    inputs: Mapping[str, Any]
    defs: tuple[str, ...]
    is_expression: bool


@value
class PickledFunction:
    """A function pickled once and sent with every call; workers cache it by ``key``."""

    key: str
    data: bytes


@value
class CallTask:
    """A call of a function (shipped by value when it was defined at the prompt)."""

    fn: Callable[..., Any] | PickledFunction
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@value
class ObjectCreate:
    """Create a remote object: ``cls(*args, **kwargs)``, in a worker process of its own.

    ``object_id`` is chosen by the client (random). ``methods``: the public methods of
    ``cls``, for proxies made elsewhere (from a listing, or unpickled in remote code).
    ``direct``: the creating client, on the object's host, asks to send its calls to the
    object's worker directly (set by its backend; see ``sperse._pool.direct``)."""

    object_id: str
    cls: Callable[..., Any] | PickledFunction
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    name: str = ""
    max_concurrency: int = 1
    restart: bool = False
    type_name: str = ""
    methods: tuple[str, ...] = ()
    direct: bool = False


@value
class ObjectCall:
    """A call of method ``name`` of a remote object, or (``attribute``) the read of its
    attribute ``name``. Only public names (no leading ``_``) are allowed."""

    object_id: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    attribute: bool = False


@value
class ObjectClose:
    """Destroy a remote object now (its pending calls fail with ``ObjectLost``)."""

    object_id: str


@value
class Put:
    """Keep ``value`` where the task goes (``sperse.put``). A server holds it at once, and
    runs nothing; a backend that holds no values runs it as a task that returns it.
    ``type_name`` and ``repr`` describe it in listings, as a held result's do."""

    value: Any
    type_name: str = ""
    repr: str = ""


Work = StatementTask | CallTask | ObjectCreate | ObjectCall | ObjectClose | Put


@value
class TaskSpec:
    task_id: str
    work: Work
    placement: Placement = field(default_factory=Placement)
    retries: int = 0
    label: str = ""
    pip: tuple[str, ...] = ()  # the pip requirements it runs with (``env={"pip": [...]}``)


def pip_requirements(env: Mapping[str, object] | None) -> tuple[str, ...]:
    """The pip requirements of an ``env=`` option (``{"pip": ["pkg==1.2", ...]}``), checked."""
    if env is None:
        return ()
    if not isinstance(env, Mapping):
        raise TypeError(f'env must be a dict such as {{"pip": ["requests==2.32.3"]}}, not {env!r}')
    unknown = sorted(set(env) - {"pip"})
    if unknown:
        hint = (
            " (your own modules travel with your functions already; send data as arguments)"
            if "files" in unknown
            else ""
        )
        raise ValueError(f"env: unknown key(s) {', '.join(map(repr, unknown))}; only 'pip'{hint}")
    pip = env.get("pip", ())
    if (
        isinstance(pip, str)
        or not isinstance(pip, Iterable)
        or not all(isinstance(r, str) and r.strip() for r in pip)
    ):
        raise TypeError(f'env["pip"] must be a list of requirement strings, not {pip!r}')
    return tuple(sorted({str(r).strip() for r in pip}))
