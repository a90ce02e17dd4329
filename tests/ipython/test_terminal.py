"""Terminal IPython (``python -m IPython``), fed a session on its standard input.

Each input is a cell, as typed at the prompt. Terminal IPython has no event loop to wake
while it waits for input, so arrivals show up around cells and inside ``%wait``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_kernel import kernel_env

pytestmark = pytest.mark.slow

SESSION = """\
%load_ext sperse
import time
def slow(n):
    time.sleep(0.5)
    return n

x = remote slow(2)
y = x * 10
%wait y
y + 1
n = remote[nosuchtag] slow(1)
print("still", "here")
"""


def test_remote_statements_in_terminal_ipython(tmp_path: Path) -> None:
    args = ["--simple-prompt", "--no-banner", "--no-confirm-exit", "--colors=nocolor"]
    done = subprocess.run(
        [sys.executable, "-m", "IPython", *args],
        input=SESSION,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=kernel_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "<pending x: submitted>" in out
    assert "<pending y: waiting for x>" in out
    assert "y = 20" in out
    assert "Out[7]: 21" in out
    assert "NoMatchingServer: cell [6] `n = remote[nosuchtag] slow(1)`: no server matches" in out
    assert "Traceback" not in out
    assert "still here" in out
