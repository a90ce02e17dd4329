"""The walk under every visitor of the analysis: scopes, names and control-flow joins.

``Walker`` holds the state of one walk over one statement (the scopes met, the
definite-assignment set, the defs and refs found so far) and the operations every visitor
uses: reading, binding and deleting a name in the current scope, and joining the states of
control-flow paths. The visitors themselves are mixins by concern (``statements``,
``definitions``, ``expressions``), put together in ``analysis._Analyzer``. The rules are in
the docstring of ``analysis``.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable, Container, Iterable
from typing import Any, Final, cast

__all__ = [
    "ANNOTATION",
    "BUILTINS",
    "CLASS",
    "COMPREHENSION",
    "FUNCTION",
    "LAZY",
    "MODULE",
    "Scope",
    "State",
    "Walker",
    "install",
]

BUILTINS: Final = frozenset(vars(builtins))

MODULE: Final = 0
FUNCTION: Final = 1
CLASS: Final = 2
COMPREHENSION: Final = 3
ANNOTATION: Final = 4  # the scope of PEP 695 type parameters; `bound` holds them
LAZY: Final = 5  # a bound, constraint or default of a type parameter, or a `type` value


# The sets a kind of scope never writes; a write would raise (a frozenset has no `add`).
_NONE: Final = cast("set[str]", frozenset())


class Scope:
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

    def __init__(self, kind: int, parent: Scope | None, deferred: bool) -> None:
        self.kind = kind
        self.parent: Scope = self if parent is None else parent
        self.deferred = deferred
        # Only a body (module, function, class) has a flow of statements; only function and
        # class bodies hold `global`, `nonlocal` and names resolved later. The sets a kind
        # never writes are one shared empty set.
        body = kind in (MODULE, FUNCTION, CLASS)
        self.assigned: set[str] = set() if body else _NONE
        if kind in (FUNCTION, CLASS):
            self.bound: set[str] = set()
            self.uses: set[str] = set()
            self.lazy_uses: set[str] = set()
            self.globals: set[str] = set()
            self.nonlocals: set[str] = set()
        else:
            self.bound = set() if kind in (COMPREHENSION, ANNOTATION) else _NONE
            self.uses = self.lazy_uses = self.globals = self.nonlocals = _NONE


# The parent of every module scope, made once: nothing is looked up in it (every walk up
# the scopes ends at a module scope). A module scope that was its own parent would be a
# cycle, garbage the collector would have to find after every statement analysed.
_OUTSIDE: Final = Scope(MODULE, None, deferred=False)

# A point of the control flow: the names definitely bound there, and whether it is live
# (reachable). Dead points take no part in joins.
State = tuple[set[str], bool]


class Walker:
    """The state of one walk over a statement, how it reads and binds names, and how
    control flow joins; the visitors of the mixins build on it (``analysis._Analyzer``)."""

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
        self._module = Scope(MODULE, _OUTSIDE, deferred=False)
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
        if kind == MODULE:
            if name not in self._flow and (name not in BUILTINS or name in self._shadowed):
                self._refs.add(name)
        elif kind == FUNCTION:
            scope.uses.add(name)
        else:
            self._resolve(name, scope, False, scope.deferred)

    def _resolve(self, name: str, scope: Scope, skip_class: bool, deferred: bool) -> None:
        """Resolve a read of ``name`` that was not local, starting at ``scope``."""
        lazy = False
        while True:
            kind = scope.kind
            if kind == FUNCTION:
                scope.uses.add(name)  # resolved when that function closes
                return
            if kind == ANNOTATION:
                if name in scope.bound:
                    return  # a type parameter
            elif kind == LAZY:
                lazy = True
            elif kind == COMPREHENSION:
                if name in scope.bound:
                    return
                skip_class = True  # a comprehension body does not see a class namespace
            elif kind == CLASS and not skip_class:
                if name in scope.globals:
                    break
                if name not in scope.nonlocals:
                    if lazy:
                        scope.lazy_uses.add(name)  # resolved when the class body closes
                        return
                    if name in scope.assigned:
                        return
                    if scope.deferred or scope.parent.kind == ANNOTATION:
                        scope.uses.add(name)  # resolved when the class body closes
                        return
                skip_class = True
            elif kind == MODULE:
                break
            scope = scope.parent
        self._global_read(name, deferred)

    def _global_read(self, name: str, deferred: bool) -> None:
        if deferred:
            self._deferred.add(name)
        elif name not in self._module.assigned and (name not in BUILTINS or name in self._shadowed):
            self._refs.add(name)

    def _store(self, name: str) -> None:
        self._store_in(self._scope, name)

    def _store_in(self, scope: Scope, name: str) -> None:
        kind = scope.kind
        if kind == MODULE:
            self._defs.add(name)
            scope.assigned.add(name)
        elif kind == FUNCTION:
            scope.bound.add(name)
        elif kind == CLASS:
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
        if kind == MODULE:
            self._load(name)
            self._defs.add(name)
            self._deletes.add(name)
            self._flow.discard(name)
            self._del_log.append(name)
        elif kind == FUNCTION:
            scope.bound.add(name)
        elif kind == CLASS:
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

    def _merge(self, others: list[State]) -> None:
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


# Every ast node type -> its visitor; filled once by ``install``.
_DISPATCH: Final[dict[type[ast.AST], Callable[[Any, Any], None]]] = {}

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


def install(analyzer: type[Walker]) -> None:
    """Map every ast node type to its visitor in ``analyzer`` (the class with every
    mixin), so a visit is one dict lookup. Called once, when ``analysis`` is imported."""
    table = _DISPATCH
    pending: list[type[ast.AST]] = [ast.AST]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        method = getattr(analyzer, "visit_" + cls.__name__, None)
        if method is not None:
            table[cls] = method
        elif issubclass(cls, _INERT):
            table[cls] = Walker._ignore
        else:
            table[cls] = Walker._generic
