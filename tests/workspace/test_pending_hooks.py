"""What runs when a ``Pending`` or ``Gate`` settles: no chain deepens the stack."""

from __future__ import annotations

import sys

import pytest

from sperse._cluster.pending import Gate, run_hooks


def test_a_chain_of_gates_runs_in_order_without_deepening_the_stack() -> None:
    # The calls of a remote object made before it exists: each is sent when the one before
    # it has gone. 10,000 of them once overflowed the stack of the thread that sent them.
    gates = [Gate() for _ in range(10_000)]
    opened: list[int] = []
    depths: list[int] = []

    def open_next(i: int, _: Gate) -> None:
        opened.append(i)
        depths.append(len(_stack()))
        gates[i + 1].open()

    for i in range(len(gates) - 1):
        gates[i]._on_settle(lambda gate, i=i: open_next(i, gate))
    gates[0].open()
    assert opened == list(range(len(gates) - 1))
    assert all(g.done() for g in gates)
    assert max(depths) - min(depths) <= 2


def _stack() -> list[object]:
    frames, frame = [], sys._getframe()
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    return frames


def test_a_hook_that_raises_does_not_stop_the_others() -> None:
    ran: list[str] = []

    def fails(_: object) -> None:
        ran.append("fails")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_hooks([fails, lambda _: ran.append("after")], None)
    assert ran == ["fails", "after"]


def test_logs_keep_the_last_characters_a_task_printed() -> None:
    from sperse._cluster import pending as _pending

    p = _pending.Pending.__new__(_pending.Pending)
    p._lock = __import__("threading").Lock()
    p._logs = []
    chunk = "x" * 1000 + "\n"
    for _ in range(3 * _pending.LOGS_KEPT // len(chunk)):
        p._keep_log("stdout", chunk)
    p._keep_log("stderr", "the end\n")
    text = p.logs()
    assert len(text) <= _pending.LOGS_KEPT + len(chunk) * 64  # bounded
    assert text.endswith(chunk + "the end\n") and p.logs("stderr") == "the end\n"
    p._keep_log("stdout", "y" * (2 * _pending.LOGS_KEPT))  # one huge chunk: its tail
    assert len(p.logs()) == _pending.LOGS_KEPT and p.logs().endswith("y")
