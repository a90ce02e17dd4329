"""The Python-function example of ``sperse submit``: one unit in, its counts out.

    sperse submit --python examples/jobs/wordcount.py:count --input DIR --output DIR

A job's function takes the bytes of one unit (an input file, or a line of stdin) and returns
bytes or str, which becomes the unit's output file. An exception fails that unit alone; it
is listed, with its traceback, in ``OUTPUT/_failed.jsonl``.
"""

from __future__ import annotations


def count(data: bytes) -> str:
    """``lines words bytes``, as ``wc`` prints them. Text that is not UTF-8 fails the unit."""
    text = data.decode("utf-8")
    return f"{len(text.splitlines())} {len(text.split())} {len(data)}\n"
