"""Random programs: the reactive workspace agrees with a plain re-evaluation.

Each program assigns a few names from the others, some remotely, some as
updates (``x = x + k``), with redefinitions. An independent oracle evaluates
the current definitions directly. At the end every name must equal the
oracle's value, and every local run must have seen inputs that were all
current together at some point (no glitch: never a mix of old and new).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sperse

NAMES = ("a", "b", "c", "d")


@dataclass(frozen=True)
class Step:
    target: str
    refs: tuple[str, ...]
    update: bool  # also reads the previous definition of target
    k: int
    remote: bool


@dataclass
class Stmt:
    index: int
    step: Step
    prev: int | None  # the definer of target when entered (for updates)


class Oracle:
    """Evaluates current definitions directly, by recursion over a small program."""

    def __init__(self) -> None:
        self.stmts: dict[int, Stmt] = {}
        self.definer: dict[str, int] = {}
        self.history: list[dict[str, int]] = []  # definer map after each accepted step

    def add(self, index: int, step: Step) -> bool:
        stmt = Stmt(index, step, self.definer.get(step.target) if step.update else None)
        definer = {**self.definer, step.target: index}
        stmts = {**self.stmts, index: stmt}
        if self._reaches(stmts, definer, index):
            return False
        self.stmts, self.definer = stmts, definer
        self.history.append(dict(definer))
        return True

    def deps(self, stmts: dict[int, Stmt], definer: dict[str, int], index: int) -> Iterator[int]:
        stmt = stmts[index]
        for ref in stmt.step.refs:
            yield definer[ref]
        if stmt.prev is not None:
            yield stmt.prev

    def _reaches(self, stmts: dict[int, Stmt], definer: dict[str, int], start: int) -> bool:
        seen: set[int] = set()
        todo = list(self.deps(stmts, definer, start))
        while todo:
            node = todo.pop()
            if node == start:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(self.deps(stmts, definer, node))
        return False

    def inputs(self, index: int, definer: dict[str, int]) -> tuple[int, ...]:
        stmt = self.stmts[index]
        values = [self.value(definer[r], definer) for r in stmt.step.refs]
        if stmt.step.update:
            values.append(self.value(stmt.prev, definer) if stmt.prev is not None else 0)
        return tuple(values)

    def value(self, index: int, definer: dict[str, int]) -> int:
        stmt = self.stmts[index]
        return (sum(self.inputs(index, definer)) + stmt.step.k) % 1000


def source(index: int, step: Step) -> str:
    reads = list(step.refs) + ([step.target] if step.update else [])
    args = ", ".join([str(index), *reads])
    expr = f"note({args}) + ({' + '.join([*reads, str(step.k)])}) % 1000"
    return f"{step.target} = {'remote ' if step.remote else ''}{expr}"


@st.composite
def programs(draw: st.DrawFn) -> list[Step]:
    steps = []
    defined: list[str] = []
    for _ in range(draw(st.integers(1, 8))):
        target = draw(st.sampled_from(NAMES))
        refs = tuple(sorted(draw(st.sets(st.sampled_from(defined), max_size=3)))) if defined else ()
        refs = tuple(r for r in refs if r != target)
        update = target in defined and draw(st.booleans())
        steps.append(Step(target, refs, update, draw(st.integers(0, 9)), draw(st.booleans())))
        if target not in defined:
            defined.append(target)
    return steps


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=programs())
def test_random_programs_match_plain_evaluation(
    cluster: sperse.Cluster, program: list[Step]
) -> None:
    log: list[tuple[int, tuple[int, ...]]] = []

    def note(index: int, *values: int) -> int:
        log.append((index, values))  # remotely, this appends to a copy: only local runs log
        return 0

    ws = sperse.Workspace(cluster)
    ws.namespace["_note"] = note
    ws.run("note = _note")
    oracle = Oracle()
    try:
        for index, step in enumerate(program):
            try:
                ws.run(source(index, step))
                entered = True
            except sperse.CycleError:
                entered = False
            assert entered == oracle.add(index, step), source(index, step)
        ws.wait(timeout=60)
        for name, index in oracle.definer.items():
            assert ws[name] == oracle.value(index, oracle.definer), (name, ws.graph())
        for index, values in log:
            possible = {
                oracle.inputs(index, definer)
                for definer in oracle.history
                if index in oracle.stmts and _live(oracle, index, definer)
            }
            assert values in possible, (index, values, possible)
    finally:
        ws.close()


def _live(oracle: Oracle, index: int, definer: dict[str, int]) -> bool:
    """Whether statement ``index`` exists in the state ``definer`` (entered by then)."""
    return index <= max(definer.values())
