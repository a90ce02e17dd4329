"""The blocks of docs/flows.md's sections on ``map_wasm``, shared state, the prompt, services
and flows that call flows run as written and print what the text says (the first blocks are
tests/examples'). Each block runs in a fresh interpreter from the repository's root, as a
reader would run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "flows.md"


def section_blocks(title: str) -> list[str]:
    """The Python blocks of the ``## title`` section of docs/flows.md."""
    text = DOC.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else None]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_block(block: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def printed_comments(block: str) -> list[str]:
    """What the block's comments say its prints show: ``print(...)  # shown``."""
    return [m.split(":")[0].strip() for m in re.findall(r"^print\(.*\)  # (.*)$", block, re.M)]


def test_the_map_wasm_block() -> None:
    (block,) = section_blocks("WebAssembly operators: `map_wasm`")
    assert run_block(block) == printed_comments(block) == ["[b'3\\n', b'42\\n']"]


def test_the_shared_state_block() -> None:
    (block,) = section_blocks("State shared by the operators of a server")
    assert run_block(block) == printed_comments(block) == ["332833500", "1"]


def test_the_prompt_block() -> None:
    (block,) = section_blocks("Flows at the prompt, and `%flows`")
    expected = ["[('cat', 1), ('dog', 1), ('the', 2)]", "[('CAT', 1), ('DOG', 1), ('THE', 2)]"]
    assert run_block(block) == printed_comments(block) == expected


def test_the_services_block() -> None:
    (block,) = section_blocks("Services")
    assert run_block(block) == [
        "{'user': 'ada', 'x': 3, 'n': 1}",
        "{'user': 'ada', 'x': 4, 'n': 2}",
        "{'user': 'ada', 'n': 3, 'v': 2}",
        "{'user': 'ada', 'n': 4, 'v': 2}",
    ]


def test_the_flows_that_call_flows_blocks() -> None:
    block, in_a_loop = section_blocks("Flows that call flows: async operators")
    assert run_block(block) == printed_comments(block) == ["25", "500"]
    assert run_block(in_a_loop) == printed_comments(in_a_loop) == ["111 299"]
