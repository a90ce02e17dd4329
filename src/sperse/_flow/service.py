"""Services: a flow whose source is requests and whose sink answers them (pure).

A service flow (``f.requests()`` ... ``respond()``) carries each request through its
operators as an :class:`Envelope`: the request's return address (``client``: the client
session's id; ``rid``: the request's id in it) beside its value. Operators never see the
envelope: the replica runs each of a service's operators through :class:`Enveloped`, which
hands the operator one value at a time and puts what it returns back into the envelope. So
``map``, ``key_by``, ``scan`` (keyed state across requests) work as they do in any flow.

Invariants
----------
- One envelope in, one envelope out, at every operator: a service's operators are the
  one-to-one kinds (:data:`SERVICE_KINDS`; the plan refuses others), so every request gets
  exactly one answer.
- An operator that raises on a request fails that request only: the envelope carries the
  failure (``failed``) past the operators after it, to the respond sink, which answers the
  client with it. The service goes on.
- Keyed partitioning hashes the value's key, as in any flow, so the requests of one key
  meet the one replica that keeps its state, in the order they came on each channel: the
  requests of one key from one client are answered in order.
- The respond sink's replica turns envelopes into :class:`Answer` values for its shell,
  which gets them to the client (the in-process executor calls the service; on servers,
  the respond replica's host keeps them for the client's long poll).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sperse._core import ErrorInfo
from sperse._exec.runner import encode_error, short_repr
from sperse._flow.messages import FlowError
from sperse._flow.ops import Ctx, ItemError, Op, SinkValue

__all__ = [
    "Answer",
    "Envelope",
    "Enveloped",
    "Idempotency",
    "Moved",
    "Remember",
    "Reply",
    "Respond",
    "Swap",
    "envelope_key",
    "failure",
    "swap",
]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A request as it travels: its return address, its value as the operators made it so
    far, and the failure that ended it, if any. ``key``: its idempotency key (or None);
    ``answered``: a retry answered from the first request's answer (``value``/``failed``),
    which no operator touches. ``depth``: 0 for a client's request, d + 1 for one sent from
    inside an async operator's call serving a request of depth d (:mod:`sperse._flow.awaits`)."""

    client: str
    rid: int
    value: Any
    failed: FlowError | None = None
    key: Any = None
    answered: bool = False
    depth: int = 0

    @property
    def done(self) -> bool:
        return self.failed is not None or self.answered


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer of request ``rid`` of ``client``: ``value``, or ``error``."""

    client: str
    rid: int
    value: Any = None
    error: FlowError | None = None
    key: Any = None  # the idempotency key of a first answer, to remember (else None)


@dataclass(frozen=True, slots=True)
class Reply:
    """A respond replica's action: send these answers to their clients."""

    answers: list[Answer]


def envelope_key(envelope: Envelope) -> Any:
    """What a key-hash edge hashes: the key of a keyed value; a failed request (which no
    operator touches any more) by its id."""
    if envelope.done:
        return envelope.rid
    return envelope.value[0]


class Enveloped(Op):
    """Operator ``inner`` run on the values of envelopes, one request at a time (so that a
    failure is the request's alone)."""

    __slots__ = ("inner",)

    def __init__(self, inner: Op) -> None:
        super().__init__(inner.name)
        self.inner = inner

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        inner, out = self.inner, list[Any]()
        for env in items:
            if env.done:
                out.append(env)
                continue
            try:
                got = inner.on_batch(port, [env.value], ctx)
            except ItemError as exc:
                out.append(replace(env, failed=failure(self.name, env.value, exc)))
                continue
            if len(got) != 1:
                what = (
                    f"gave {len(got)} outputs for one request: in a service, an operator "
                    "gives one output per request"
                )
                wrong = ItemError(env.value, message=what)
                out.append(replace(env, failed=failure(self.name, env.value, wrong)))
                continue
            out.append(replace(env, value=got[0]))
        return out


