"""Statement analysis: which global names one top-level statement binds and reads.

The reactive workspace (DESIGN §2) makes every statement the user enters a cell. To link
cells into a graph it needs, for each statement, its ``defs`` (the global names it may
bind) and its ``refs`` (the global names it may read before it has bound them itself).
This module computes both from the statement's ``ast`` in one pass, without ``compile`` or
``symtable``, so that analysing a statement costs microseconds.

The rules, and why:

- **Sound before precise.** A missing ref is a bug (a cell would not re-run when its input
  changes, or would run before the input exists); an extra ref only adds a dependency. So
  wherever the analysis cannot be sure, it reports the ref.
- **Refs are flow-sensitive.** ``x = 1; y = x`` inside one compound statement does not read
  a global ``x``. A definite-assignment ("must") analysis decides it: a name counts as bound
  at a point only if it is bound on every path to that point. An ``if`` binds what both
  branches bind; a loop body may run zero times; an ``except`` handler may start after any
  part of its ``try`` body; a ``with`` body may be cut short by a context manager that
  suppresses an exception; the right operand of ``and``/``or``, the branches of ``x if c
  else y``, later links of a chained comparison, an ``assert`` (gone under ``-O``) and all
  but the first iterable of a comprehension may not run, so a walrus inside them binds
  only conditionally. Code after ``return``/``raise``/``break``/``continue`` is dead, so an
  ``if`` whose other branch raises still binds what the live branch binds.
- **Deferred code reads later.** Function and lambda bodies (and classes nested in them)
  run when called, after the whole statement has run, so their free global names are refs
  except names the statement itself defines: ``def f(n): return f(n - 1)`` does not read
  ``f``. Decorators, defaults and annotations are read when the ``def`` runs. Assignments
  after ``global g`` in a function happen only when it is called, so they are not defs.
- **Class bodies run at once** in their own namespace: names they bind are class-local
  (not defs); names they read before binding them are refs. Methods and comprehensions in
  a class body do not see the class namespace (Python skips it), except the first
  iterable of a comprehension, which is evaluated in the class body.
- **Type parameters** (PEP 695: ``def f[T]``, ``class C[T]``, ``type A[T] = ...``) live in
  an annotation scope of their own: they are seen by the annotations, bases, keywords and
  body of their function or class, never outside it (decorators and argument defaults are
  evaluated outside), so they are no refs. Bounds, constraints and defaults of type
  parameters and the value of a ``type`` statement are evaluated lazily, when first used,
  so they read like deferred code; the ``type`` statement defines its name. Code in an
  annotation scope right inside a class sees the class namespace: annotations as it is
  when the ``def`` runs, lazy parts as it is when the class body has finished. A generic
  class body that reads a name it binds only later reads the global, not the type
  parameter (``class C[T]: x = T; T = 1``), as any class body does.
- **Comprehension variables never leak**; a walrus in a comprehension binds in the
  enclosing function, or at top level is a def of the statement.
- **Builtins are not refs** unless the caller says the workspace has shadowed them
  (``shadowed``), as after ``len = 3``. Defining a builtin name is still a def.
- **What is not tracked.** Mutation (``x.a = 1``, ``x[0] = 1``, ``x.append(1)``) reads
  ``x`` but does not define it (DESIGN §2 rule 8). ``from m import *`` binds names that
  cannot be known without importing ``m``, so it is refused with ``StatementError``.
- ``except E as e`` binds ``e`` only inside the handler (Python deletes it afterwards), so
  ``e`` is not a def. ``del x`` at top level reads ``x``, and its name is in ``defs`` and
  ``deletes`` (a statement that may delete ``x`` is the last word on ``x``); ``deletes``
  lists every name that a ``del`` at top level may remove, also under a condition.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Any, Final

from sperse.errors import StatementError

__all__ = ["StatementInfo", "analyze"]

_BUILTINS: Final = frozenset(vars(builtins))

_MODULE: Final = 0
_FUNCTION: Final = 1
_CLASS: Final = 2
_COMPREHENSION: Final = 3
_ANNOTATION: Final = 4  # the scope of PEP 695 type parameters; `bound` holds them
_LAZY: Final = 5  # a bound, constraint or default of a type parameter, or a `type` value


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """The global names one top-level statement may bind, read and delete."""

    defs: frozenset[str]
    """Global names the statement may bind (``del x`` counts: it decides what ``x`` is)."""
    refs: frozenset[str]
    """Global names the statement may read before it has definitely bound them itself."""
    deletes: frozenset[str]
    """Names a ``del`` at top level may remove; each is also in ``defs``."""
    is_expression: bool
    """The statement is an expression statement, whose value a front end shows."""
    effect: bool = False
    """The statement changes an object it reads: it assigns or deletes an item or an
    attribute (``x[0] = 99``, ``df.col = v``, ``x[i] += 1``, ``del d[k]``) outside the
    bodies of functions and classes it defines. Re-runs repeat derivations, not effects
    (DESIGN.md §2 rule 9): the workspace holds such a statement when its inputs change.
    Method calls that mutate (``lst.append(v)``) are not seen (rule 8)."""


def analyze(stmt: ast.stmt, *, shadowed: Container[str] = frozenset()) -> StatementInfo:
    """Return the defs, refs and deletes of one top-level statement.

    ``shadowed`` holds the builtin names that the workspace currently defines itself;
    reading one of them is a ref, reading any other builtin is not.

    Raises ``StatementError`` for a statement the workspace cannot track
    (``from m import *``).
    """
    analyzer = _Analyzer(shadowed)
    analyzer.visit(stmt)
    return analyzer.result(isinstance(stmt, ast.Expr))


class _Scope:
    """One Python scope met while walking the statement.

    ``bound`` holds the names bound in the scope (for a comprehension, its loop
    variables; for an annotation scope, its type parameters). ``assigned`` is the
    definite-assignment state of a module or class body at the current point of the walk.
    ``uses`` holds names read in a function body, or in a class body that is deferred or
    generic, that are resolved when the scope closes, once all its bindings are known;
    ``lazy_uses``, names that lazily evaluated code reads from a class namespace, which
    are resolved against what the class body has bound when it ends.
    """

    __slots__ = (
        "assigned",
        "bound",
        "deferred",
        "globals",
        "kind",
        "lazy_uses",
        "nonlocals",
        "parent",
        "uses",
    )

    def __init__(self, kind: int, parent: _Scope | None, deferred: bool) -> None:
        self.kind = kind
        self.parent: _Scope = self if parent is None else parent
        self.deferred = deferred
        self.bound: set[str] = set()
        self.assigned: set[str] = set()
        self.uses: set[str] = set()
        self.lazy_uses: set[str] = set()
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()


# A point of the control flow: the names definitely bound there, and whether it is live
# (reachable). Dead points take no part in joins.
_State = tuple[set[str], bool]


class _Analyzer:
    """A single walk over one statement; see the module docstring for the rules."""

    __slots__ = (
        "_alive",
        "_breaks",
        "_deferred",
        "_defs",
        "_del_log",
        "_deletes",
        "_effect",
        "_flow",
        "_module",
        "_refs",
        "_scope",
        "_shadowed",
    )

    def __init__(self, shadowed: Container[str]) -> None:
        self._shadowed = shadowed
        self._module = _Scope(_MODULE, None, deferred=False)
        self._scope = self._module
        # The definite-assignment set of the innermost module, class or function body,
        # changed in place so that scopes holding it see every update.
        self._flow = self._module.assigned
        self._alive = True
        # One list per enclosing loop of the current body: the states at its `break`s.
        self._breaks: list[list[set[str]]] = []
        # Every name unbound by `del` (or at the end of an `except ... as`), in order; a
        # loop or `try` uses the slice written while it ran.
        self._del_log: list[str] = []
        self._defs: set[str] = set()
        self._refs: set[str] = set()
        self._deletes: set[str] = set()
        # Global names read by deferred code, kept until the statement's defs are known.
        self._deferred: set[str] = set()
        self._effect = False  # an item or attribute stored or deleted at top level

    def result(self, is_expression: bool) -> StatementInfo:
        defs = self._defs
        refs = self._refs
        shadowed = self._shadowed
        for name in self._deferred:
            if name not in defs and (name not in _BUILTINS or name in shadowed):
                refs.add(name)
        return StatementInfo(
            defs=frozenset(defs),
            refs=frozenset(refs),
            deletes=frozenset(self._deletes),
            is_expression=is_expression,
            effect=self._effect,
        )

    # -- dispatch -------------------------------------------------------------------

    def visit(self, node: ast.AST) -> None:
        _DISPATCH[type(node)](self, node)

    def _visit_all(self, nodes: Iterable[ast.AST]) -> None:
        dispatch = _DISPATCH
        for node in nodes:
            dispatch[type(node)](self, node)

    def _generic(self, node: ast.AST) -> None:
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    def _ignore(self, node: ast.AST) -> None:
        pass

    # -- names ----------------------------------------------------------------------

    def _load(self, name: str) -> None:
        scope = self._scope
        kind = scope.kind
        if kind == _MODULE:
            if name not in self._flow and (name not in _BUILTINS or name in self._shadowed):
                self._refs.add(name)
        elif kind == _FUNCTION:
            scope.uses.add(name)
        else:
            self._resolve(name, scope, False, scope.deferred)

    def _resolve(self, name: str, scope: _Scope, skip_class: bool, deferred: bool) -> None:
        """Resolve a read of ``name`` that was not local, starting at ``scope``."""
        lazy = False
        while True:
            kind = scope.kind
            if kind == _FUNCTION:
                scope.uses.add(name)  # resolved when that function closes
                return
            if kind == _ANNOTATION:
                if name in scope.bound:
                    return  # a type parameter
            elif kind == _LAZY:
                lazy = True
            elif kind == _COMPREHENSION:
                if name in scope.bound:
                    return
                skip_class = True  # a comprehension body does not see a class namespace
            elif kind == _CLASS and not skip_class:
                if name in scope.globals:
                    break
                if name not in scope.nonlocals:
                    if lazy:
                        scope.lazy_uses.add(name)  # resolved when the class body closes
                        return
                    if name in scope.assigned:
                        return
                    if scope.deferred or scope.parent.kind == _ANNOTATION:
                        scope.uses.add(name)  # resolved when the class body closes
                        return
                skip_class = True
            elif kind == _MODULE:
                break
            scope = scope.parent
        self._global_read(name, deferred)

    def _global_read(self, name: str, deferred: bool) -> None:
        if deferred:
            self._deferred.add(name)
        elif name not in self._module.assigned and (
            name not in _BUILTINS or name in self._shadowed
        ):
            self._refs.add(name)

    def _store(self, name: str) -> None:
        self._store_in(self._scope, name)

    def _store_in(self, scope: _Scope, name: str) -> None:
        kind = scope.kind
        if kind == _MODULE:
            self._defs.add(name)
            scope.assigned.add(name)
        elif kind == _FUNCTION:
            scope.bound.add(name)
        elif kind == _CLASS:
            if name in scope.globals:
                # Binds the module global now (or, in a deferred class, when it runs).
                # Not recorded as definitely assigned: rare, and imprecise is sound.
                if not scope.deferred:
                    self._defs.add(name)
            elif name not in scope.nonlocals:
                scope.bound.add(name)
                scope.assigned.add(name)
        # A comprehension's own bindings are its loop variables, known in advance.

    def _delete(self, name: str) -> None:
        scope = self._scope
        kind = scope.kind
        if kind == _MODULE:
            self._load(name)
            self._defs.add(name)
            self._deletes.add(name)
            self._flow.discard(name)
            self._del_log.append(name)
        elif kind == _FUNCTION:
            scope.bound.add(name)
        elif kind == _CLASS:
            if name in scope.globals:
                self._resolve(name, scope, False, scope.deferred)
                if not scope.deferred:
                    self._defs.add(name)
                    self._deletes.add(name)
            elif name not in scope.nonlocals:
                scope.bound.add(name)
                self._flow.discard(name)
                self._del_log.append(name)

    def visit_Name(self, node: ast.Name) -> None:
        ctx = type(node.ctx)
        if ctx is ast.Load:
            self._load(node.id)
        elif ctx is ast.Store:
            self._store(node.id)
        else:
            self._delete(node.id)

    # -- control flow helpers -------------------------------------------------------

    def _reset(self, state: set[str]) -> None:
        """Continue from ``state``, a live point."""
        flow = self._flow
        flow.clear()
        flow.update(state)
        self._alive = True

    def _merge(self, others: list[_State]) -> None:
        """Join the current point with ``others``: keep what every live one binds."""
        flow = self._flow
        live = [names for names, alive in others if alive]
        if not self._alive:
            if live:
                flow.clear()
                flow.update(live.pop())
                self._alive = True
            else:  # nothing after this is reachable; stay conservative anyway
                live = [names for names, _ in others]
        for names in live:
            flow.intersection_update(names)

    def _conditional(self, nodes: Iterable[ast.AST]) -> None:
        """Visit expressions that may not run: what they bind is not definite after."""
        flow = self._flow
        before = flow.copy()
        self._visit_all(nodes)
        if len(flow) != len(before):  # expressions only ever add names
            flow.intersection_update(before)

    # -- statements -----------------------------------------------------------------

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
        if self._scope.kind != _MODULE:
            self._scope.globals.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        if self._scope.kind != _MODULE:
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
        ends: list[_State] = []
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
        if scope.kind == _FUNCTION:
            scope.bound.add(name)
        else:
            if scope.kind == _CLASS:
                scope.bound.add(name)
            self._flow.add(name)

    def _unbind_handler_name(self, name: str) -> None:
        if self._scope.kind != _FUNCTION:
            self._flow.discard(name)
            self._del_log.append(name)

    def visit_Match(self, node: ast.Match) -> None:
        self.visit(node.subject)
        flow = self._flow
        start = flow.copy()
        ends: list[_State] = []
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

    # -- functions and classes ------------------------------------------------------

    def _function_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        # Evaluated when the `def` runs, in this order: decorators, defaults, annotations.
        self._visit_all(node.decorator_list)
        args = node.args
        self._defaults(args)
        outer = self._type_params(getattr(node, "type_params", []))
        for arg in (*args.args, *args.posonlyargs):
            if arg.annotation is not None:
                self.visit(arg.annotation)
        if args.vararg is not None and args.vararg.annotation is not None:
            self.visit(args.vararg.annotation)
        for arg in args.kwonlyargs:
            if arg.annotation is not None:
                self.visit(arg.annotation)
        if args.kwarg is not None and args.kwarg.annotation is not None:
            self.visit(args.kwarg.annotation)
        if node.returns is not None:
            self.visit(node.returns)
        self._function_body(args, node.body)
        self._scope = outer
        self._store(node.name)

    visit_FunctionDef = _function_def
    visit_AsyncFunctionDef = _function_def

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._defaults(node.args)
        self._function_body(node.args, [node.body])

    def _defaults(self, args: ast.arguments) -> None:
        self._visit_all(args.defaults)
        for default in args.kw_defaults:
            if default is not None:
                self.visit(default)

    def _function_body(self, args: ast.arguments, body: list[ast.stmt] | list[ast.expr]) -> None:
        scope = _Scope(_FUNCTION, self._scope, deferred=True)
        bound = scope.bound
        for arg in args.posonlyargs:
            bound.add(arg.arg)
        for arg in args.args:
            bound.add(arg.arg)
        for arg in args.kwonlyargs:
            bound.add(arg.arg)
        if args.vararg is not None:
            bound.add(args.vararg.arg)
        if args.kwarg is not None:
            bound.add(args.kwarg.arg)
        saved = self._scope, self._flow, self._alive, self._breaks
        self._scope, self._flow, self._alive, self._breaks = scope, scope.assigned, True, []
        self._visit_all(body)
        self._scope, self._flow, self._alive, self._breaks = saved
        if not scope.uses:
            return
        # Every binding of the body is known now: what is not local is free.
        parent = scope.parent
        global_names = scope.globals
        nonlocal_names = scope.nonlocals
        for name in scope.uses:
            if name in global_names:
                self._deferred.add(name)
            elif name not in bound or name in nonlocal_names:
                self._resolve(name, parent, True, True)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._visit_all(node.decorator_list)
        outer = self._type_params(getattr(node, "type_params", []))
        self._visit_all(node.bases)
        for keyword in node.keywords:
            self.visit(keyword.value)
        scope = _Scope(_CLASS, self._scope, deferred=self._scope.deferred)
        saved = self._scope, self._flow, self._alive, self._breaks
        self._scope, self._flow, self._alive, self._breaks = scope, scope.assigned, True, []
        self._visit_all(node.body)
        self._scope, self._flow, self._alive, self._breaks = saved
        # Reads a deferred or generic class body made before binding the name: a name the
        # body binds somewhere is looked up in the globals; any other goes to the
        # enclosing type parameters or function first.
        deferred = scope.deferred
        for name in scope.uses:
            if name in scope.bound:
                self._global_read(name, deferred)
            else:
                self._resolve(name, scope.parent, True, deferred)
        # Lazy code sees the class namespace as the body left it.
        for name in scope.lazy_uses:
            if name not in scope.assigned:
                self._resolve(name, scope.parent, True, True)
        self._scope = outer
        self._store(node.name)

    def visit_TypeAlias(self, node: Any) -> None:  # ast.TypeAlias, Python 3.12+
        outer = self._type_params(node.type_params)
        self._lazy([node.value])
        self._scope = outer
        self.visit(node.name)

    def _type_params(self, params: list[Any]) -> _Scope:
        """Enter the annotation scope of PEP 695 type parameters, if there are any.

        Returns the scope to restore once the function, class or alias is done.
        """
        outer = self._scope
        if not params:
            return outer
        scope = _Scope(_ANNOTATION, outer, deferred=outer.deferred)
        scope.bound.update(param.name for param in params)
        self._scope = scope
        lazy: list[ast.expr] = []
        for param in params:
            for field in ("bound", "default_value"):  # default_value: Python 3.13+
                value = getattr(param, field, None)
                if value is not None:
                    lazy.append(value)
        self._lazy(lazy)
        return outer

    def _lazy(self, nodes: list[ast.expr]) -> None:
        """Visit expressions that Python evaluates later, when they are first used."""
        if not nodes:
            return
        outer = self._scope
        self._scope = _Scope(_LAZY, outer, deferred=True)
        self._visit_all(nodes)
        self._scope = outer

    # -- expressions ----------------------------------------------------------------

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        # A walrus binds in the nearest scope that is not a comprehension.
        scope = self._scope
        while scope.kind == _COMPREHENSION:
            scope = scope.parent
        self._store_in(scope, node.target.id)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        values = node.values
        self.visit(values[0])
        self._conditional(values[1:])

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        flow = self._flow
        start = flow.copy()
        self.visit(node.body)
        after_body = None
        if len(flow) != len(start):
            after_body = flow.copy()
            flow.intersection_update(start)
        self.visit(node.orelse)
        flow.intersection_update(start if after_body is None else after_body)

    def visit_Compare(self, node: ast.Compare) -> None:
        self.visit(node.left)
        comparators = node.comparators
        self.visit(comparators[0])
        if len(comparators) > 1:  # `a < b < c` evaluates `c` only if `a < b`
            self._conditional(comparators[1:])

    def visit_Call(self, node: ast.Call) -> None:
        self.visit(node.func)
        self._visit_all(node.args)
        for keyword in node.keywords:
            self.visit(keyword.value)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if type(node.ctx) is not ast.Load:
            self._note_effect()
        self.visit(node.value)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if type(node.ctx) is not ast.Load:
            self._note_effect()
        self.visit(node.value)
        self.visit(node.slice)

    def _note_effect(self) -> None:
        """An item or attribute is stored or deleted: an effect of the statement when this
        runs now (at top level, or in a comprehension there), not in a function or class
        body it defines (``StatementInfo.effect``)."""
        scope = self._scope
        while scope.kind == _COMPREHENSION and scope.parent is not scope:
            scope = scope.parent
        if scope.kind == _MODULE:
            self._effect = True

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self.visit(node.left)
        self.visit(node.right)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        self.visit(node.operand)

    def visit_Starred(self, node: ast.Starred) -> None:
        self.visit(node.value)

    def visit_Tuple(self, node: ast.Tuple | ast.List | ast.Set) -> None:
        self._visit_all(node.elts)

    visit_List = visit_Tuple
    visit_Set = visit_Tuple

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if key is not None:  # None is a `**mapping`
                self.visit(key)
            self.visit(value)

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> None:
        self._comprehension(node.generators, (node.elt,))

    visit_SetComp = visit_ListComp
    visit_GeneratorExp = visit_ListComp  # analysed as if consumed at once: sound

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node.generators, (node.key, node.value))

    def _comprehension(
        self, generators: list[ast.comprehension], elts: tuple[ast.expr, ...]
    ) -> None:
        # The first iterable is evaluated in the enclosing scope, the rest in the
        # comprehension's own scope, maybe never (the first may be empty).
        self.visit(generators[0].iter)
        scope = _Scope(_COMPREHENSION, self._scope, deferred=self._scope.deferred)
        for generator in generators:
            _target_names(generator.target, scope.bound)
        flow = self._flow
        start = flow.copy()
        outer = self._scope
        self._scope = scope
        for index, generator in enumerate(generators):
            if index:
                self.visit(generator.iter)
            self.visit(generator.target)
            self._visit_all(generator.ifs)
        self._visit_all(elts)
        self._scope = outer
        if len(flow) != len(start):
            flow.intersection_update(start)


def _target_names(target: ast.expr, names: set[str]) -> None:
    """Add the plain names an assignment target binds."""
    if isinstance(target, ast.Name):
        names.add(target.id)
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            _target_names(element, names)
    elif isinstance(target, ast.Starred):
        _target_names(target.value, names)


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


# Nodes that read and bind nothing: contexts, operators, constants, `pass`.
_INERT: Final = (
    ast.expr_context,
    ast.operator,
    ast.boolop,
    ast.cmpop,
    ast.unaryop,
    ast.Constant,
    ast.Pass,
)


def _build_dispatch() -> dict[type[ast.AST], Callable[[_Analyzer, Any], None]]:
    """Map every ast node type to its visitor, so a visit is one dict lookup."""
    table: dict[type[ast.AST], Callable[[_Analyzer, Any], None]] = {}
    pending: list[type[ast.AST]] = [ast.AST]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        method = getattr(_Analyzer, "visit_" + cls.__name__, None)
        if method is not None:
            table[cls] = method
        elif issubclass(cls, _INERT):
            table[cls] = _Analyzer._ignore
        else:
            table[cls] = _Analyzer._generic
    return table


_DISPATCH: Final = _build_dispatch()
