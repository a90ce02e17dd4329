"""Visitors of definitions: functions and lambdas (deferred code), classes (bodies that run
at once in their own namespace) and PEP 695 type parameters and aliases (annotation scopes,
lazily evaluated parts).
"""

from __future__ import annotations

import ast
from typing import Any

from sperse._lang.analysis.walker import ANNOTATION, CLASS, FUNCTION, LAZY, Scope, Walker

__all__ = ["Definitions"]


class Definitions(Walker):
    """Function, class and type-parameter visitors."""

    __slots__ = ()

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
        scope = Scope(FUNCTION, self._scope, deferred=True)
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
        scope = Scope(CLASS, self._scope, deferred=self._scope.deferred)
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

    def _type_params(self, params: list[Any]) -> Scope:
        """Enter the annotation scope of PEP 695 type parameters, if there are any.

        Returns the scope to restore once the function, class or alias is done.
        """
        outer = self._scope
        if not params:
            return outer
        scope = Scope(ANNOTATION, outer, deferred=outer.deferred)
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
        self._scope = Scope(LAZY, outer, deferred=True)
        self._visit_all(nodes)
        self._scope = outer