class Respond(Op):
    """``respond()``: each envelope becomes an :class:`Answer`, taken by the replica."""

    __slots__ = ("answers",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.answers: list[Answer] = []

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        self.answers.extend(
            Answer(env.client, env.rid, env.value, env.failed, None if env.answered else env.key)
            for env in items
        )
        return []

    def finish(self, ctx: Ctx) -> SinkValue:
        return SinkValue(None)

    def take(self) -> list[Answer]:
        out, self.answers = self.answers, []
        return out


@dataclass(frozen=True, slots=True)
class Swap:
    """To every replica of operator ``operator``: use ``fn`` from the next request on,
    keeping its keyed state (``Service.update``)."""

    operator: str
    fn: Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Moved:
    """A reshaped service's answer to a long poll of a host that answers no more: take the
    answers from ``responds`` (the hosts of the respond replicas of reshape ``epoch``).

    After a server was lost (the last time, if ever): ``lost`` is the last delivery of each
    client's channel that the requests replica had taken when the service was quiesced to
    replace the lost replicas. A client's request sent in one of those deliveries and not
    answered once its polls of the respond replicas before ``epoch`` have ended was lost
    with the server: ``why`` says how; ``retry``: it may be sent again (no operator up to
    the lost ones keeps state)."""

    epoch: int
    responds: list[Any]
    lost: dict[str, int] | None = None
    why: str = ""
    retry: bool = False


@dataclass(frozen=True, slots=True)
class Remember:
    """To a requests replica: the first answers of requests with idempotency keys."""

    answers: list[Answer]


class Idempotency:
    """A requests replica's memory of idempotency keys: the first request with a key goes
    on; a retry while it is in flight waits for its answer; a retry after it is answered
    with that answer, without running the operators again. The newest ``keep`` keys are
    remembered."""

    __slots__ = ("_done", "_keep", "_waiting")

    def __init__(self, keep: int = 100_000) -> None:
        self._keep = keep
        self._waiting: dict[Any, list[Envelope]] = {}
        self._done: dict[Any, tuple[Any, FlowError | None]] = {}

    def arrive(self, items: list[Any]) -> list[Any]:
        """What goes on of the requests ``items``."""
        out: list[Any] = []
        for env in items:
            key = env.key
            if key is None:
                out.append(env)
            elif key in self._done:
                value, error = self._done[key]
                out.append(replace(env, value=value, failed=error, answered=True))
            elif key in self._waiting:
                self._waiting[key].append(env)
            else:
                self._waiting[key] = []
                out.append(env)
        return out

    def answered(self, answers: list[Answer]) -> list[Envelope]:
        """Remember first answers; the retries that waited for them, answered."""
        out: list[Envelope] = []
        for answer in answers:
            self._done[answer.key] = (answer.value, answer.error)
            out.extend(
                replace(env, value=answer.value, failed=answer.error, answered=True)
                for env in self._waiting.pop(answer.key, [])
            )
        while len(self._done) > self._keep:
            del self._done[next(iter(self._done))]
        return out

    def forget_in_flight(self) -> None:
        """Forget the keys whose first request is in flight (a server was lost: it may
        never be answered); a retry of such a key runs as a first request. The requests
        that waited for them were lost too, and their clients are told so."""
        self._waiting.clear()


def swap(ops: list[Op], event: Swap) -> None:
    """Give the operator named ``event.operator`` among ``ops`` its new function."""
    for op in ops:
        if op.name == event.operator:
            inner = op.inner if isinstance(op, Enveloped) else op
            if not hasattr(inner, "fn"):
                raise ValueError(f"{event.operator}: this operator has no function to swap")
            inner.fn = event.fn


def failure(operator: str, item: Any, exc: ItemError) -> FlowError:
    """The failure of ``operator`` on ``item`` as data, for the request's answer."""
    if exc.cause is None:
        info = ErrorInfo("internal", "FlowFailed", exc.message)
    else:
        info = encode_error(exc.cause)
    return FlowError(operator, short_repr(item), info, exc.message)
