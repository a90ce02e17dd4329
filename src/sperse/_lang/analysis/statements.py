"""Visitors of statements: assignments, imports and control flow (``if``, loops, ``with``,
``try``, ``match``), with the definite-assignment joins the rules of ``analysis`` ask for.
"""

from __future__ import annotations

import ast

from sperse._lang.analysis.walker import CLASS, FUNCTION, MODULE, State, Walker
from sperse.errors import StatementError

__all__ = ["Statements"]


class Statements(Walker):
    """Statement visitors."""

    __slots__ = ()

    def visit_Expr(self, node: ast.Expr) -> None:
        self.visit(node.value)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        self._visit_all(node.targets)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        target = node.target
        if isinstance(target, ast.Name):
            self._load(target.id)
            self.visit(node.value)
            self._store(target.id)
        else:
            self.visit(target)  # the object is read; attributes and items are not tracked
            self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        target = node.target
        if node.value is not None:
            self.visit(node.value)
            self.visit(target)
        elif not isinstance(target, ast.Name):
            self.visit(target)  # `x.a: int` evaluates `x`; `x[i]: int` evaluates x and i
        # Python evaluates the annotation last. (In a function body it never does; the
        # read is kept there too, as symtable counts it: harmless, and sound under any
        # compiler flags.)
        self.visit(node.annotation)

    def visit_Delete(self, node: ast.Delete) -> None:
        self._visit_all(node.targets)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._store(alias.asname or alias.name.partition(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                raise _star_import_error(node)
            self._store(alias.asname or alias.name)

    def visit_Global(self, node: ast.Global) -> None:
        if self._scope.kind != MODULE:
            self._scope.globals.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        if self._scope.kind != MODULE:
            self._scope.nonlocals.update(node.names)

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None:
            self.visit(node.value)
        self._alive = False

    def visit_Raise(self, node: ast.Raise) -> None:
        if node.exc is not None:
            self.visit(node.exc)
        if node.cause is not None:
            self.visit(node.cause)
        self._alive = False

    def visit_Break(self, node: ast.Break) -> None:
        if self._breaks:
            self._breaks[-1].append(self._flow.copy())
        self._alive = False

    def visit_Continue(self, node: ast.Continue) -> None:
        self._alive = False

    def visit_Assert(self, node: ast.Assert) -> None:
        # `python -O` removes asserts, so a walrus in one binds nothing for sure.
        self._conditional([node.test] if node.msg is None else [node.test, node.msg])

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        flow = self._flow
        start = flow.copy()
        self._visit_all(node.body)
        after_body = (flow.copy(), self._alive)
        self._reset(start)
        self._visit_all(node.orelse)
        self._merge([after_body])

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self._loop(None, node.target, node.body, node.orelse)

    visit_AsyncFor = visit_For

    def visit_While(self, node: ast.While) -> None:
        self._loop(node.test, None, node.body, node.orelse)

    def _loop(
        self,
        test: ast.expr | None,
        target: ast.expr | None,
        body: list[ast.stmt],
        orelse: list[ast.stmt],
    ) -> None:
        flow = self._flow
        before = flow.copy()
        mark = len(self._del_log)
        start = before
        breaks: list[set[str]] = []
        for attempt in (0, 1):
            if test is not None:
                self.visit(test)
            start = flow.copy()
            self._breaks.append([])
            if target is not None:
                self.visit(target)
            self._visit_all(body)
            breaks = self._breaks.pop()
            deleted = self._del_log[mark:]
            if attempt or not deleted:
                break
            # A name the body deletes may be gone when the next iteration starts: walk
            # the loop again without it.
            self._reset(before.difference(deleted))
        # The loop ends when the iterator is exhausted (or the test is false), perhaps
        # before the first iteration; then the `else` clause runs.
        self._reset(start)
        self._visit_all(orelse)
        if test is not None and _always_true(test):
            self._alive = False
        self._merge([(names, True) for names in breaks])

    def _with(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.visit(item.optional_vars)
        start = self._flow.copy()
        mark = len(self._del_log)
        self._visit_all(node.body)
        # `__exit__` may suppress an exception raised anywhere in the body.
        self._reset(start.difference(self._del_log[mark:]))

    visit_With = _with
    visit_AsyncWith = _with

    def _try(self, node: ast.Try | ast.TryStar) -> None:
        flow = self._flow
        start = flow.copy()
        mark = len(self._del_log)
        self._visit_all(node.body)
        ends: list[State] = []
        if node.handlers:
            after_body = flow.copy(), self._alive
            # A handler may start after any part of the body has run.
            handler_start = start.difference(self._del_log[mark:])
            for handler in node.handlers:
                self._reset(handler_start)
                if handler.type is not None:
                    self.visit(handler.type)
                if handler.name is not None:
                    self._bind_handler_name(handler.name)
                self._visit_all(handler.body)
                if handler.name is not None:
                    self._unbind_handler_name(handler.name)
                ends.append((flow.copy(), self._alive))
            flow.clear()
            flow.update(after_body[0])
            self._alive = after_body[1]
        self._visit_all(node.orelse)
        self._merge(ends)
        if node.finalbody:
            after, after_alive = flow.copy(), self._alive
            # `finally` may start after any part of the rest has run.
            self._reset(start.difference(self._del_log[mark:]))
            finally_start = flow.copy()
            finally_mark = len(self._del_log)
            self._visit_all(node.finalbody)
            added = flow.difference(finally_start)
            finally_alive = self._alive
            flow.clear()
            flow.update(after)
            flow.update(added)
            flow.difference_update(self._del_log[finally_mark:])
            self._alive = after_alive and finally_alive

    visit_Try = _try
    visit_TryStar = _try

    def _bind_handler_name(self, name: str) -> None:
        # Bound for the handler only: Python deletes it at the end, so it is no def.
        scope = self._scope
        if scope.kind == FUNCTION:
            scope.bound.add(name)
        else:
            if scope.kind == CLASS:
                scope.bound.add(name)
            self._flow.add(name)

    def _unbind_handler_name(self, name: str) -> None:
        if self._scope.kind != FUNCTION:
            self._flow.discard(name)
            self._del_log.append(name)

    def visit_Match(self, node: ast.Match) -> None:
        self.visit(node.subject)
        flow = self._flow
        start = flow.copy()
        ends: list[State] = []
        exhaustive = False
        for case in node.cases:
            self._reset(start)
            captures: list[str] = []
            self._pattern(case.pattern, captures)
            for name in captures:  # Python binds captures once the whole pattern matched
                self._store(name)
            if case.guard is not None:
                self.visit(case.guard)
            self._visit_all(case.body)
            ends.append((flow.copy(), self._alive))
            if case.guard is None and _irrefutable(case.pattern):
                exhaustive = True  # the compiler rejects any case after this one
        if exhaustive:
            ends.pop()  # the current point is the end of that last case
        else:
            self._reset(start)  # no case matched
        self._merge(ends)

    def _pattern(self, pattern: ast.pattern, captures: list[str]) -> None:
        if isinstance(pattern, ast.MatchValue):
            self.visit(pattern.value)
        elif isinstance(pattern, ast.MatchAs):
            if pattern.pattern is not None:
                self._pattern(pattern.pattern, captures)
            if pattern.name is not None:
                captures.append(pattern.name)
        elif isinstance(pattern, ast.MatchSequence | ast.MatchOr):
            for sub in pattern.patterns:
                self._pattern(sub, captures)
        elif isinstance(pattern, ast.MatchStar):
            if pattern.name is not None:
                captures.append(pattern.name)
        elif isinstance(pattern, ast.MatchMapping):
            self._visit_all(pattern.keys)
            for sub in pattern.patterns:
                self._pattern(sub, captures)
            if pattern.rest is not None:
                captures.append(pattern.rest)
        elif isinstance(pattern, ast.MatchClass):
            self.visit(pattern.cls)
            for sub in pattern.patterns:
                self._pattern(sub, captures)
            for sub in pattern.kwd_patterns:
                self._pattern(sub, captures)
        # MatchSingleton reads nothing and binds nothing.


def _irrefutable(pattern: ast.pattern) -> bool:
    if isinstance(pattern, ast.MatchAs):
        return pattern.pattern is None or _irrefutable(pattern.pattern)
    if isinstance(pattern, ast.MatchOr):
        return any(_irrefutable(sub) for sub in pattern.patterns)
    return False


def _always_true(test: ast.expr) -> bool:
    return isinstance(test, ast.Constant) and bool(test.value)


def _star_import_error(node: ast.ImportFrom) -> StatementError:
    module = "." * node.level + (node.module or "")
    advice = f"name the imports (`from {module} import a, b`)"
    if node.level == 0 and node.module:
        advice += f" or import the module (`import {module}`) and write `{module}.a`"
    return StatementError(
        f"`from {module} import *` cannot be tracked: the workspace cannot know which "
        f"names it binds without importing {module}, so it could not tell which cells "
        f"read them. Instead, {advice}."
    )
