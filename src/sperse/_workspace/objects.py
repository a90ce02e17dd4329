"""Remote-object statements at the prompt: ``c = remote Counter(...)`` creates a remote
object, ``n = remote c.incr()`` calls one.

``_lang.objects`` finds the shape of such a statement; whether it is one depends on the
values its names hold here (a class made at the prompt, a remote object), which this
module checks before it creates or calls the object.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Mapping
from typing import Any

from sperse._cluster.objects import ObjectProxy, RemoteClass
from sperse._cluster.pending import Pending
from sperse._graph.graph import Action, Run
from sperse._lang.objects import object_call, object_creation
from sperse._workspace.cells import Record
from sperse._workspace.core import WorkspaceCore

__all__ = ["RemoteObjects"]


class RemoteObjects(WorkspaceCore):
    """Creating and calling remote objects from remote cells."""

    def _object_creation(
        self, record: Record, inputs: Mapping[str, Any]
    ) -> tuple[str, Any, ast.Call] | None:
        """``c = remote[db] Counter(...)`` where ``Counter`` is a class defined at the prompt
        (or a ``sperse.remote`` class): the target, the class and the call, to create a remote
        object instead of sending the instance back. Other classes (``pd.DataFrame``) are
        plain calls whose value comes back, as any remote statement's."""
        assert record.remote is not None
        shape = object_creation(record.remote.source)
        if shape is None:
            return None
        cls = inputs.get(shape.callee, self.namespace.get(shape.callee))
        made_here = isinstance(cls, type) and cls.__module__ == self.namespace["__name__"]
        if not (made_here or isinstance(cls, RemoteClass)):
            return None
        return shape.target, cls, shape.call

    def _object_call(
        self, record: Record, inputs: Mapping[str, Any]
    ) -> tuple[str, ast.expr] | None:
        """``n = remote c.incr(...)`` or ``remote c.count`` where ``c`` is a remote object: the
        target ("" for an expression) and the expression, to call the object from here (it
        lives on its server already) with the value, not the Pending, as the cell's result."""
        assert record.remote is not None
        shape = object_call(record.remote.source, is_expression=record.is_expression)
        if shape is None:
            return None
        name = shape.receiver
        if not isinstance(inputs.get(name, self.namespace.get(name)), ObjectProxy):
            return None
        return shape.target, shape.expression

    def _call_object(
        self, record: Record, run: Run, object_call: tuple[str, ast.expr]
    ) -> list[Action]:
        """Make the call of ``_object_call`` here; the cell is done with its value. Calls have
        effects, so unlike other remote cells they are made again on every run."""
        target, expression = object_call
        cell_id, run_id = record.id, run.run_id
        record.runs += 1
        record.started_at = time.monotonic()
        record.finished_at = None
        try:
            code = compile(ast.Expression(expression), record.filename, "eval")
            outcome = eval(code, dict(self.namespace))
        except Exception as exc:
            return self._fail(cell_id, run_id, exc)
        cluster = self.cluster

        def arrived(call: Pending[Any]) -> None:  # any thread: post the outcome
            error = call._error
            if error is not None:
                cluster.post(lambda: self._apply(self._fail(cell_id, run_id, error)))
                return
            record.where = call.where
            value = call._value if record.is_expression else {target: call._value}
            cluster.post(lambda: self._remote_done(cell_id, run_id, value, b""))

        if not isinstance(outcome, Pending):  # a local attribute of the proxy (`c.where`)
            outcome_pending: Pending[Any] = Pending(cluster)
            outcome_pending._settle(outcome)
            outcome = outcome_pending
        outcome._on_settle(arrived)
        return []

    def _create_object(
        self, record: Record, run: Run, creation: tuple[str, Any, ast.Call], digest: bytes
    ) -> list[Action]:
        """Create the remote object of ``_object_creation``; the cell is done once it exists,
        with the proxy as its value (arguments are evaluated here, as in a script)."""
        assert record.remote is not None
        target, cls, call = creation
        cell_id, run_id = record.id, run.run_id
        namespace = dict(self.namespace)
        try:
            args = [
                eval(compile(ast.Expression(a), record.filename, "eval"), namespace)
                for a in call.args
            ]
            kwargs = {
                k.arg: eval(compile(ast.Expression(k.value), record.filename, "eval"), namespace)
                for k in call.keywords
                if k.arg is not None
            }
        except Exception as exc:
            return self._fail(cell_id, run_id, exc)
        remote_class = cls if isinstance(cls, RemoteClass) else RemoteClass(cls)
        if str(record.remote.placement):
            remote_class = remote_class.with_placement(record.remote.placement)
        record.runs += 1
        record.started_at = time.monotonic()
        record.finished_at = None
        proxy = remote_class.create_on(self.cluster, tuple(args), kwargs)
        cluster = self.cluster

        def placed(ready: Pending[Any]) -> None:  # any thread: post the outcome
            if ready._error is not None:
                error = ready._error
                cluster.post(lambda: self._apply(self._fail(cell_id, run_id, error)))
                return
            record.where = proxy.where
            cluster.post(lambda: self._remote_done(cell_id, run_id, {target: proxy}, digest))

        proxy._when_ready(placed)
        return []
