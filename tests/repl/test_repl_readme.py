"""The README's script snippet typed at the ``sperse`` prompt, in a real pseudo-terminal.

At the prompt, as under ``python``, ``p = total(...)`` binds the Pending (docs/decisions.md,
"One calling convention"): ``p.then(print)`` waits for ``p`` if it is still pending, then
runs its callback, and ``p.result(timeout=60)`` shows the value. Were ``p`` bound to the
bare value, ``p.then(print)`` would fail with ``AttributeError: 'int' object has no
attribute 'then'``. The test waits for the screen, with a deadline, never a fixed time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal import PROMPT, Terminal, running

pytestmark = pytest.mark.slow


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Terminal]:
    with running(["--workers", "1"], tmp_path / "history") as terminal:
        yield terminal


def test_readme_snippet_at_the_prompt(term: Terminal) -> None:
    assert term.enter("import sperse") == []
    # A multi-line entry: the prompt indents the body, the empty line ends it.
    term.enter("@sperse.remote(retries=1)\rdef total(rows):\rreturn sum(rows)\r")
    assert term.row_of("...     return sum(rows)") >= 0, term.text()
    term.enter("p = total(range(1000))")  # its arrival line may come before the prompt
    term.enter("p.then(print)")
    # The callback's line: printed when p has arrived (at once if it already had). A
    # traceback ends the wait too, to fail at once with the screen.
    term.wait_for(
        lambda: "499500" in term.lines() or "Traceback" in term.text(),
        what="the callback's 499500",
    )
    assert "Traceback" not in term.text(), term.text()
    callback = term.lines().index("499500")
    assert callback > term.row_of(">>> p.then(print)")

    assert term.enter("p.result(timeout=60)") == ["499500"]
    assert term.row_of(PROMPT + "p.result(timeout=60)") > callback
    assert term.enter("type(p).__name__") == ["'Pending'"]  # what Python would put there

    screen = term.text()
    assert "AttributeError" not in screen, screen
    assert "Traceback" not in screen and "Error" not in screen, screen
