"""A batch job from Python: ``submit_job`` returns at once; results come as units finish.

Run it from the repository root: ``.venv/bin/python examples/jobs/api.py``. It counts the
words of a few generated files with ``wordcount.count``, on an embedded cluster.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from wordcount import count  # beside this file: the script's directory is on sys.path

import sperse
from sperse.jobs import submit_job


def main() -> None:
    sperse.connect(workers=2)  # an embedded server with two worker processes
    with tempfile.TemporaryDirectory() as work:
        inputs = Path(work, "in")
        inputs.mkdir()
        for i in range(1, 21):
            (inputs / f"doc{i:02d}.txt").write_text("word " * i)
        (inputs / "latin1.txt").write_bytes(b"caf\xe9")  # not UTF-8: this unit fails

        job = submit_job(python=count, input=inputs, output=Path(work, "out"), timeout=10)
        for result in job.as_completed(timeout=60):  # as units finish
            if not result.ok:
                print(f"{result.name} failed: {result.error}")
        summary = job.wait()
        print(summary.report().splitlines()[0])
        print("doc07.txt:", Path(work, "out", "doc07.txt").read_text().strip())


if __name__ == "__main__":
    main()
