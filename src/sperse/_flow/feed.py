"""A source fed from the client (``source(iterable)``, ``queue()``) for the server executor:
read a batch at a time, each batch dealt to the next replica of the source's stage.

Reads go through ``itertools.islice`` over the iterable itself (a ``range`` or a list gives
its items in C), not through a generator of ours: an item costs nanoseconds, not the
resumption of a Python frame. With ``keep`` (a run that may start again), what was read
from an iterator or a queue is kept, to be read again first by the next attempt.

:func:`read_share` is a ``read_lines`` source replica's share of its files, read on its own
server by its host.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sperse._flow.local import PushQueue
from sperse._flow.plan import Node, Stage

__all__ = ["READ_BATCH", "ClientFeed", "read_share"]

READ_BATCH = 1 << 18  # characters a host reads from its files at a time (a batch of lines)


class ClientFeed:
    """The source ``node`` of ``stage``, read from this process (see the module docstring)."""

    def __init__(self, node: Node, stage: Stage, keep: bool) -> None:
        self.node = node
        self.stage = stage
        self.push: PushQueue | None = node.args[1] if node.args[0] == "queue" else None
        source = node.args[1]
        once = self.push is not None or iter(source) is source
        self._log: list[Any] | None = [] if keep and once else None
        self._source = source
        self._iter: Iterator[Any] | None = iter(source) if once and self.push is None else None
        self._closed = False  # the push queue ended (seen once)
        self.begin()

    def begin(self) -> None:
        """Start reading from the beginning (a new attempt)."""
        self.turn = 0
        self.ended = False
        log = list(self._log) if self._log is not None else []
        self._again = len(log)  # items of the log still to give again
        source: Iterator[Any] = iter(())
        if self.push is None:
            source = self._iter if self._iter is not None else iter(self._source)
        self.items: Iterator[Any] = itertools.chain(log, source)

    def read(self, limit: int) -> tuple[list[Any], bool]:
        """Up to ``limit`` items without waiting, and whether the source has ended."""
        items = list(itertools.islice(self.items, limit))
        if self._log is not None and self.push is None and len(items) > self._again:
            self._log.extend(items[self._again :])
        self._again = max(0, self._again - len(items))
        if self.push is None:
            return items, len(items) < limit
        if len(items) == limit:
            return items, False
        if self._closed:
            return items, True
        more, ended = self.push.take(limit - len(items), 0)
        if self._log is not None:
            self._log.extend(more)
        self._closed = ended
        return items + more, ended


def read_share(path: Path, index: int, replicas: int) -> Iterator[list[str]]:
    """Replica ``index``'s share of ``path`` (every ``replicas``-th file in name order), as
    batches of lines without their ``\n``: the lines ``for line in file`` gives, cut in C
    from ``READ_BATCH`` characters at a time (universal newlines, as text files read)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files[index::replicas]:
        with file.open(encoding="utf-8") as f:
            pieces: list[str] = []  # of a line not ended yet
            while chunk := f.read(READ_BATCH):
                if "\n" not in chunk:
                    pieces.append(chunk)
                    continue
                lines = chunk.split("\n")
                if pieces:
                    lines[0] = "".join(pieces) + lines[0]
                rest = lines.pop()  # "" after a last "\n"
                pieces = [rest] if rest else []
                yield lines
            if pieces:
                yield ["".join(pieces)]
