"""The README's script snippet prints the same under ``python`` and under ``sperse run``.

The rule (docs/decisions.md, "One calling convention"): ``p = total(...)`` binds the
Pending in every front end, so ``p.then(print)`` works in both. Were ``p`` bound to the
bare value, as ``sperse run`` once did, the script would stop on
``AttributeError: 'int' object has no attribute 'then'`` and exit 1.

The REPL and Jupyter run the same statements in tests/repl/test_repl_readme.py and
tests/ipython/test_kernel_readme.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = "499500\nresult: 499500\n"
# What `sperse run` prints when a cell finishes after the prompt (hidden by -q).
ARRIVAL = re.compile(r"\[\d+\] .* ready ")

pytestmark = pytest.mark.slow


def readme_snippet() -> str:
    """The script part of the README's tour, from its ``@sperse.remote`` on, as written."""
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = block.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("@sperse.remote("))
    snippet = "".join(lines[start:])
    for statement in ("p = total(range(1000))", "p.then(print)", "p.result(timeout=60)"):
        assert statement in snippet, f"the README's snippet changed:\n{snippet}"
    return snippet


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "snippet.py"
    path.write_text(
        "import sperse\n\n" + readme_snippet() + 'print("result:", p.result(timeout=60))\n'
    )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """One process (its embedded server stops with it: it reads the server's stdin)."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "front_end",
    [
        pytest.param([], id="python"),
        pytest.param(["-m", "sperse.cli", "run", "-q", "--workers", "1"], id="sperse-run-quiet"),
    ],
)
def test_same_output(script: Path, front_end: list[str]) -> None:
    done = run(*front_end, str(script))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXPECTED
    assert done.stderr == ""


def test_sperse_run_adds_only_its_arrival_lines(script: Path) -> None:
    """Without -q, `sperse run` also shows cells that finish later; the rest is Python's."""
    done = run("-m", "sperse.cli", "run", "--workers", "1", str(script))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines(keepends=True)
    own = [line for line in lines if not ARRIVAL.match(line)]
    assert "".join(own) == EXPECTED, done.stdout
    assert done.stderr == ""
