"""Visitors of expressions: the walrus, expressions that may not run (``and``/``or``, ``x if
c else y``, chained comparisons), item and attribute stores (effects, rule 9) and
comprehensions, whose variables never leak.
"""

from __future__ import annotations

import ast

from sperse._lang.analysis.walker import COMPREHENSION, MODULE, Scope, Walker

__all__ = ["Expressions"]


class Expressions(Walker):
    """Expression visitors."""

    __slots__ = ()

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        # A walrus binds in the nearest scope that is not a comprehension.
        scope = self._scope
        while scope.kind == COMPREHENSION:
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
        while scope.kind == COMPREHENSION and scope.parent is not scope:
            scope = scope.parent
        if scope.kind == MODULE:
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
        scope = Scope(COMPREHENSION, self._scope, deferred=self._scope.deferred)
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
