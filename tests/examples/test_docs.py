"""The Python blocks of README.md and docs/ run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def run_blocks(blocks: list[str], prelude: str = "") -> str:
    code = prelude + "\n".join(blocks)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_tour_runs() -> None:
    (block,) = python_blocks(ROOT / "README.md")
    checks = (
        "\nassert ws['y'] == 101\nassert p.result(timeout=60) == 499500\nsperse.current().drain()\n"
    )
    out = run_blocks([block + checks])
    assert "499500" in out  # printed by the then() callback, on this thread


def test_workspace_doc_first_block_runs() -> None:
    first = python_blocks(ROOT / "docs" / "workspace.md")[0]
    run_blocks([first + "\nassert ws['b'] == 11\n"])


def test_workspace_doc_blocks_run_in_order() -> None:
    blocks = python_blocks(ROOT / "docs" / "workspace.md")
    run_blocks([*blocks, "assert ws['n'] == 100 and ws['m'] == 495.0 and ws2['m'] == 45\n"])


def test_server_doc_blocks_run() -> None:
    blocks = python_blocks(ROOT / "docs" / "server.md")
    assert len(blocks) == 3
    # The env= block installs from a package index: tests/remote/test_env.py runs the same
    # calls with a wheel built on the spot instead.
    assert 'env={"pip"' in blocks[2]
    run_blocks(blocks[:2])


def test_state_doc_blocks_run() -> None:
    blocks = python_blocks(ROOT / "docs" / "state.md")
    out = run_blocks(blocks).splitlines()
    assert out == [
        "(100, 60, 20)",
        "[2, 0]",
        "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
        "1",
        "['index', 'owner:job-1', 'queue']",
        "[0, 1, 2, 3, 4, 5]",
        "True",
    ]


def test_objects_doc_blocks_run() -> None:
    outputs = [run_blocks([block]) for block in python_blocks(ROOT / "docs" / "objects.md")]
    assert len(outputs) == 3
    counter, tally, callbacks = outputs
    assert counter.splitlines()[:2] == ["[11, 12, 13, 14, 15]", "15"]
    assert tally.splitlines() == ["3", "['a', 'b', 'c']"]
    assert callbacks.splitlines() == ["trained", "['1/3', '2/3', '3/3']"]


def test_testing_doc_blocks_run() -> None:
    path = ROOT / "docs" / "testing.md"
    blocks = python_blocks(path)
    assert len(blocks) == 3
    outputs = [run_blocks([block]) for block in blocks]
    printed = re.findall(r"\nprints\n\n```\n(.*?)```", path.read_text(), flags=re.S)
    assert outputs[:2] == printed  # what the doc says each block prints
    assert outputs[2] == ""


def test_flows_doc_first_block_runs() -> None:
    first = python_blocks(ROOT / "docs" / "flows.md")[0]
    prelude = "lines = ['the cat', 'the dog']\n"
    check = "\nassert out.result(0) == {'the': 2, 'cat': 1, 'dog': 1}\n"
    run_blocks([first + check], prelude)


def test_flows_doc_servers_block_runs() -> None:
    block = next(b for b in python_blocks(ROOT / "docs" / "flows.md") if "LocalCluster" in b)
    printed = run_blocks([block])
    assert printed.splitlines()[0] == "[('a', 1000), ('b', 2000), ('c', 2000)]"
