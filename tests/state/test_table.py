"""The store's pure table (``sperse._state.table``) without sockets or processes: tables of
requests and the replies they get, and properties of random interleavings (Hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sperse._state.table import (
    WRITE_APART,
    BadRequest,
    Holder,
    Reply,
    Request,
    Table,
    Value,
    read_reply,
    wire_value,
)
from sperse._state.wire import DOUBLE, REPLY, ErrorCode, Kind, Op, Status, int_bytes

MAX_VALUE = 64


class Shell:
    """What a store does around the table: one request in flight per holder, the rest
    queued behind it; replies recorded per holder, in the order they came."""

    def __init__(self) -> None:
        self.replies: dict[Holder, list[tuple[int, int, object]]] = {}
        self.queued: dict[Holder, list[Request[Holder]]] = {}
        self.table: Table[Holder] = Table(MAX_VALUE, self._reply, self._resumed)

    def holder(self) -> Holder:
        h = Holder()
        self.replies[h] = []
        self.queued[h] = []
        return h

    def send(self, holder: Holder, op: int, key: bytes = b"k", *values: Value) -> None:
        self.queued[holder].append(Request(holder, op, key, list(values)))
        self._serve(holder)

    def _serve(self, holder: Holder) -> None:
        queue = self.queued[holder]
        while queue and not holder.parked and not holder.closed:
            self.table.request(queue.pop(0))

    def _reply(self, holder: Holder, reply: Reply) -> None:
        data = reply if isinstance(reply, bytes) else b"".join(reply)
        status, kind, length = REPLY.unpack_from(data)
        body = data[REPLY.size : REPLY.size + length]
        value: object = body
        if status == Status.OK and kind == Kind.INT:
            value = int.from_bytes(body, "big", signed=True)
        elif status == Status.OK and kind == Kind.FLOAT:
            value = DOUBLE.unpack(body)[0]
        elif status == Status.OK and kind == Kind.MISSING:
            value = None
        self.replies[holder].append((status, kind, value))

    def _resumed(self, holder: Holder) -> None:
        self._serve(holder)

    def last(self, holder: Holder) -> tuple[int, int, object]:
        return self.replies[holder][-1]


OK, ERR = Status.OK, Status.ERROR

# (requests as (op, values...), the reply of the last one)
SINGLE_HOLDER = [
    ([(Op.GET,)], (OK, Kind.MISSING, None)),
    ([(Op.SET, 5), (Op.GET,)], (OK, Kind.INT, 5)),
    ([(Op.SET, 2.5), (Op.GET,)], (OK, Kind.FLOAT, 2.5)),
    ([(Op.INCR, 3), (Op.INCR, 4)], (OK, Kind.INT, 7)),
    ([(Op.SET, b"pickle"), (Op.INCR, 1)], (ERR, ErrorCode.TYPE, None)),
    ([(Op.SET, b"x" * (MAX_VALUE + 1))], (ERR, ErrorCode.TOO_LARGE, None)),
    ([(Op.SETDEFAULT, 1), (Op.SETDEFAULT, 2)], (OK, Kind.INT, 1)),
    ([(Op.SET, 1), (Op.CAS, 1, 2), (Op.GET,)], (OK, Kind.INT, 2)),
    ([(Op.SET, 1), (Op.CAS, 1.0, 2)], (OK, Kind.INT, 1)),  # numbers compare as numbers
    ([(Op.SET, b"a"), (Op.CAS, 97, b"b")], (OK, Kind.INT, 0)),  # pickles by their bytes
    ([(Op.DELETE,)], (OK, Kind.INT, 0)),
    ([(Op.SET, 1), (Op.DELETE,)], (OK, Kind.INT, 1)),
    ([(Op.LOCK_GET,), (Op.LOCK_GET,)], (ERR, ErrorCode.LOCK, None)),  # not twice
    ([(Op.UNLOCK,)], (ERR, ErrorCode.LOCK, None)),  # not held
    ([(Op.ONCE_GET,), (Op.SET_UNLOCK, 9), (Op.ONCE_GET,)], (OK, Kind.INT, 9)),
]


@pytest.mark.parametrize(("requests", "expected"), SINGLE_HOLDER)
def test_one_holder(requests: list[tuple[int, ...]], expected: tuple[int, int, object]) -> None:
    shell = Shell()
    h = shell.holder()
    for op, *values in requests:
        shell.send(h, op, b"k", *values)
    status, kind, value = shell.last(h)
    assert (status, kind) == expected[:2]
    if expected[2] is not None or status == Status.OK:
        assert value == expected[2]
    assert len(shell.replies[h]) == len(requests)  # one reply each


def test_a_write_waits_for_the_lock_and_goes_on_when_it_is_released() -> None:
    shell = Shell()
    a, b = shell.holder(), shell.holder()
    shell.send(a, Op.LOCK_GET)
    shell.send(b, Op.INCR, b"k", 1)
    shell.send(b, Op.GET)  # behind the parked write
    assert b.parked and shell.replies[b] == []
    shell.send(a, Op.SET_UNLOCK, b"k", 10)
    assert shell.replies[b] == [(OK, Kind.INT, 11), (OK, Kind.INT, 11)]
    assert shell.table.locks == 0 and shell.table.waiting == 0


def test_a_dropped_holder_releases_its_locks_to_the_next_in_line() -> None:
    shell = Shell()
    a, b, c = shell.holder(), shell.holder(), shell.holder()
    shell.send(a, Op.LOCK_GET)
    shell.send(b, Op.LOCK_GET)
    shell.send(c, Op.LOCK_GET)
    shell.table.drop(a)  # its worker died
    assert shell.replies[b] == [(OK, Kind.MISSING, None)] and c.parked
    shell.send(b, Op.UNLOCK)
    assert shell.replies[c] == [(OK, Kind.MISSING, None)] and not c.parked


def test_a_parked_request_of_a_dropped_holder_is_skipped() -> None:
    shell = Shell()
    a, b, c = shell.holder(), shell.holder(), shell.holder()
    shell.send(a, Op.LOCK_GET)
    shell.send(b, Op.SET, b"k", 1)
    shell.send(c, Op.SET, b"k", 2)
    shell.table.drop(b)
    shell.send(a, Op.UNLOCK)
    assert shell.replies[b] == []
    shell.send(c, Op.GET)
    assert shell.last(c) == (OK, Kind.INT, 2)


@pytest.mark.parametrize(
    "request_",
    [(99, []), (Op.SET, []), (Op.CAS, [1]), (Op.GET, [1])],
    ids=["unknown op", "set without a value", "cas with one", "get with one"],
)
def test_a_request_that_cannot_be_one_is_refused_and_changes_nothing(
    request_: tuple[int, list[Value]],
) -> None:
    shell = Shell()
    h = shell.holder()
    op, values = request_
    with pytest.raises(BadRequest):
        shell.table.request(Request(h, op, b"k", values))
    assert shell.replies[h] == [] and shell.table.keys == 0 and shell.table.ops == 0


def test_the_holder_of_a_lock_is_whom_its_waiters_wait_for() -> None:
    shell = Shell()
    a, b = shell.holder(), shell.holder()
    assert shell.table.lock_holder(b"k") is None
    shell.send(a, Op.LOCK_GET)
    shell.send(b, Op.LOCK_GET)
    assert shell.table.lock_holder(b"k") is a
    shell.send(a, Op.UNLOCK)
    assert shell.table.lock_holder(b"k") is b  # the next in line has it now
    shell.table.drop(b)
    assert shell.table.lock_holder(b"k") is None


@pytest.mark.parametrize(
    ("kind", "data", "value"),
    [
        (Kind.INT, int_bytes(-(2**70)), -(2**70)),
        (Kind.FLOAT, DOUBLE.pack(2.5), 2.5),
        (Kind.PICKLE, b"\x80pickle", b"\x80pickle"),
    ],
)
def test_a_value_as_the_wire_carries_it_is_the_tables(kind: int, data: bytes, value: Value) -> None:
    assert wire_value(kind, data) == value
    assert type(wire_value(kind, data)) is type(value)


@pytest.mark.parametrize("size", [3, WRITE_APART])  # joined, and (header, data)
def test_a_reply_reads_back_as_status_kind_and_bytes(size: int) -> None:
    answers: list[Reply] = []
    table: Table[Holder] = Table(
        WRITE_APART, lambda _, answer: answers.append(answer), lambda _: None
    )
    h = Holder()
    for op, values in [(Op.SET, [b"x" * size]), (Op.GET, []), (Op.UNLOCK, [])]:
        table.request(Request(h, op, b"k", list[Value](values)))
    _, value, refused = answers
    assert isinstance(value, bytes) == (size < WRITE_APART)
    assert read_reply(value) == (OK, Kind.PICKLE, b"x" * size)
    status, code, message = read_reply(refused)
    assert (status, code) == (ERR, ErrorCode.LOCK) and b"not locked" in message


def test_counts_follow_what_is_held() -> None:
    shell = Shell()
    h = shell.holder()
    shell.send(h, Op.SET, b"a", b"xyz")
    shell.send(h, Op.SET, b"b", 1)
    assert (shell.table.keys, shell.table.bytes) == (2, 3 + 8)
    shell.send(h, Op.SET, b"a", b"x")
    shell.send(h, Op.DELETE, b"b")
    assert (shell.table.keys, shell.table.bytes, shell.table.ops) == (1, 1, 4)


_ops = st.sampled_from(
    [
        (Op.GET, ()),
        (Op.INCR, (1,)),
        (Op.SET, (5,)),
        (Op.LOCK_GET, ()),
        (Op.ONCE_GET, ()),
        (Op.UNLOCK, ()),
        (Op.SET_UNLOCK, (3,)),
        (Op.DELETE, ()),
        ("drop", ()),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([b"a", b"b"]), _ops), max_size=40))
def test_every_request_of_a_live_holder_is_answered_once_in_order(
    steps: list[tuple[int, bytes, tuple[object, tuple[Value, ...]]]],
) -> None:
    """Whatever three holders do: a lock has one owner, a holder that is not parked has
    had every request answered, and once every holder is gone no lock is left."""
    shell = Shell()
    holders = [shell.holder() for _ in range(3)]
    sent = dict.fromkeys(holders, 0)
    for index, key, (op, values) in steps:
        h = holders[index]
        if h.closed:
            continue
        if op == "drop":
            shell.table.drop(h)
            continue
        assert isinstance(op, int)
        shell.send(h, op, key, *values)
        sent[h] += 1
        owners = [x for x in holders if key in x.held]
        assert len(owners) <= 1
    for h in holders:
        if not h.closed and not h.parked and not shell.queued[h]:
            assert len(shell.replies[h]) == sent[h]
        assert len(shell.replies[h]) <= sent[h]
    for h in holders:
        shell.table.drop(h)
    assert shell.table.locks == 0
