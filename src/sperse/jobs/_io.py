"""A job's inputs and outputs on the client's disk.

Inputs are streamed: a directory is walked lazily (``os.scandir``, nothing but the stack
of open directories is held), stdin is read line by line, and a unit's bytes are read only
when it is about to be sent. Memory stays bounded whatever the number of inputs.

Outputs are never seen half-written: each is written to a file in ``OUTPUT/.sperse-partial/``
and renamed into place (``os.replace``, atomic on POSIX). A unit whose output file exists is
done: a re-run of the same job skips it. Failed units are appended to
``OUTPUT/_failed.jsonl`` as they fail, one JSON object a line, so the list survives a
client that is killed. Not durable across a power cut: files are not fsync'ed, which
would cost a disk flush per unit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

__all__ = [
    "FAILED_LIST",
    "PARTIAL_DIR",
    "DirectoryInput",
    "LinesInput",
    "OutputDir",
    "Unit",
]

FAILED_LIST: Final = "_failed.jsonl"
PARTIAL_DIR: Final = ".sperse-partial"


@dataclass(slots=True, eq=False)
class Unit:
    """One unit of work: its name (the output's relative path) and where its bytes are."""

    name: str
    path: str | None = None  # read when sent (a directory's file)
    data: bytes | None = None  # held (a line of stdin)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as f:
            return f.read()


class DirectoryInput:
    """Every regular file under ``root`` (recursively) is a unit named by its relative
    path. Hidden names (a leading dot) are skipped, symbolic links to directories are not
    followed, and ``exclude`` (the output directory, when it lies inside) is left out."""

    def __init__(self, root: str, exclude: str | None = None) -> None:
        self.root = root
        self._exclude = os.path.realpath(exclude) if exclude else None

    def __iter__(self) -> Iterator[Unit]:
        for rel, path in self._walk():
            yield Unit(rel, path=path)

    def count(self) -> int:
        return sum(1 for _ in self._walk())

    def _walk(self) -> Iterator[tuple[str, str]]:
        stack: list[tuple[str, str]] = [(self.root, "")]
        while stack:
            directory, prefix = stack.pop()
            if self._exclude is not None and os.path.realpath(directory) == self._exclude:
                continue
            try:
                entries = os.scandir(directory)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    rel = prefix + entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, rel + "/"))
                        elif entry.is_file():
                            yield rel, entry.path
                    except OSError:
                        continue


class LinesInput:
    """Each non-empty line of a binary stream (or any iterable of bytes lines) is a unit
    (without its line ending), named by its line number, zero-padded to eight digits:
    ``00000001``, ``00000002``, ..."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[Unit]:
        for number, line in enumerate(self._stream, 1):
            data = line.rstrip(b"\r\n")
            if data:
                yield Unit(f"{number:08d}", data=data)


class OutputDir:
    """The output directory: which units are done, atomic writes, the list of failures."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.partial = os.path.join(root, PARTIAL_DIR)
        self.failed_list = os.path.join(root, FAILED_LIST)
        self._names = itertools.count()
        self._failed: IO[str] | None = None

    def prepare(self) -> None:
        """Create the directory; drop what an interrupted run left half-written and the
        previous list of failures (this run tries those units again)."""
        os.makedirs(self.root, exist_ok=True)
        shutil.rmtree(self.partial, ignore_errors=True)
        os.makedirs(self.partial)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.failed_list)

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def done(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.root, name))

    def write(self, name: str, data: bytes) -> str:
        """Write ``data`` as the output of ``name``, all of it or nothing. Returns the path."""
        target = os.path.join(self.root, name)
        temporary = os.path.join(self.partial, str(next(self._names)))
        with open(temporary, "wb") as f:
            f.write(data)
        try:
            os.replace(temporary, target)
        except FileNotFoundError:  # its subdirectory does not exist yet
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(temporary, target)
        return target

    def record_failure(self, record: dict[str, Any]) -> None:
        if self._failed is None:
            self._failed = open(self.failed_list, "a", encoding="utf-8")  # noqa: SIM115
        self._failed.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._failed.flush()

    def close(self) -> None:
        if self._failed is not None:
            self._failed.close()
            self._failed = None
        with contextlib.suppress(OSError):
            os.rmdir(self.partial)  # only if empty: nothing is lost


def is_reserved(name: str) -> bool:
    """Names the job itself uses in the output directory."""
    return name == FAILED_LIST or name.split("/", 1)[0] == PARTIAL_DIR
