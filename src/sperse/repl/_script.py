"""``sperse run script.py``: a file through the workspace, as if typed at the prompt.

The whole file is entered with one ``Workspace.run``: local statements run in
order, remote ones return at once, statements that read pending names wait
and run by themselves. Arrivals print as they come, then the script waits for
all pending work. Like ``python script.py``, an unhandled error prints its
traceback (named after the file) and the exit status is 1; an error that
arrives later (a remote statement that failed) counts too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sperse._workspace import Workspace
from sperse.repl._session import Session

__all__ = ["run_script"]


def run_script(
    ws: Workspace,
    path: str | os.PathLike[str],
    argv: list[str] | None = None,
    *,
    quiet: bool = False,
    wait: bool = True,
    session: Session | None = None,
) -> int:
    """Run the file at ``path`` in ``ws``; the exit status a command should return.

    ``argv`` becomes ``sys.argv[1:]``; the script's directory goes first on
    ``sys.path`` as Python does. ``quiet`` hides the lines of cells that
    finish later (errors are always shown). ``wait=False`` returns without
    waiting for pending work (``sperse run -i`` hands it to the REPL).
    """
    script = Path(path)
    session = session or Session(ws, show_values=False, show_arrivals=not quiet)
    try:
        source = script.read_text(encoding="utf-8")
    except OSError as exc:
        session.error(f"sperse run: cannot read {str(script)!r}: {exc.strerror or exc}")
        return 2
    sys.argv[:] = [str(script), *(argv or [])]
    sys.path.insert(0, str(script.resolve().parent))
    ws.namespace["__file__"] = str(script)
    try:
        if not session.run(source, filename=str(script)):
            return 1
        if not wait:
            return 0
        ws.wait()
    except KeyboardInterrupt:
        session.error("KeyboardInterrupt")
        return 130
    broken = [c for c in ws.cells() if c.status in ("failed", "blocked")]
    return 1 if broken else 0
