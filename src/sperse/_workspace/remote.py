"""Remote cells: sent to the cluster as tasks; their results are applied when they arrive.

A remote cell whose inputs have the same digest as at its last successful run is not sent
again (DESIGN.md §2 rule 7); one that creates or calls a remote object goes through
``RemoteObjects`` instead.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sperse._cluster.pending import OutputPrinter
from sperse._core import (
    BackendEvent,
    Done,
    ErrorInfo,
    Failed,
    Output,
    Started,
    StatementTask,
    TaskSpec,
)
from sperse._graph.graph import Action, Run
from sperse._serialize import describe, dumps_oob
from sperse._workspace.cells import Record
from sperse._workspace.objects import RemoteObjects
from sperse.errors import SerializationError, SperseError, did_you_mean

__all__ = ["RemoteCells"]


_NAME_ERROR = re.compile(r"name '([A-Za-z_][A-Za-z0-9_]*)' is not defined")


class RemoteCells(RemoteObjects):
    """Sending remote cells to the cluster."""

    def _submit(self, record: Record, run: Run) -> list[Action]:
        assert record.remote is not None
        inputs = {
            name: self._records[parent].outputs[name]
            for name, parent in run.inputs.items()
            if parent is not None and name in self._records[parent].outputs
        }
        try:
            digest = self._digest(record, inputs)
        except SerializationError as exc:
            return self._fail(record.id, run.run_id, exc)
        if digest == record.digest and record.error is None:
            return self._finish(record.id, run.run_id)  # same inputs: same result
        record.digest = None
        cluster = self.cluster
        creation = self._object_creation(record, inputs)
        if creation is not None:
            return self._create_object(record, run, creation, digest)
        object_call = self._object_call(record, inputs)
        if object_call is not None:
            return self._call_object(record, run, object_call)
        task_id = cluster.new_task_id()
        record.task_id = task_id
        record.runs += 1
        record.started_at = None
        record.finished_at = None
        spec = TaskSpec(
            task_id,
            StatementTask(
                record.remote.source,
                f"<cell {record.id}>",
                record.remote.first_line,
                inputs,
                tuple(sorted(record.defs)),
                record.is_expression,
            ),
            record.remote.placement,
            label=f"cell [{record.id}] `{record.label}`",
        )
        printer = OutputPrinter(cluster)
        cell_id, run_id = record.id, run.run_id

        def listen(event: BackendEvent) -> None:  # backend thread: data only, then post
            match event:
                case Started(where=where):
                    record.where = where
                    record.started_at = time.monotonic()
                    self._share_started(task_id, where)
                case Output(where=where, stream=stream, text=text):
                    printer.write(where, stream, text)
                case Done(value=value):
                    printer.flush()
                    cluster.post(lambda: self._remote_done(cell_id, run_id, value, digest))
                case Failed(where=where, error=error):
                    printer.flush()
                    exc = self._hinted(error).to_exception(spec.label, where)
                    cluster.post(lambda: self._apply(self._fail(cell_id, run_id, exc)))

        try:
            cluster.submit(spec, listen)
        except SperseError as exc:
            record.task_id = None
            return self._fail(record.id, run.run_id, exc)
        return []

    def _hinted(self, error: ErrorInfo) -> ErrorInfo:
        """A remote ``NameError`` for a name misspelt at the prompt, with Python's hint:
        the remote side cannot give it (it sees only the cell's inputs)."""
        found = _NAME_ERROR.fullmatch(error.message) if error.type_name == "NameError" else None
        if found is None:
            return error
        hint = did_you_mean(found[1], [*self.namespace, *dir(builtins)])
        return replace(error, message=f"{error.message}.{hint}") if hint else error

    def _digest(self, record: Record, inputs: Mapping[str, Any]) -> bytes:
        """A digest of what a remote cell would compute from; names the unpicklable input."""
        assert record.remote is not None
        try:
            data, buffers, _ = dumps_oob(dict(inputs))
        except SerializationError as exc:
            for name, value in inputs.items():
                try:
                    dumps_oob(value)
                except SerializationError as inner:
                    raise SerializationError(
                        f"cell [{record.id}] `{record.label}`: cannot send `{name}` "
                        f"({describe(value)}) to a remote server: {inner.__cause__}. "
                        "Create it inside the remote cell, or make it picklable."
                    ) from inner
            raise SerializationError(f"cell [{record.id}] `{record.label}`: {exc}") from exc
        h = hashlib.sha256()
        h.update(record.remote.source.encode())
        h.update(str(record.remote.placement).encode())
        h.update(data)
        for buffer in buffers:
            h.update(buffer.raw())
        return h.digest()
