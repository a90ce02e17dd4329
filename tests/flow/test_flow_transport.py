"""The transport's pure rules: channels back in order, adaptive flushes, credits."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sperse._flow.host import lost_info
from sperse._flow.messages import Batch, End
from sperse._flow.transport import Credits, Outbox, Reorder
from sperse.errors import ObjectLost, ServerLost, ServerUnavailable, WorkerDied


@given(st.permutations(range(20)), st.permutations(range(20)))
def test_reorder_gives_each_channel_in_sequence(a: list[int], b: list[int]) -> None:
    reorder: Reorder[tuple[str, int]] = Reorder()
    out: list[tuple[str, int]] = []
    for x, y in zip(a, b, strict=True):
        out += reorder.put("a", x, ("a", x))
        out += reorder.put("b", y, ("b", y))
    assert [v for c, v in out if c == "a"] == list(range(20))
    assert [v for c, v in out if c == "b"] == list(range(20))
    assert reorder.held() == 0


def test_reorder_refuses_a_delivery_twice() -> None:
    reorder: Reorder[int] = Reorder()
    reorder.put("a", 0, 0)
    with pytest.raises(ValueError, match="twice"):
        reorder.put("a", 0, 0)


def test_outbox_flushes_when_full_old_or_idle() -> None:
    box = Outbox(batch_items=10, linger=0.005)
    box.add((1, 0), Batch(0, 0, list(range(4))), now=0.0)
    assert box.due(0.001, idle=False) == []
    box.add((1, 0), Batch(0, 0, list(range(6))), now=0.001)
    ((dest, messages),) = box.due(0.001, idle=False)  # full: 10 items
    assert dest == (1, 0) and len(messages) == 1 and len(messages[0].items) == 10  # merged
    box.add((1, 1), Batch(0, 0, [1]), now=1.0)
    assert box.due(1.001, idle=False) == []
    assert len(box.due(1.006, idle=False)) == 1  # old
    box.add((1, 1), End(0, 0), now=2.0)
    assert len(box.due(2.0, idle=True)) == 1  # idle
    assert box.pending() == 0


def test_outbox_merges_loop_weights_and_keeps_order() -> None:
    box = Outbox()
    box.add((2, 0), Batch(0, 0, [1], 1, Fraction(1, 2)), now=0)
    box.add((2, 0), Batch(0, 0, [2], 1, Fraction(1, 4)), now=0)
    box.add((2, 0), End(0, 0), now=0)
    box.add((2, 0), Batch(0, 0, [3], 2, Fraction(1, 4)), now=0)
    ((_, messages),) = box.due(0, idle=True)
    assert messages[0] == Batch(0, 0, [1, 2], 1, Fraction(3, 4))
    assert isinstance(messages[1], End)
    assert messages[2] == Batch(0, 0, [3], 2, Fraction(1, 4))


def test_credits_block_at_the_window_and_free_on_ack() -> None:
    credits = Credits(window=2)
    a, b = credits.send("x"), credits.send("x")
    assert credits.blocked("x") and not credits.blocked("y")
    credits.ack("x", a)
    assert not credits.blocked("x")
    credits.send("x", credited=False)  # a feedback edge: numbered, never blocks
    assert credits.outstanding("x") == 1 and credits.most == 2
    credits.ack("x", b)
    assert credits.outstanding("x") == 0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ServerLost("gone"), "server_lost"),
        (ServerUnavailable("nothing listens at 127.0.0.1:1"), "server_lost"),  # killed, redialled
        (ObjectLost("gone"), "object_lost"),
        (WorkerDied("killed"), "worker_died"),
        (ValueError("bad"), "raised"),
    ],
)
def test_a_host_that_cannot_be_reached_is_lost_and_may_be_run_again(
    error: BaseException, kind: str
) -> None:
    assert lost_info(error).kind == kind
