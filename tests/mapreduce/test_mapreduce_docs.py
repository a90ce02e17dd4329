"""The Python blocks of docs/mapreduce.md run as written, in order, in a fresh process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mapreduce_doc_blocks_run_in_order() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "mapreduce.md").read_text(), re.S)
    assert len(blocks) >= 6
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[:6] == ["1.0", "5.0", "9.0", "13.0", "17.0", "21.0"]
    assert "6 3" in out and "ZeroDivisionError" in out and "[6. 6. 6.]" in out
    assert done.stderr == ""
