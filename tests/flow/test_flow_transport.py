"""The transport's pure rules: channels back in order, adaptive flushes, credits."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sperse._flow.host import lost_info
from sperse._flow.messages import Batch, End
from sperse._flow.transport import BatchSize, Credits, Outbox, Packed, Reorder
from sperse._serialize import dumps_oob, loads_oob
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


def test_a_buffer_past_a_delivery_s_worth_is_cut_and_weights_are_shared() -> None:
    box = Outbox(batch_items=4, linger=0.005)
    box.add((1, 0), Batch(0, 0, list(range(10)), 1, Fraction(1, 2)), now=0.0)
    box.add((1, 0), End(0, 0), now=0.0)
    parts = box.due(0.001, idle=False)  # two full deliveries; the rest waits to fill
    assert [[m.items for m in ms] for _, ms in parts] == [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]
    ((_, rest),) = box.due(0.001, idle=True)
    assert rest[0] == Batch(0, 0, [8, 9], 1, Fraction(1, 10)) and isinstance(rest[1], End)
    weights = [m.weight for _, ms in parts for m in ms] + [rest[0].weight]
    assert sum(weights) == Fraction(1, 2)  # conserved


def test_a_delivery_grows_while_its_receiver_is_fast_and_shrinks_when_slow() -> None:
    size = BatchSize(1000, 65_536)
    size.learn(1000, 0.0001)  # 0.1 µs an item: 5 ms is 50,000 items, but at most double
    assert size.items == 2000
    for _ in range(10):
        size.learn(size.items, size.items * 1e-7)
    assert size.items == 50_000
    size.learn(50_000, 0.005, size=4 << 20)  # 4 MiB: about 1 MiB is the most
    assert size.items == 12_500
    size.learn(10, 0.0001)  # small and fast: the delivery's own cost, says nothing
    assert size.items == 12_500
    size.learn(12_500, 1.0)  # slow items: back to the floor, never below
    assert size.items == 1000
    fixed = BatchSize(500, 500)
    fixed.learn(500, 1e-9)
    assert fixed.items == 500


def unpacked(messages: list[object]) -> object:
    stream, buffers, _ = dumps_oob(("channel", 0, Packed(messages), True))
    return loads_oob(stream, buffers)[2]


@pytest.mark.parametrize(
    "items",
    [
        list(range(100)),
        [("word", 3), ("é", -1.5), (None, b"x" * 10)],
        [{"a": [1, (2, 3)]}, {1, 2}, frozenset({"x"})],
        [lambda x: x + 1],  # not plain: cloudpickle, as before
        [Fraction(1, 3), True],
    ],
)
def test_a_packed_delivery_unpickles_as_its_messages(items: list[object]) -> None:
    messages = [Batch(1, 2, items, 3, Fraction(1, 7), 4.5), End(1, 2, 3), Batch(0, 0, [1])]
    out = unpacked(messages)
    assert isinstance(out, list) and len(out) == 3
    if callable(items[0]):
        assert out[0].items[0](1) == 2
    else:
        assert out == messages


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
