"""DESIGN.md §2 rule 9 at the prompt, in a real terminal: a statement that changes an object
it reads is not applied again to a new object; the prompt says so; %run_stale applies it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal import Terminal, running

pytestmark = pytest.mark.slow


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Terminal]:
    with running(["--local", "--workers", "1"], tmp_path / "history") as terminal:
        yield terminal


def test_a_mutation_is_not_reapplied_to_a_new_object(term: Terminal) -> None:
    term.enter("import numpy as np")
    term.enter("x = np.arange(5)")
    term.enter("x[0] = 99")
    assert term.enter("x") == ["array([99,  1,  2,  3,  4])"]
    term.enter("x = np.zeros(3)")
    term.wait_text("`x[0] = 99` not re-applied to the new x")
    assert term.enter("x") == ["array([0., 0., 0.])"]  # the new x is untouched
    term.enter("%run_stale")
    assert term.enter("x") == ["array([99.,  0.,  0.])"]  # applied on request
    assert "Traceback" not in term.text(), term.text()
