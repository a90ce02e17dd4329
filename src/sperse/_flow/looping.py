"""Pure pieces of a replica inside a loop (:mod:`sperse._flow.replica`): a per-item gate's
decision, and how items awaiting an async operator's calls hold their loop's weight.

Weight (a per-item loop's termination, by weight throwing: see the replica's docstring) is
conserved: whatever a replica takes in, it passes on in what it sends or reports returned.
An async operator heading a body stage takes a batch's items and sends nothing until their
calls end, so the batch's weight is split over its items (:func:`split`: dyadic shares,
summing to the whole exactly) and each item's share is its tag in the operator
(:mod:`sperse._flow.awaits`). When calls end, the shares of the items released go on with
the batches they make (:func:`by_round`), or come back as returned if they make none.
So the loop is never found empty while an item in it awaits a call.

Splitting by powers of two keeps every weight a dyadic fraction whose denominator only
grows by the bits of the batch size per trip: the controller's sums stay cheap, where
splitting by the item count would make their denominators the products of many batch
sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sperse._exec.runner import short_repr
from sperse._flow.ops import ItemError

__all__ = ["GateSplit", "by_round", "gate", "split"]


def split(weight: Fraction, parts: int) -> list[Fraction]:
    """``weight`` in ``parts`` positive shares that sum to it exactly: each ``weight / 2^b``
    (the least power of two at least ``parts``), the last share taking the rest."""
    if parts <= 0:
        return []
    share = weight / (1 << (parts - 1).bit_length())
    return [share] * (parts - 1) + [weight - share * (parts - 1)]


def by_round(released: list[tuple[Any, Any]]) -> list[tuple[int, list[Any], Fraction | None]]:
    """Results an async operator released, each tagged ``(round, weight)``, as runs of one
    round each, in order: ``(round, results, the sum of their weights or None)``."""
    runs: list[tuple[int, list[Any], Fraction | None]] = []
    for out, (rnd, weight) in released:
        if runs and runs[-1][0] == rnd:
            _, items, total = runs[-1]
            items.append(out)
            if total is not None:
                runs[-1] = (rnd, items, total + weight)
        else:
            runs.append((rnd, [out], weight))
    return runs


@dataclass(frozen=True, slots=True)
class GateSplit:
    """What a per-item gate does with a batch: items that ``leave`` the loop, go round
    ``again``, and how many were dropped past ``max_rounds`` (``example``: one of them)."""

    leave: list[Any]
    again: list[Any]
    exceeded: int
    example: str


def gate(items: list[Any], rnd: int, until: Callable[[Any], Any], max_rounds: int) -> GateSplit:
    """Test ``until`` on each of ``items`` (in round ``rnd``); an error names the item."""
    leave, again, exceeded, example = [], [], 0, ""
    item = None
    try:
        for item in items:
            if until(item):
                leave.append(item)
            elif rnd >= max_rounds:
                exceeded += 1
                example = example or short_repr(item)
            else:
                again.append(item)
    except Exception as exc:
        raise ItemError(item, exc) from exc
    return GateSplit(leave, again, exceeded, example)
