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

from dataclasses import dataclass, replace
from typing import Any

from sperse._core import ErrorInfo
from sperse._exec.runner import encode_error, short_repr
from sperse._flow.messages import FlowError
from sperse._flow.ops import Ctx, ItemError, Op, SinkValue

__all__ = ["Answer", "Envelope", "Enveloped", "Reply", "Respond", "envelope_key"]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A request as it travels: its return address, its value as the operators made it so
    far, and the failure that ended it, if any. ``key``: its idempotency key (or None)."""

    client: str
    rid: int
    value: Any
    failed: FlowError | None = None
    key: Any = None


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer of request ``rid`` of ``client``: ``value``, or ``error``."""

    client: str
    rid: int
    value: Any = None
    error: FlowError | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A respond replica's action: send these answers to their clients."""

    answers: list[Answer]


def envelope_key(envelope: Envelope) -> Any:
    """What a key-hash edge hashes: the key of a keyed value; a failed request (which no
    operator touches any more) by its id."""
    if envelope.failed is not None:
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
            if env.failed is not None:
                out.append(env)
                continue
            try:
                got = inner.on_batch(port, [env.value], ctx)
            except ItemError as exc:
                out.append(replace(env, failed=_failure(self.name, env.value, exc)))
                continue
            if len(got) != 1:
                what = (
                    f"gave {len(got)} outputs for one request: in a service, an operator "
                    "gives one output per request"
                )
                wrong = ItemError(env.value, message=what)
                out.append(replace(env, failed=_failure(self.name, env.value, wrong)))
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
        self.answers.extend(Answer(env.client, env.rid, env.value, env.failed) for env in items)
        return []

    def finish(self, ctx: Ctx) -> SinkValue:
        return SinkValue(None)

    def take(self) -> list[Answer]:
        out, self.answers = self.answers, []
        return out


def _failure(operator: str, item: Any, exc: ItemError) -> FlowError:
    if exc.cause is None:
        info = ErrorInfo("internal", "FlowFailed", exc.message)
    else:
        info = encode_error(exc.cause)
    return FlowError(operator, short_repr(item), info, exc.message)
