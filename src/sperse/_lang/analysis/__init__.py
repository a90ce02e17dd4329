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
from collections.abc import Container
from dataclasses import dataclass

from sperse._lang.analysis.definitions import Definitions
from sperse._lang.analysis.expressions import Expressions
from sperse._lang.analysis.statements import Statements
from sperse._lang.analysis.walker import BUILTINS, install

__all__ = ["StatementInfo", "analyze"]

_NO_NAMES: frozenset[str] = frozenset()  # shared: an empty set of names is never kept twice


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


class _Analyzer(Statements, Definitions, Expressions):
    """A single walk over one statement; see the module docstring for the rules."""

    __slots__ = ()

    def result(self, is_expression: bool) -> StatementInfo:
        defs = self._defs
        refs = self._refs
        shadowed = self._shadowed
        for name in self._deferred:
            if name not in defs and (name not in BUILTINS or name in shadowed):
                refs.add(name)
        return StatementInfo(
            defs=frozenset(defs) if defs else _NO_NAMES,
            refs=frozenset(refs) if refs else _NO_NAMES,
            deletes=frozenset(self._deletes) if self._deletes else _NO_NAMES,
            is_expression=is_expression,
            effect=self._effect,
        )


install(_Analyzer)
