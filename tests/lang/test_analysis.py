"""Tests for statement analysis: the defs, refs and deletes of one top-level statement.

Most of the contract is one table (one ``Case`` per statement). Property tests then check
the analysis against Python itself: on real stdlib source (against ``symtable``) and on
random statements that are executed in a namespace that records every global read.

Cases written in syntax that only newer Pythons parse (PEP 695 type parameters and
``type`` statements, PEP 701 f-strings: 3.12; type parameter defaults: 3.13) name that
version and are skipped on older ones; ``scripts/test_other_pythons.sh`` runs them.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import inspect
import symtable
import sys
import textwrap
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sperse._graph.graph import CellId, Graph
from sperse._lang.analysis import StatementInfo, analyze
from sperse._lang.transform import MARKER, transform
from sperse.errors import StatementError

BUILTIN_NAMES = frozenset(vars(builtins))


def parse_one(source: str) -> ast.stmt:
    body = ast.parse(textwrap.dedent(source)).body
    assert len(body) == 1, f"a case must be exactly one statement, got {len(body)}"
    return body[0]


def names(text: str) -> frozenset[str]:
    return frozenset(text.split())


@dataclass(frozen=True)
class Case:
    id: str
    src: str
    defs: str = ""  # space-separated names
    refs: str = ""
    deletes: str = ""
    shadowed: str = ""
    expr: bool = False
    python: tuple[int, int] = (3, 11)  # the oldest Python that parses `src`
    effect: bool = False  # it stores into or deletes an item or attribute (rule 9)


def needs(python: tuple[int, int]) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        sys.version_info < python, reason=f"the syntax needs Python {python[0]}.{python[1]}"
    )


PY312 = (3, 12)
PY313 = (3, 13)

CASES = [
    # -- assignment ---------------------------------------------------------------------
    Case("assign-constant", "x = 1", defs="x"),
    Case("assign-name", "x = y", defs="x", refs="y"),
    Case("assign-reads-itself", "x = f(x)", defs="x", refs="f x"),
    Case("assign-x-equals-x", "x = x", defs="x", refs="x"),
    Case("assign-chained", "a = b = g()", defs="a b", refs="g"),
    Case("assign-swap", "a, b = b, a", defs="a b", refs="a b"),
    Case("assign-starred", "a, *b = c", defs="a b", refs="c"),
    Case("assign-nested-targets", "(a, [b, c]) = d", defs="a b c", refs="d"),
    Case("assign-list-target", "[a, b] = pair", defs="a b", refs="pair"),
    Case("assign-starred-nested", "first, *(mid, last) = seq", defs="first mid last", refs="seq"),
    Case("assign-attribute-is-mutation", "x.a = 1", refs="x", effect=True),
    Case("assign-subscript-is-mutation", "x[i] = v", refs="x i v", effect=True),
    Case("assign-slice", "x[a:b] = y", refs="x a b y", effect=True),
    Case("assign-mixed-targets", "a, b.c, d[e] = t", defs="a", refs="b d e t", effect=True),
    Case("assign-earlier-target-read-by-later", "i, x[i] = 0, 5", defs="i", refs="x", effect=True),
    Case("assign-chained-with-attribute", "a = b.c = v", defs="a", refs="b v", effect=True),
    Case(
        "assign-chained-target-reads-earlier",
        "n = items[n] = 0",
        defs="n",
        refs="items",
        effect=True,
    ),
    Case("assign-value-reads-target-first", "total = total + 1", defs="total", refs="total"),
    Case("augassign-name", "x += 1", defs="x", refs="x"),
    Case("augassign-value", "total *= factor", defs="total", refs="total factor"),
    Case("augassign-attribute", "x.count += 1", refs="x", effect=True),
    Case("augassign-subscript", "d[k] -= v", refs="d k v", effect=True),
    Case("annassign-value", "x: int = y", defs="x", refs="y"),
    Case("annassign-no-value-defines-nothing", "x: Foo", refs="Foo"),
    Case("annassign-generic-builtin", "n: list[int] = []", defs="n"),
    Case(
        "annassign-annotation-names", "m: Mapping[str, Model] = {}", defs="m", refs="Mapping Model"
    ),
    Case("annassign-attribute-no-value", "obj.a: T", refs="obj T", effect=True),
    Case("annassign-subscript-value", "d[k]: T = v", refs="d k T v", effect=True),
    Case("annassign-annotation-after-store", "x: x = 1", defs="x"),
    Case("annassign-value-reads-target", "x: int = x + 1", defs="x", refs="x"),
    # -- walrus -------------------------------------------------------------------------
    Case("walrus-top-level", "(y := f(x))", defs="y", refs="f x", expr=True),
    Case("walrus-then-read", "print((y := 2), y)", defs="y", expr=True),
    Case("walrus-read-before", "print(y, (y := 2))", defs="y", refs="y", expr=True),
    Case("walrus-in-if-test", "if (n := len(a)) > 3:\n    print(n)", defs="n", refs="a"),
    Case("walrus-right-of-and", "x = (a and (b := g()), b)", defs="x b", refs="a g b"),
    Case("walrus-left-of-and", "x = (b := g()) and b", defs="x b", refs="g"),
    Case("walrus-or-chain", "x = a or (b := 1) or b", defs="x b", refs="a"),
    Case("walrus-ternary-both", "x = ((y := 1) if c else (y := 2), y)", defs="x y", refs="c"),
    Case("walrus-ternary-one", "x = ((y := 1) if c else 0, y)", defs="x y", refs="c y"),
    Case("walrus-ternary-else-only", "x = (0 if c else (y := 1), y)", defs="x y", refs="c y"),
    Case(
        "walrus-ternary-different-names",
        "x = ((y := 1) if c else (z := 2), y, z)",
        defs="x y z",
        refs="c y z",
    ),
    Case("walrus-ternary-test", "x = (y if (y := f()) else 0)", defs="x y", refs="f"),
    Case("walrus-chained-compare", "x = (a < (b := 1) < (c := 2), b, c)", defs="x b c", refs="a c"),
    Case("walrus-in-comprehension", "[(y := v) for v in vs]", defs="y", refs="vs", expr=True),
    Case(
        "walrus-comprehension-then-read", "z = ([(y := v) for v in vs], y)", defs="z y", refs="vs y"
    ),
    Case(
        "walrus-comprehension-cond-then-elt",
        "[y for v in vs if (y := f(v))]",
        defs="y",
        refs="vs f",
        expr=True,
    ),
    Case("walrus-in-first-iterable", "z = ([v for v in (w := g())], w)", defs="z w", refs="g"),
    Case(
        "walrus-in-nested-comprehension",
        "[[(t := j) for j in row] for row in grid]",
        defs="t",
        refs="grid",
        expr=True,
    ),
    Case("walrus-in-lambda-is-local", "f = lambda: (y := 1)", defs="f"),
    Case(
        "walrus-in-function-comprehension",
        "def f(xs):\n    [(t := x) for x in xs]\n    return t",
        defs="f",
    ),
    Case(
        "walrus-in-assert-is-conditional",
        "if go:\n    assert (k := f())\n    print(k)",
        defs="k",
        refs="go f k",
    ),
    Case("walrus-in-call-args-ordered", "f((a := 1), a)", defs="a", refs="f", expr=True),
    Case("walrus-in-dict-value-before-key", "d = {1: (a := 2), a: 3}", defs="d a"),
    # -- comprehensions -----------------------------------------------------------------
    Case("listcomp", "squares = [v * v for v in values]", defs="squares", refs="values"),
    Case("listcomp-variable-shadows-global", "x = [x for x in x]", defs="x", refs="x"),
    Case("comprehension-variable-does-not-leak", "r = ([v for v in vs], v)", defs="r", refs="vs v"),
    Case(
        "comprehension-two-generators",
        "flat = [c for row in grid for c in row]",
        defs="flat",
        refs="grid",
    ),
    Case(
        "comprehension-product",
        "pairs = [(a, b) for a in xs for b in ys]",
        defs="pairs",
        refs="xs ys",
    ),
    Case(
        "comprehension-condition",
        "evens = [n for n in nums if n % k == 0]",
        defs="evens",
        refs="nums k",
    ),
    Case(
        "comprehension-several-conditions",
        "r = [v for v in vs if v if ok(v)]",
        defs="r",
        refs="vs ok",
    ),
    Case("setcomp", "s = {f(v) for v in vs}", defs="s", refs="f vs"),
    Case("dictcomp", "d = {k: v for k, v in items}", defs="d", refs="items"),
    Case(
        "dictcomp-free-name", "d = {k: scale * v for k, v in m.items()}", defs="d", refs="scale m"
    ),
    Case("genexp", "total = sum(v for v in vs)", defs="total", refs="vs"),
    Case("genexp-free-name", "g = (v + offset for v in vs)", defs="g", refs="offset vs"),
    Case(
        "nested-comprehension",
        "m = [[i * j for j in cols] for i in rows]",
        defs="m",
        refs="cols rows",
    ),
    Case(
        "nested-comprehension-inner-uses-outer-var",
        "m = [[c for c in row] for row in grid]",
        defs="m",
        refs="grid",
    ),
    Case("comprehension-starred-target", "r = [h for h, *t in seqs]", defs="r", refs="seqs"),
    Case(
        "comprehension-attribute-target",
        "[0 for o.attr in xs]",
        refs="xs o",
        expr=True,
        effect=True,
    ),
    Case(
        "comprehension-variable-named-like-shadowed-builtin",
        "r = [len for len in xs]",
        defs="r",
        refs="xs",
        shadowed="len",
    ),
    Case(
        "comprehension-reads-name-assigned-later",
        "if go:\n    r = [v + k for v in vs]\n    k = 1",
        defs="r k",
        refs="go vs k",
    ),
    Case(
        "comprehension-reads-name-assigned-earlier",
        "if go:\n    k = 1\n    r = [v + k for v in vs]",
        defs="r k",
        refs="go vs",
    ),
    Case(
        "comprehension-second-iterable-reads-global",
        "r = [y for x in xs for y in x + extra]",
        defs="r",
        refs="xs extra",
    ),
    # -- functions ----------------------------------------------------------------------
    Case("def-free-global", "def f(x):\n    return x + y", defs="f", refs="y"),
    Case("def-recursive", "def f(n):\n    return f(n - 1)", defs="f"),
    Case(
        "def-all-parameter-kinds",
        "def f(a, /, b, *args, c, d=1, **kw):\n    return a, b, args, c, d, kw",
        defs="f",
    ),
    Case("def-local", "def f():\n    t = 1\n    return t", defs="f"),
    Case("def-local-read-before-assignment", "def f():\n    print(t)\n    t = 1", defs="f"),
    Case("def-default", "def f(x=default):\n    return x", defs="f", refs="default"),
    Case("def-kwonly-default", "def f(*, k=kd):\n    pass", defs="f", refs="kd"),
    Case("def-default-reads-own-name", "def f(x=f):\n    pass", defs="f", refs="f"),
    Case(
        "def-annotations",
        "def f(a: A, *b: B, c: C, **d: D) -> R:\n    pass",
        defs="f",
        refs="A B C D R",
    ),
    Case("def-posonly-annotation", "def f(a: A, /):\n    pass", defs="f", refs="A"),
    Case("def-decorator", "@deco\ndef f():\n    pass", defs="f", refs="deco"),
    Case(
        "def-decorator-call",
        "@app.route('/x', methods=m)\ndef f():\n    pass",
        defs="f",
        refs="app m",
    ),
    Case("def-decorators-several", "@a\n@b(c)\ndef f():\n    pass", defs="f", refs="a b c"),
    Case(
        "def-decorator-reads-own-name",
        "@register(f)\ndef f():\n    pass",
        defs="f",
        refs="register f",
    ),
    Case("def-global-read", "def f():\n    global g\n    return g", defs="f", refs="g"),
    Case("def-global-assign-is-not-def", "def f():\n    global g\n    g = 1", defs="f"),
    Case(
        "def-global-augassign-reads",
        "def f():\n    global counter\n    counter += 1",
        defs="f",
        refs="counter",
    ),
    Case("def-global-read-of-own-name", "def f():\n    global f\n    return f", defs="f"),
    Case(
        "def-closure",
        "def outer():\n    v = 1\n    def inner():\n        return v + w\n    return inner",
        defs="outer",
        refs="w",
    ),
    Case(
        "def-nonlocal",
        "def outer():\n    v = 0\n    def inc():\n        nonlocal v\n        v += 1\n    return inc",
        defs="outer",
    ),
    Case(
        "def-inner-global-skips-closure",
        "def outer():\n    g = 1\n    def inner():\n        global g\n        return g\n    return inner",
        defs="outer",
        refs="g",
    ),
    Case(
        "def-nested-free-name",
        "def a():\n    def b():\n        def c():\n            return deep\n        return c\n    return b",
        defs="a",
        refs="deep",
    ),
    Case(
        "def-async",
        "async def fetch(u):\n    return await client.get(u)",
        defs="fetch",
        refs="client",
    ),
    Case(
        "def-async-with-for",
        "async def f():\n    async with lock:\n        async for x in src:\n            yield x",
        defs="f",
        refs="lock src",
    ),
    Case("def-builtins-not-refs", "def f(xs):\n    return len(xs)", defs="f"),
    Case(
        "def-shadowed-builtin-is-ref",
        "def f(xs):\n    return len(xs)",
        defs="f",
        refs="len",
        shadowed="len",
    ),
    Case(
        "def-reads-later-def",
        "if go:\n    def f():\n        return g()\n    def g():\n        return 1",
        defs="f g",
        refs="go",
    ),
    Case(
        "def-reads-name-bound-in-other-branch",
        "if go:\n    def f():\n        return helper\nelse:\n    helper = 1",
        defs="f helper",
        refs="go",
    ),
    Case("def-local-import", "def f():\n    import os\n    return os.sep", defs="f"),
    Case("def-local-from-import", "def f():\n    from m import x as y\n    return y", defs="f"),
    Case(
        "def-except-name-is-local",
        "def f():\n    try:\n        pass\n    except E as e:\n        return e",
        defs="f",
        refs="E",
    ),
    Case(
        "def-comprehension-free-names",
        "def f():\n    return [scale * v for v in data]",
        defs="f",
        refs="scale data",
    ),
    Case(
        "def-comprehension-uses-parameter",
        "def f(data, k):\n    return [k * v for v in data]",
        defs="f",
    ),
    Case(
        "def-class-in-function",
        "def f():\n    class Local:\n        attr = outer_name\n    return Local",
        defs="f",
        refs="outer_name",
    ),
    Case(
        "def-class-in-function-sees-closure",
        "def f(base):\n    class C(base):\n        x = base\n    return C",
        defs="f",
    ),
    Case(
        "def-class-in-function-local-read-first",
        "def f(v):\n    class C:\n        w = v\n        v = 2\n    return C",
        defs="f",
        refs="v",
    ),
    Case(
        "def-method-in-function-class",
        "def f(k):\n    class C:\n        def m(self):\n            return k + free\n    return C",
        defs="f",
        refs="free",
    ),
    Case(
        "def-match-in-body",
        "def f(p):\n    match p:\n        case Point(x=q):\n            return q",
        defs="f",
        refs="Point",
    ),
    Case(
        "def-with-in-body",
        "def f():\n    with open(p) as fh:\n        return fh.read()",
        defs="f",
        refs="p",
    ),
    Case(
        "def-for-in-body",
        "def f():\n    for i, j in pairs:\n        out[i] = j",
        defs="f",
        refs="pairs out",
    ),
    Case("def-del-local", "def f():\n    v = 1\n    del v", defs="f"),
    Case("def-named-like-builtin", "def len(x):\n    return 0", defs="len"),
    Case("def-returns-itself", "def f():\n    return f", defs="f"),
    Case("def-lambda-default-in-body", "def f():\n    return lambda q=zz: q", defs="f", refs="zz"),
    Case(
        "def-local-annotation", "def f():\n    x: Local = 1\n    return x", defs="f", refs="Local"
    ),
    Case(
        "def-walrus-in-body", "def f():\n    if (n := g()):\n        return n", defs="f", refs="g"
    ),
    # -- lambda -------------------------------------------------------------------------
    Case("lambda-body", "f = lambda x: x + y", defs="f", refs="y"),
    Case("lambda-default", "f = lambda x=d: x", defs="f", refs="d"),
    Case("lambda-kwonly-default", "f = lambda *, k=kd: k", defs="f", refs="kd"),
    Case("lambda-self-reference", "fact = lambda n: n * fact(n - 1) if n else 1", defs="fact"),
    Case("lambda-expression-statement", "lambda: z", refs="z", expr=True),
    Case("lambda-nested", "f = lambda a: lambda b: a + b + c", defs="f", refs="c"),
    Case("lambda-in-comprehension", "fs = [lambda: i for i in range(3)]", defs="fs"),
    Case("lambda-varargs", "f = lambda *a, **k: (a, k, g)", defs="f", refs="g"),
    # -- classes ------------------------------------------------------------------------
    Case("class-empty", "class A:\n    pass", defs="A"),
    Case("class-bases-keywords", "class A(B, metaclass=M):\n    pass", defs="A", refs="B M"),
    Case("class-kwargs", "class A(**opts):\n    pass", defs="A", refs="opts"),
    Case("class-body-names-are-not-defs", "class A:\n    x = 1\n    y = x", defs="A"),
    Case("class-body-read-before-assign", "class A:\n    y = x\n    x = 1", defs="A", refs="x"),
    Case("class-body-reads-own-name", "class A:\n    me = A", defs="A", refs="A"),
    Case("class-base-is-own-name", "class A(A):\n    pass", defs="A", refs="A"),
    Case("class-method-reads-own-name", "class A:\n    def m(self):\n        return A()", defs="A"),
    Case(
        "class-method-skips-class-names",
        "class A:\n    k = 1\n    def m(self):\n        return k",
        defs="A",
        refs="k",
    ),
    Case(
        "class-dataclass",
        "@dataclass\nclass P:\n    x: int = 0\n    y: float = 0.0",
        defs="P",
        refs="dataclass",
    ),
    Case("class-annotation-only", "class P:\n    x: Vec", defs="P", refs="Vec"),
    Case("class-decorator-reads-own-name", "@reg(A)\nclass A:\n    pass", defs="A", refs="reg A"),
    Case(
        "class-method-decorator-is-class-local",
        "class A:\n    def deco(f):\n        return f\n    @deco\n    def m(self):\n        pass",
        defs="A",
    ),
    Case(
        "class-method-default-is-class-local",
        "class A:\n    K = 1\n    def m(self, k=K):\n        return k",
        defs="A",
    ),
    Case(
        "class-comprehension-first-iterable",
        "class A:\n    xs = [1, 2]\n    ys = [v for v in xs]",
        defs="A",
    ),
    Case(
        "class-comprehension-body-skips-class",
        "class A:\n    k = 2\n    ys = [v * k for v in range(3)]",
        defs="A",
        refs="k",
    ),
    Case(
        "class-lambda-skips-class",
        "class A:\n    k = 2\n    f = lambda self: k",
        defs="A",
        refs="k",
    ),
    Case(
        "class-conditional-assignment",
        "class A:\n    if flag:\n        x = 1\n    y = x",
        defs="A",
        refs="flag x",
    ),
    Case(
        "class-both-branches",
        "class A:\n    if flag:\n        x = 1\n    else:\n        x = 2\n    y = x",
        defs="A",
        refs="flag",
    ),
    Case(
        "class-nested",
        "class Outer:\n    class Inner:\n        v = w\n    z = Inner",
        defs="Outer",
        refs="w",
    ),
    Case(
        "class-inner-cannot-see-outer",
        "class Outer:\n    k = 1\n    class Inner:\n        v = k",
        defs="Outer",
        refs="k",
    ),
    Case("class-global-declaration", "class A:\n    global g\n    g = 1", defs="A g"),
    Case("class-global-read", "class A:\n    global g\n    x = g", defs="A", refs="g"),
    Case(
        "class-super",
        "class B(A):\n    def __init__(self):\n        super().__init__()",
        defs="B",
        refs="A",
    ),
    Case(
        "class-method-reads-later-def",
        "if go:\n    class A:\n        def m(self):\n            return helper()\n    def helper():\n        return 1",
        defs="A helper",
        refs="go",
    ),
    Case("class-body-del", "class A:\n    tmp = 1\n    del tmp", defs="A"),
    Case("class-body-import", "class A:\n    import json\n    dump = json.dumps", defs="A"),
    Case(
        "class-staticmethod",
        "class A:\n    @staticmethod\n    def s():\n        return 1",
        defs="A",
    ),
    Case(
        "class-shadowed-property",
        "class A:\n    @property\n    def p(self):\n        return 1",
        defs="A",
        refs="property",
        shadowed="property",
    ),
    Case(
        "class-body-loop",
        "class A:\n    for i in range(3):\n        last = i\n    v = last",
        defs="A",
        refs="last",
    ),
    Case(
        "class-method-annotations-read-now",
        "class A:\n    T = int\n    def m(self, x: T) -> U:\n        pass",
        defs="A",
        refs="U",
    ),
    # -- imports ------------------------------------------------------------------------
    Case("import", "import os", defs="os"),
    Case("import-dotted", "import a.b.c", defs="a"),
    Case("import-dotted-as", "import a.b as c", defs="c"),
    Case("import-several", "import os, sys as system", defs="os system"),
    Case("from-import", "from m import x", defs="x"),
    Case("from-import-as", "from m import x as y", defs="y"),
    Case("from-import-several", "from m import (a, b as c)", defs="a c"),
    Case("from-relative", "from . import mod", defs="mod"),
    Case("from-relative-dotted", "from ..pkg.sub import name as alias", defs="alias"),
    Case(
        "import-fallback",
        "try:\n    import ujson as json\nexcept ImportError:\n    import json",
        defs="json",
    ),
    Case(
        "import-conditional",
        "if fast:\n    from speedy import run\nelse:\n    from slow import run",
        defs="run",
        refs="fast",
    ),
    Case("import-builtin-name", "from mymath import sum", defs="sum"),
    # -- if -----------------------------------------------------------------------------
    Case(
        "if-both-branches-then-read",
        "if go:\n    if c:\n        x = 1\n    else:\n        x = 2\n    y = x",
        defs="x y",
        refs="go c",
    ),
    Case(
        "if-one-branch-then-read",
        "if go:\n    if c:\n        x = 1\n    y = x",
        defs="x y",
        refs="go c x",
    ),
    Case(
        "if-elif-else-all-assign",
        "if go:\n    if a:\n        v = 1\n    elif b:\n        v = 2\n    else:\n        v = 3\n    print(v)",
        defs="v",
        refs="go a b",
    ),
    Case(
        "if-elif-no-else",
        "if go:\n    if a:\n        v = 1\n    elif b:\n        v = 2\n    print(v)",
        defs="v",
        refs="go a b v",
    ),
    Case(
        "if-other-branch-raises",
        "if go:\n    if c:\n        x = 1\n    else:\n        raise ValueError(c)\n    y = x",
        defs="x y",
        refs="go c",
    ),
    Case(
        "if-branch-breaks-out",
        "for v in vs:\n    if v:\n        w = v\n    else:\n        break\n    use(w)",
        defs="v w",
        refs="vs use",
    ),
    Case(
        "if-branch-continues",
        "for v in vs:\n    if not v:\n        continue\n    else:\n        w = v\n    use(w)",
        defs="v w",
        refs="vs use",
    ),
    Case("if-test-reads-then-assigns", "if x:\n    x = 0", defs="x", refs="x"),
    Case(
        "if-walrus-test-both-branches",
        "if (m := f()):\n    g(m)\nelse:\n    h(m)",
        defs="m",
        refs="f g h",
    ),
    Case("if-read-before-write-in-branch", "if c:\n    y = x\n    x = 1", defs="x y", refs="c x"),
    Case("if-write-then-read-in-branch", "if c:\n    x = 1\n    y = x", defs="x y", refs="c"),
    Case("if-read-in-else-of-assign", "if c:\n    x = 1\nelse:\n    y = x", defs="x y", refs="c x"),
    # -- loops --------------------------------------------------------------------------
    Case("for-accumulate", "for i in range(n):\n    total += i", defs="i total", refs="n total"),
    Case("for-target", "for i in items:\n    print(i)", defs="i", refs="items"),
    Case(
        "for-tuple-target",
        "for (i, j) in pairs:\n    m[i] = j",
        defs="i j",
        refs="pairs m",
        effect=True,
    ),
    Case("for-nested-target", "for k, (a, b) in d.items():\n    pass", defs="k a b", refs="d"),
    Case("for-attribute-target", "for obj.attr in xs:\n    pass", refs="obj xs", effect=True),
    Case(
        "for-body-not-definite-after",
        "if go:\n    for v in vs:\n        last = v\n    print(last)",
        defs="v last",
        refs="go vs last",
    ),
    Case(
        "for-target-not-definite-after",
        "if go:\n    for v in vs:\n        pass\n    print(v)",
        defs="v",
        refs="go vs v",
    ),
    Case(
        "for-sequential-body",
        "for v in vs:\n    w = v * 2\n    out.append(w)",
        defs="v w",
        refs="vs out",
    ),
    Case(
        "for-read-before-write-in-body",
        "for v in vs:\n    acc = acc + v",
        defs="v acc",
        refs="vs acc",
    ),
    Case("for-iterable-read-before-target", "for x in x:\n    pass", defs="x", refs="x"),
    Case(
        "for-else",
        "for v in vs:\n    if v:\n        found = v\n        break\nelse:\n    found = None",
        defs="v found",
        refs="vs",
    ),
    Case(
        "for-else-and-break-both-assign",
        "if go:\n    for v in vs:\n        if v:\n            found = v\n            break\n    else:\n        found = None\n    print(found)",
        defs="v found",
        refs="go vs",
    ),
    Case(
        "for-break-before-assign",
        "if go:\n    for v in vs:\n        if v:\n            break\n        found = v\n    else:\n        found = None\n    print(found)",
        defs="v found",
        refs="go vs found",
    ),
    Case(
        "for-else-reads-body-name",
        "if go:\n    for v in vs:\n        w = v\n    else:\n        print(w)",
        defs="v w",
        refs="go vs w",
    ),
    Case(
        "for-continue",
        "for v in vs:\n    if not v:\n        continue\n    keep.append(v)",
        defs="v",
        refs="vs keep",
    ),
    Case(
        "for-del-in-body",
        "if go:\n    x = 1\n    for v in vs:\n        print(x)\n        del x",
        defs="x v",
        refs="go vs x",
        deletes="x",
    ),
    Case(
        "for-async",
        "async for item in stream:\n    handle(item)",
        defs="item",
        refs="stream handle",
    ),
    Case(
        "for-nested-loops",
        "for row in grid:\n    for cell in row:\n        seen.add(cell)",
        defs="row cell",
        refs="grid seen",
    ),
    Case("while-countdown", "while n > 0:\n    n -= 1", defs="n", refs="n"),
    Case(
        "while-walrus-test",
        "while (line := read()):\n    lines.append(line)",
        defs="line",
        refs="read lines",
    ),
    Case(
        "while-walrus-definite-after",
        "if go:\n    while (chunk := read()):\n        pass\n    print(chunk)",
        defs="chunk",
        refs="go read",
    ),
    Case(
        "while-body-not-definite-after",
        "if go:\n    while c:\n        x = 1\n    print(x)",
        defs="x",
        refs="go c x",
    ),
    Case(
        "while-true-break",
        "if go:\n    while True:\n        x = poll()\n        if x:\n            break\n    print(x)",
        defs="x",
        refs="go poll",
    ),
    Case(
        "while-else", "while i < n:\n    i += 1\nelse:\n    done = True", defs="i done", refs="i n"
    ),
    Case("while-test-reads-body-name", "while x:\n    x = step(x)", defs="x", refs="x step"),
    # -- try ----------------------------------------------------------------------------
    Case(
        "try-handler-name-is-not-def",
        "try:\n    v = f()\nexcept ValueError as e:\n    log(e)",
        defs="v",
        refs="f log",
    ),
    Case("try-exception-type", "try:\n    pass\nexcept MyError:\n    pass", refs="MyError"),
    Case(
        "try-exception-tuple",
        "try:\n    pass\nexcept (AError, BError) as err:\n    print(err)",
        refs="AError BError",
    ),
    Case(
        "try-handler-may-run-before-body",
        "try:\n    x = f()\nexcept Exception:\n    print(x)",
        defs="x",
        refs="f x",
    ),
    Case(
        "try-handler-assigns",
        "try:\n    x = f()\nexcept Exception:\n    x = None",
        defs="x",
        refs="f",
    ),
    Case(
        "try-both-paths-assign",
        "if go:\n    try:\n        x = f()\n    except Exception:\n        x = None\n    print(x)",
        defs="x",
        refs="go f",
    ),
    Case(
        "try-else-sees-body",
        "try:\n    x = f()\nexcept E:\n    pass\nelse:\n    y = x",
        defs="x y",
        refs="f E",
    ),
    Case(
        "try-finally-reads-body-name",
        "try:\n    x = f()\nfinally:\n    print(x)",
        defs="x",
        refs="f x",
    ),
    Case(
        "try-finally-assigns",
        "if go:\n    try:\n        pass\n    finally:\n        x = 1\n    print(x)",
        defs="x",
        refs="go",
    ),
    Case(
        "try-handler-name-gone-after",
        "if go:\n    try:\n        pass\n    except E as e:\n        pass\n    print(e)",
        refs="go E e",
    ),
    Case(
        "try-handler-reraises",
        "if go:\n    try:\n        x = f()\n    except KeyError:\n        raise\n    print(x)",
        defs="x",
        refs="go f",
    ),
    Case(
        "try-handler-without-assign",
        "if go:\n    try:\n        x = f()\n    except KeyError:\n        pass\n    print(x)",
        defs="x",
        refs="go f x",
    ),
    Case(
        "try-star", "try:\n    run()\nexcept* ValueError as eg:\n    report(eg)", refs="run report"
    ),
    Case(
        "try-handler-binds-other-name",
        "try:\n    pass\nexcept E as e:\n    saved = e",
        defs="saved",
        refs="E",
    ),
    Case(
        "try-second-handler",
        "try:\n    a = 1\nexcept KeyError:\n    b = a\nexcept IndexError as ie:\n    c = ie",
        defs="a b c",
        refs="a",
    ),
    # -- with ---------------------------------------------------------------------------
    Case("with-as", "with open(p) as fh:\n    data = fh.read()", defs="fh data", refs="p"),
    Case("with-tuple-target", "with ctx() as (a, b):\n    pass", defs="a b", refs="ctx"),
    Case("with-several-items", "with A() as a, B(a) as b:\n    pass", defs="a b", refs="A B"),
    Case(
        "with-target-then-body", "with lock as held:\n    use(held)", defs="held", refs="lock use"
    ),
    Case(
        "with-body-may-be-cut-short",
        "if go:\n    with lock:\n        x = 1\n    print(x)",
        defs="x",
        refs="go lock x",
    ),
    Case(
        "with-target-definite-after",
        "if go:\n    with cm() as t:\n        pass\n    print(t)",
        defs="t",
        refs="go cm",
    ),
    Case(
        "with-async",
        "async with session() as s:\n    r = await s.get(u)",
        defs="s r",
        refs="session u",
    ),
    Case("with-attribute-target", "with cm as obj.attr:\n    pass", refs="cm obj", effect=True),
    # -- match --------------------------------------------------------------------------
    Case(
        "match-sequence-captures",
        "match cmd:\n    case [action, obj]:\n        go(action, obj)",
        defs="action obj",
        refs="cmd go",
    ),
    Case(
        "match-class-pattern",
        "match p:\n    case Point(x=0, y=yv):\n        pass",
        defs="yv",
        refs="p Point",
    ),
    Case(
        "match-class-positional",
        "match e:\n    case BinOp(l, op, r):\n        pass",
        defs="l op r",
        refs="e BinOp",
    ),
    Case("match-value-pattern", "match c:\n    case Color.RED:\n        pass", refs="c Color"),
    Case(
        "match-star",
        "match seq:\n    case [first, *rest]:\n        pass",
        defs="first rest",
        refs="seq",
    ),
    Case(
        "match-mapping-rest",
        "match cfg:\n    case {'mode': mode, **others}:\n        pass",
        defs="mode others",
        refs="cfg",
    ),
    Case(
        "match-mapping-dotted-key",
        "match d:\n    case {consts.KEY: val}:\n        pass",
        defs="val",
        refs="d consts",
    ),
    Case("match-as", "match v:\n    case [1, 2] as pair:\n        pass", defs="pair", refs="v"),
    Case(
        "match-or-as", "match v:\n    case (1 | 2) as small:\n        pass", defs="small", refs="v"
    ),
    Case("match-wildcard", "match v:\n    case _:\n        pass", refs="v"),
    Case("match-singleton", "match v:\n    case None:\n        pass", refs="v"),
    Case(
        "match-guard",
        "match v:\n    case [n] if n > limit:\n        pass",
        defs="n",
        refs="v limit",
    ),
    Case(
        "match-exhaustive-then-read",
        "if go:\n    match v:\n        case [n]:\n            k = n\n        case _:\n            k = 0\n    print(k)",
        defs="n k",
        refs="go v",
    ),
    Case(
        "match-capture-all-exhaustive",
        "if go:\n    match v:\n        case 1:\n            k = 1\n        case other:\n            k = other\n    print(k)",
        defs="k other",
        refs="go v",
    ),
    Case(
        "match-not-exhaustive-then-read",
        "if go:\n    match v:\n        case [n]:\n            k = n\n    print(k)",
        defs="n k",
        refs="go v k",
    ),
    Case(
        "match-guarded-wildcard-not-exhaustive",
        "if go:\n    match v:\n        case _ if ok:\n            k = 0\n    print(k)",
        defs="k",
        refs="go v ok k",
    ),
    Case(
        "match-capture-read-in-body",
        "match point:\n    case (x, y):\n        dist = x * x + y * y",
        defs="x y dist",
        refs="point",
    ),
    # -- del ----------------------------------------------------------------------------
    Case("del-name", "del x", defs="x", refs="x", deletes="x"),
    Case("del-several", "del a, b", defs="a b", refs="a b", deletes="a b"),
    Case("del-tuple", "del (a, [b])", defs="a b", refs="a b", deletes="a b"),
    Case("del-subscript", "del x[0]", refs="x", effect=True),
    Case("del-slice", "del x[i:j]", refs="x i j", effect=True),
    Case("del-attribute", "del x.a", refs="x", effect=True),
    Case(
        "del-after-assign",
        "if go:\n    tmp = f()\n    use(tmp)\n    del tmp",
        defs="tmp",
        refs="go f use",
        deletes="tmp",
    ),
    Case("del-then-read", "if go:\n    del x\n    print(x)", defs="x", refs="go x", deletes="x"),
    Case("del-conditional", "if go:\n    del x", defs="x", refs="go x", deletes="x"),
    Case("del-builtin-unshadowed", "del print", defs="print", deletes="print"),
    Case(
        "del-builtin-shadowed",
        "del print",
        defs="print",
        refs="print",
        deletes="print",
        shadowed="print",
    ),
    # -- builtins -----------------------------------------------------------------------
    Case("builtin-call", "n = len(items)", defs="n", refs="items"),
    Case("builtin-shadowed", "n = len(items)", defs="n", refs="len items", shadowed="len"),
    Case("builtin-defined", "list = [1]", defs="list"),
    Case("builtin-redefined-from-itself", "print = wrap(print)", defs="print", refs="wrap"),
    Case(
        "builtin-redefined-from-itself-shadowed",
        "print = wrap(print)",
        defs="print",
        refs="wrap print",
        shadowed="print",
    ),
    Case("builtin-dunder-name", "x = __name__", defs="x"),
    Case(
        "builtin-shadowed-only-listed",
        "r = max(a, min(b))",
        defs="r",
        refs="a b max",
        shadowed="max other",
    ),
    Case(
        "builtin-assigned-then-read",
        "if go:\n    len = 3\n    n = len",
        defs="len n",
        refs="go",
        shadowed="len",
    ),
    # -- expressions and simple statements ---------------------------------------------
    Case("expr-call", "f(x, *args, key=v, **kw)", refs="f x args v kw", expr=True),
    Case("expr-attribute-chain", "a.b.c.d()", refs="a", expr=True),
    Case("expr-name", "x", refs="x", expr=True),
    Case("expr-constant", "'''doc'''", expr=True),
    Case("expr-ellipsis", "...", expr=True),
    Case("expr-await", "await job", refs="job", expr=True),
    Case("expr-yield", "yield x", refs="x", expr=True),
    Case("fstring", "msg = f'{name!r:>{width}} {obj.attr}'", defs="msg", refs="name width obj"),
    Case("fstring-nested-call", "print(f'{fmt(v)=}')", refs="fmt v", expr=True),
    Case("await-assign", "r = await fetch(u)", defs="r", refs="fetch u"),
    Case("starred-in-list", "xs = [*a, *b]", defs="xs", refs="a b"),
    Case("slice", "part = seq[lo:hi:step]", defs="part", refs="seq lo hi step"),
    Case("dict-display", "d = {k: v, **extra}", defs="d", refs="k v extra"),
    Case("set-display", "s = {a, b}", defs="s", refs="a b"),
    Case("ternary", "v = a if c else b", defs="v", refs="a b c"),
    Case("operators", "z = -x ** y // w @ m", defs="z", refs="x y w m"),
    Case("compare-chain", "ok = lo <= v < hi", defs="ok", refs="lo v hi"),
    Case("not-in", "ok = k not in seen", defs="ok", refs="k seen"),
    Case("keyword-argument", "sorted(xs, key=k)", refs="xs k", expr=True),
    Case("global-at-top-level", "global x"),
    Case("nonlocal-at-top-level", "nonlocal x"),
    Case("pass", "pass"),
    Case("break-at-top-level", "break"),
    Case("continue-at-top-level", "continue"),
    Case("return-at-top-level", "return x", refs="x"),
    Case("raise-from", "raise Err(msg) from cause", refs="Err msg cause"),
    Case("raise-bare", "raise"),
    Case("assert-with-message", "assert cond, message", refs="cond message"),
    Case("assert-builtins", "assert isinstance(x, T)", refs="x T"),
    Case("fstring-format-spec-nested", 'y = f"{x!r:>{w}}"', defs="y", refs="x w"),
    Case("fstring-walrus", 'print(f"{(n := len(a))} {n}")', defs="n", refs="a", expr=True),
    # -- f-strings of PEP 701 (Python 3.12) -------------------------------------------
    Case(
        "fstring-nested-same-quotes",
        'msg = f"{d["k"]!r:>{width}}"',
        defs="msg",
        refs="d width",
        python=PY312,
    ),
    Case(
        "fstring-backslash-in-expression",
        r's = f"{"\n".join(lines)}"',
        defs="s",
        refs="lines",
        python=PY312,
    ),
    Case(
        "fstring-comment-in-expression",
        'total = f"{a +  # the first\n    b}"',
        defs="total",
        refs="a b",
        python=PY312,
    ),
    Case(
        "fstring-multi-line-expression",
        'x = f"""{\n    f"{a}" + g(\n        b\n    )\n}"""',
        defs="x",
        refs="a g b",
        python=PY312,
    ),
    Case("fstring-nested-deep", 'x = f"{f"{f"{a}"}"}"', defs="x", refs="a", python=PY312),
    Case(
        "fstring-walrus-same-quotes",
        'print(f"{(s := "x")}", s)',
        defs="s",
        expr=True,
        python=PY312,
    ),
    # -- type parameters of functions (PEP 695, Python 3.12) ----------------------------
    Case("typeparam-identity", "def ident[T](x: T) -> T: return x", defs="ident", python=PY312),
    Case(
        "typeparam-body-reads-param",
        "def f[T](x):\n    return T, U",
        defs="f",
        refs="U",
        python=PY312,
    ),
    Case(
        "typeparam-annotations-read-other-names",
        "def f[T](x: T, m: Mapping[str, T]) -> Out: pass",
        defs="f",
        refs="Mapping Out",
        python=PY312,
    ),
    Case(
        "typeparam-bound-is-lazy-ref",
        "def f[T: Bound](x: T) -> T: return x",
        defs="f",
        refs="Bound",
        python=PY312,
    ),
    Case("typeparam-bound-builtin", "def f[T: int](x: T): pass", defs="f", python=PY312),
    Case(
        "typeparam-constraints",
        "def f[T: (str, Text)](x: T) -> T: return x",
        defs="f",
        refs="Text",
        python=PY312,
    ),
    Case(
        "typeparam-bound-reads-other-param",
        "def f[T, S: list[T]](x: S) -> T: pass",
        defs="f",
        python=PY312,
    ),
    Case(
        "typeparam-bound-reads-own-def",
        "def f[T: Callable[..., f]](x: T): pass",
        defs="f",
        refs="Callable",
        python=PY312,
    ),
    Case(
        "typeparam-paramspec-typevartuple",
        "def f[**P, *Ts](*a: P.args, **k: P.kwargs) -> tuple[*Ts]: pass",
        defs="f",
        python=PY312,
    ),
    Case(
        "typeparam-not-seen-by-decorator",
        "@register(T)\ndef f[T](): pass",
        defs="f",
        refs="register T",
        python=PY312,
    ),
    Case(
        "typeparam-not-seen-by-defaults",
        "def f[T](x=T, *, y=U): pass",
        defs="f",
        refs="T U",
        python=PY312,
    ),
    Case(
        "typeparam-not-seen-after-def",
        "if go:\n    def f[T](x: T) -> T: return x\n    y = T",
        defs="f y",
        refs="go T",
        python=PY312,
    ),
    Case(
        "typeparam-async",
        "async def f[T](x: T) -> T:\n    return await g(x)",
        defs="f",
        refs="g",
        python=PY312,
    ),
    Case(
        "typeparam-seen-by-nested-function",
        "def outer[T]():\n    def inner(x: T) -> T:\n        return T\n    return inner",
        defs="outer",
        python=PY312,
    ),
    Case(
        "typeparam-seen-by-lambda-in-annotation",
        "def f[T](x: (lambda: T)) -> None: pass",
        defs="f",
        python=PY312,
    ),
    Case(
        "typeparam-in-deferred-function",
        "def outer():\n    def f[T: Helper](x: T) -> Out: pass\n    return f",
        defs="outer",
        refs="Helper Out",
        python=PY312,
    ),
    Case(
        "typeparam-bound-reads-enclosing-local",
        "def outer(B):\n    def f[T: B](x: T) -> B: pass\n    return f",
        defs="outer",
        python=PY312,
    ),
    # -- type parameters of classes ---------------------------------------------------
    Case(
        "typeparam-class",
        "class Box[T]:\n    item: T\n    def get(self) -> T:\n        return self.item",
        defs="Box",
        python=PY312,
    ),
    Case(
        "typeparam-class-bases-keywords",
        "class C[T](Base[T], metaclass=Meta): pass",
        defs="C",
        refs="Base Meta",
        python=PY312,
    ),
    Case("typeparam-class-bound", "class C[T: Bound]: pass", defs="C", refs="Bound", python=PY312),
    Case("typeparam-class-bound-own-def", "class Node[T: Node]: pass", defs="Node", python=PY312),
    Case(
        "typeparam-class-not-seen-by-decorator",
        "@dec(T)\nclass C[T]: pass",
        defs="C",
        refs="dec T",
        python=PY312,
    ),
    Case(
        "typeparam-class-method-reads-param",
        "class C[T]:\n    def m(self) -> T:\n        return T",
        defs="C",
        python=PY312,
    ),
    Case(
        "typeparam-class-body-reads-global",
        "class C[T]:\n    y = 1\n    z = (T, y, w)",
        defs="C",
        refs="w",
        python=PY312,
    ),
    Case(  # the name is local to the class body, so Python reads the global
        "typeparam-class-body-binds-param-later",
        "class C[T]:\n    x = T\n    T = 1",
        defs="C",
        refs="T",
        python=PY312,
    ),
    Case(
        "typeparam-class-body-binds-param-first",
        "class C[T]:\n    T = 1\n    x = T",
        defs="C",
        python=PY312,
    ),
    Case(
        "typeparam-deferred-class-binds-param-later",
        "def outer():\n    class C[T]:\n        x = T\n        T = 1\n    return C",
        defs="outer",
        refs="T",
        python=PY312,
    ),
    Case(
        "typeparam-method-sees-class-names",
        "class A:\n    X = int\n    def m[T: X](self, a: X) -> T:\n        return T",
        defs="A",
        python=PY312,
    ),
    Case(  # the bound is evaluated after the class body, which deleted `X`
        "typeparam-method-bound-class-name-deleted",
        "class A:\n    X = int\n    def m[T: X](self): pass\n    del X",
        defs="A",
        refs="X",
        python=PY312,
    ),
    Case(
        "typeparam-method-bound-class-name-later",
        "class A:\n    def m[T: X](self): pass\n    X = int",
        defs="A",
        python=PY312,
    ),
    Case(  # annotations are evaluated when the `def` runs, before `X` is bound
        "typeparam-method-annotation-class-name-later",
        "class A:\n    def m[T](self, a: X) -> T: pass\n    X = int",
        defs="A",
        refs="X",
        python=PY312,
    ),
    Case(
        "typeparam-method-body-skips-class",
        "class A:\n    X = 1\n    def m[T](self):\n        return X",
        defs="A",
        refs="X",
        python=PY312,
    ),
    # -- type parameter defaults (PEP 696, Python 3.13) ---------------------------------
    Case("typeparam-default", "def f[T = int](x: T) -> T: return x", defs="f", python=PY313),
    Case(
        "typeparam-defaults-are-lazy-refs",
        "class C[T = Default, *Ts = *tuple[D], **P = [E]]: pass",
        defs="C",
        refs="Default D E",
        python=PY313,
    ),
    Case(
        "typeparam-default-reads-other-param",
        "class C[T, S = list[T]]: pass",
        defs="C",
        python=PY313,
    ),
    Case(
        "typeparam-bound-and-default",
        "def f[T: Base = Impl](x: T): pass",
        defs="f",
        refs="Base Impl",
        python=PY313,
    ),
    # -- type statements (PEP 695, Python 3.12) -------------------------------------------
    Case("type-alias", "type X = Y | None", defs="X", refs="Y", python=PY312),
    Case("type-alias-generic", "type Vec[T] = list[T]", defs="Vec", python=PY312),
    Case(
        "type-alias-recursive",
        "type Tree = Leaf | list[Tree]",
        defs="Tree",
        refs="Leaf",
        python=PY312,
    ),
    Case(
        "type-alias-bound",
        "type Sorted[T: Comparable] = list[T]",
        defs="Sorted",
        refs="Comparable",
        python=PY312,
    ),
    Case(
        "type-alias-paramspec",
        "type Handler[**P, R] = Callable[P, Awaitable[R]]",
        defs="Handler",
        refs="Callable Awaitable",
        python=PY312,
    ),
    Case(
        "type-alias-param-not-seen-after",
        "if go:\n    type A[T] = list[T]\n    b = T",
        defs="A b",
        refs="go T",
        python=PY312,
    ),
    Case(
        "type-alias-then-read",
        "if go:\n    type A = int\n    b = A",
        defs="A b",
        refs="go",
        python=PY312,
    ),
    Case("type-alias-conditional", "if go:\n    type A = int", defs="A", refs="go", python=PY312),
    Case(
        "type-alias-shadowed-builtin",
        "type Ints = list[int]",
        defs="Ints",
        refs="list",
        shadowed="list",
        python=PY312,
    ),
    Case(
        "type-alias-in-function",
        "def f():\n    type A = B\n    return A",
        defs="f",
        refs="B",
        python=PY312,
    ),
    Case(  # the value is evaluated lazily, after the class body bound `B`
        "type-alias-in-class",
        "class C:\n    type A = B\n    B = int\n    x: A",
        defs="C",
        python=PY312,
    ),
    Case("type-alias-default", "type Pair[A, B = A] = tuple[A, B]", defs="Pair", python=PY313),
]


def test_cases_are_many_and_unique() -> None:
    assert len(CASES) >= 180
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.id, marks=needs(case.python)) for case in CASES]
)
def test_statement(case: Case) -> None:
    info = analyze(parse_one(case.src), shadowed=names(case.shadowed))
    assert info == StatementInfo(
        defs=names(case.defs),
        refs=names(case.refs),
        deletes=names(case.deletes),
        is_expression=case.expr,
        effect=case.effect,
    )


def test_shadowed_accepts_any_container() -> None:
    info = analyze(parse_one("y = len(x)"), shadowed={"len": 1})
    assert info.refs == {"len", "x"}


def test_result_is_frozen() -> None:
    info = analyze(parse_one("x = 1"))
    with pytest.raises(AttributeError):
        info.defs = frozenset()  # type: ignore[misc]


# -- from m import * ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "src",
    [
        "from m import *",
        "from pkg.mod import *",
        "if c:\n    from m import *",
        "try:\n    from m import *\nexcept ImportError:\n    pass",
        "def f():\n    from m import *",
    ],
    ids=["plain", "dotted", "in-if", "in-try", "in-function"],
)
def test_star_import_is_refused(src: str) -> None:
    with pytest.raises(StatementError) as raised:
        analyze(parse_one(src))
    message = str(raised.value)
    module = "pkg.mod" if "pkg.mod" in src else "m"
    assert f"`from {module} import *`" in message
    assert "cannot know which names it binds" in message  # why
    assert f"from {module} import a, b" in message  # what to do instead ...
    assert f"`import {module}`" in message  # ... or this


def test_relative_star_import_is_refused() -> None:
    with pytest.raises(StatementError, match=r"`from \.\.pkg import \*`.*name the imports"):
        analyze(parse_one("from ..pkg import *"))


# -- properties on real code ------------------------------------------------------------

STDLIB_MODULES = (
    "argparse",
    "ast",
    "asyncio.tasks",
    "collections",
    "dataclasses",
    "difflib",
    "enum",
    "functools",
    "inspect",
    "ipaddress",
    "json.decoder",
    "logging",
    "os",
    "pathlib",
    "statistics",
    "string",
    "tarfile",
    "textwrap",
    "typing",
)


def _stdlib_statements() -> list[tuple[str, ast.stmt, str]]:
    found = []
    for module_name in STDLIB_MODULES:
        source = inspect.getsource(importlib.import_module(module_name))
        for statement in ast.parse(source).body:
            segment = ast.get_source_segment(source, statement, padded=True)
            assert segment is not None
            found.append((module_name, statement, textwrap.dedent(segment)))
    return found


STDLIB_STATEMENTS = _stdlib_statements()


def _has_star_import(statement: ast.stmt) -> bool:
    return any(
        isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names)
        for node in ast.walk(statement)
    )


def _deferred_global_reads(source: str) -> set[str]:
    """Globals read inside function and class bodies, according to ``symtable``.

    Two kinds of entry are left out. An annotation scope right inside a class (3.12+, it
    has a free ``__classdict__``) looks a "global" up in the class namespace first, so
    the table cannot say whether it reads the global. And 3.12+ lists the ``__class__``
    cell that ``super`` needs as a global of a function outside any class, which never
    reads it.
    """
    found: set[str] = set()
    pending = list(symtable.symtable(source, "<statement>", "exec").get_children())
    while pending:
        table = pending.pop()
        pending.extend(table.get_children())
        symbols = table.get_symbols()
        if any(symbol.get_name() == "__classdict__" for symbol in symbols):
            continue
        for symbol in symbols:
            if symbol.is_global() and symbol.is_referenced():
                found.add(symbol.get_name())
    found.discard("__class__")
    return found


def test_stdlib_statements_agree_with_symtable() -> None:
    assert len(STDLIB_STATEMENTS) > 1000
    for module_name, statement, segment in STDLIB_STATEMENTS:
        if _has_star_import(statement):
            with pytest.raises(StatementError):
                analyze(statement)
            continue
        info = analyze(statement)
        where = f"{module_name}, line {statement.lineno}"
        assert info.deletes <= info.defs, where
        assert not info.refs & BUILTIN_NAMES, where
        # Every global that a function or class body reads is a ref, unless the statement
        # defines it or it is a builtin. (Names read directly at top level are checked
        # by the flow-sensitive tests below.)
        missing = _deferred_global_reads(segment) - info.defs - BUILTIN_NAMES - info.refs
        assert not missing, f"{where}: missing refs {sorted(missing)}"


@settings(max_examples=200, deadline=None)
@given(
    item=st.sampled_from(STDLIB_STATEMENTS),
    shadowed=st.sets(st.sampled_from(sorted(BUILTIN_NAMES)), max_size=20),
)
def test_shadowing_only_adds_refs(item: tuple[str, ast.stmt, str], shadowed: set[str]) -> None:
    _, statement, _ = item
    if _has_star_import(statement):
        return
    plain = analyze(statement)
    shadowing = analyze(statement, shadowed=shadowed)
    assert shadowing.defs == plain.defs
    assert shadowing.deletes == plain.deletes
    assert plain.refs <= shadowing.refs
    assert shadowing.refs - plain.refs <= shadowed


# -- the cases against Python itself ----------------------------------------------------

# Cases that can be checked by compiling them (`symtable`): those that Python compiles.
SYMTABLE_CASES = [
    pytest.param(case, id=case.id, marks=needs(case.python))
    for case in CASES
    if case.id not in ("walrus-in-first-iterable", "nonlocal-at-top-level")
    and "import *" not in case.src
]


@pytest.mark.parametrize("case", SYMTABLE_CASES)
def test_case_agrees_with_symtable(case: Case) -> None:
    # Every global that a function, class, lambda, comprehension or annotation scope
    # reads is a ref unless the statement defines it or it is an unshadowed builtin.
    source = textwrap.dedent(case.src)
    missing = (
        _deferred_global_reads(source)
        - names(case.defs)
        - names(case.refs)
        - (BUILTIN_NAMES - names(case.shadowed))
    )
    assert not missing


class _Anything:
    """An old value that survives what a typing statement does with it: subscripts,
    calls (decorators, a metaclass), ``|``, unpacking and use as a base class."""

    def __getitem__(self, item: object) -> _Anything:
        return self

    def __call__(self, *args: object, **kwargs: object) -> _Anything:
        return self

    def __or__(self, other: object) -> _Anything:
        return self

    __ror__ = __or__

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __mro_entries__(self, bases: tuple[object, ...]) -> tuple[type, ...]:
        return ()


def _evaluate_lazy_parts(namespace: dict[str, Any]) -> None:
    """Evaluate the bounds, constraints and defaults of every type parameter, and the
    value of every ``type`` alias, that the statement made (methods included)."""
    pending = [value for key, value in dict.items(namespace) if key != "__builtins__"]
    seen: set[int] = set()
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, type):
            pending.extend(vars(value).values())
        for param in getattr(value, "__type_params__", ()):
            for attribute in ("__bound__", "__constraints__", "__default__"):
                with contextlib.suppress(Exception):
                    getattr(param, attribute, None)
        if isinstance(value, typing.TypeAliasType):  # type: ignore[attr-defined]
            pending.extend(value.__type_params__)
            with contextlib.suppress(Exception):
                value.__value__  # noqa: B018
        elif isinstance(value, typing.TypeVar | typing.ParamSpec | typing.TypeVarTuple):
            for attribute in ("__bound__", "__constraints__", "__default__"):
                with contextlib.suppress(Exception):
                    getattr(value, attribute, None)


# The cases written in newer syntax: no loops, so they run with any values.
NEWER_SYNTAX_CASES = [
    pytest.param(case, id=case.id, marks=needs(case.python))
    for case in CASES
    if case.python > (3, 11)
]


@pytest.mark.parametrize("case", NEWER_SYNTAX_CASES)
def test_newer_syntax_case_is_sound_when_run(case: Case) -> None:
    # Run the statement with an old value for every name it mentions, evaluate what it
    # left for later, and check that every old value it read is a ref.
    source = textwrap.dedent(case.src)
    shadowed = names(case.shadowed)
    initial: dict[str, Any] = {
        node.id: _Anything()
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Name) and (node.id not in BUILTIN_NAMES or node.id in shadowed)
    }
    namespace = _Probe(initial)
    with contextlib.suppress(Exception):
        exec(compile(source, "<case>", "exec"), namespace)
    _evaluate_lazy_parts(namespace)
    info = analyze(parse_one(source), shadowed=shadowed)
    assert namespace.old_reads <= info.refs


def _enter_at_prompt(graph: Graph, source: str) -> list[CellId]:
    """What the workspace does with input, without running anything."""
    cells = []
    for statement in ast.parse(transform(source)).body:
        info = analyze(statement)
        cell, _ = graph.add_cell(info.defs, info.refs - {MARKER}, label=source)
        cells.append(cell)
    return cells


@needs(PY312)
def test_names_of_type_parameters_are_free_at_the_prompt() -> None:
    # `T` used to be a ref of the generic `def`, so defining `T` next raised CycleError.
    graph = Graph()
    [ident] = _enter_at_prompt(graph, "def ident[T](x: T) -> T: return x")
    [t] = _enter_at_prompt(graph, "T = ident(1)")
    [box, pair] = _enter_at_prompt(graph, "class Box[T]:\n    item: T\ntype Pair[T] = tuple[T, T]")
    [label] = _enter_at_prompt(graph, 'label = remote ident(f"{T!r:>{width}} {"x"}")')
    assert graph.parents(ident) == {}
    assert graph.parents(t) == {"ident": ident}
    assert graph.parents(box) == graph.parents(pair) == {}
    assert graph.parents(label) == {"ident": ident, "T": t, "width": None}


# -- comprehension variables never leak --------------------------------------------------

COMP_VARS = ("u", "w", "z")
OUTER_NAMES = ("a", "b", "c")


@st.composite
def _comprehension_expr(draw: st.DrawFn, depth: int = 2, bound: tuple[str, ...] = ()) -> str:
    kinds = ["name", "int"] + (["binop", "comprehension", "call"] if depth else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "name":
        return draw(st.sampled_from(OUTER_NAMES + bound))
    if kind == "int":
        return str(draw(st.integers(0, 9)))
    if kind == "binop":
        left = draw(_comprehension_expr(depth - 1, bound))
        right = draw(_comprehension_expr(depth - 1, bound))
        return f"({left} + {right})"
    if kind == "call":
        return f"f({draw(_comprehension_expr(depth - 1, bound))})"
    opener, closer = draw(st.sampled_from(["[]", "{}", "()"]))
    clauses = []
    inner = bound
    for _ in range(draw(st.integers(1, 2))):
        var = draw(st.sampled_from(COMP_VARS))
        iterable = draw(_comprehension_expr(depth - 1, inner))
        inner = (*inner, var)
        clause = f"for {var} in {iterable}"
        if draw(st.booleans()):
            clause += f" if {draw(_comprehension_expr(depth - 1, inner))}"
        clauses.append(clause)
    element = draw(_comprehension_expr(depth - 1, inner))
    return f"{opener}{element} {' '.join(clauses)}{closer}"


@settings(max_examples=300, deadline=None)
@given(expression=_comprehension_expr(depth=3))
def test_comprehension_variables_are_never_refs(expression: str) -> None:
    info = analyze(parse_one(f"result = {expression}"))
    assert info.defs == {"result"}
    assert not info.refs & set(COMP_VARS)
    # Every outer name the expression mentions is read (none is bound).
    mentioned = {node.id for node in ast.walk(ast.parse(expression)) if isinstance(node, ast.Name)}
    assert info.refs == mentioned - set(COMP_VARS)


# -- soundness against execution ---------------------------------------------------------
#
# Random compound statements run in a namespace that records which names were read while
# still holding their value from before the statement. Every such name must be a ref,
# every name the statement changed must be a def, and every name it removed a delete.
# Each statement runs from six starting namespaces (old values falsy, truthy, or now and
# then missing), so that many of its paths are taken.

FUZZ_NAMES = ("a", "b", "c", "d", "e", "f", "g", "h")
FUZZ_COMP_VARS = ("u", "w")


class _Old(int):
    """A value from before the statement: arithmetic on it yields plain ints."""


class _Probe(dict[str, Any]):
    """A namespace that notices reads of values that were there before the statement."""

    def __init__(self, initial: dict[str, Any]) -> None:
        super().__init__(initial)
        self.initial = dict(initial)
        self.old_reads: set[str] = set()

    def _note(self, key: str) -> None:
        if key in self.initial and dict.get(self, key, None) is self.initial[key]:
            self.old_reads.add(key)

    def __getitem__(self, key: str) -> Any:
        self._note(key)
        return super().__getitem__(key)

    def __delitem__(self, key: str) -> None:
        self._note(key)
        super().__delitem__(key)


class _Fuzz:
    """Draws random statements over ``FUZZ_NAMES`` that always terminate.

    Reads favour names written earlier in the text, and blocks that an exception may
    leave early often hold one: the shapes where a wrong definite-assignment rule would
    hide a ref.
    """

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.written: list[str] = []

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return self.draw(st.sampled_from(options))

    def read(self, bound: tuple[str, ...] = ()) -> str:
        if self.written and self.draw(st.integers(0, 4)):
            return self.pick(self.written)
        return self.pick(FUZZ_NAMES + bound)

    def write(self) -> str:
        name = self.pick(FUZZ_NAMES)
        self.written.append(name)
        return name

    def iterable(self, bound: tuple[str, ...]) -> str:
        # Often empty; a walrus may not appear in a comprehension's iterable.
        return f"range({self.expr(1, bound, walrus=False)} % 3)"

    def expr(self, depth: int, bound: tuple[str, ...] = (), walrus: bool = True) -> str:
        kinds = ["name", "name", "int"]
        if depth:
            kinds += ["add", "and", "or", "ifexp", "compare", "comprehension"] * 2
            if walrus:
                kinds += ["walrus"] * 4
        kind = self.pick(kinds)
        sub = depth - 1
        if kind == "name":
            return self.read(bound)
        if kind == "int":
            return str(self.draw(st.integers(0, 2)))
        if kind == "walrus":
            value = self.expr(sub, bound)
            return f"({self.write()} := {value})"
        if kind == "add":
            return f"({self.expr(sub, bound, walrus)} + {self.expr(sub, bound, walrus)})"
        if kind in ("and", "or"):
            return f"({self.expr(sub, bound, walrus)} {kind} {self.expr(sub, bound, walrus)})"
        if kind == "ifexp":
            parts = [self.expr(sub, bound, walrus) for _ in range(3)]
            return f"({parts[0]} if {parts[1]} else {parts[2]})"
        if kind == "compare":
            parts = [self.expr(sub, bound, walrus) for _ in range(3)]
            return f"({parts[0]} < {parts[1]} <= {parts[2]})"
        var = self.pick(FUZZ_COMP_VARS)
        inner = (*bound, var)
        iterable = self.iterable(bound)
        condition = f" if {self.expr(sub, inner, walrus)}" if self.draw(st.booleans()) else ""
        element = self.expr(sub, inner, walrus)
        return f"sum([{element} for {var} in {iterable}{condition}])"

    def block(self, depth: int, loop: str | None, guarded: bool = False) -> list[str]:
        lines = []
        for _ in range(self.draw(st.integers(1, 2))):
            lines += self.statement(depth, loop, guarded)
        return [f"    {line}" for line in lines]

    def statement(self, depth: int, loop: str | None, guarded: bool = False) -> list[str]:
        kinds = ["assign"] * 4 + ["augassign", "expr", "del", "assert"]
        if depth:
            kinds += ["if", "if", "for", "while", "try", "with", "match"]
        if guarded:  # inside `try` or `with`: raise ZeroDivisionError when the divisor is 0
            kinds += ["divide"] * 3
        if loop:
            kinds.append("break")
        if loop == "for":
            kinds.append("continue")
        kind = self.pick(kinds)
        sub = depth - 1
        if kind == "assign":
            value = self.expr(self.draw(st.integers(0, 2)))
            return [f"{self.write()} = {value}"]
        if kind == "augassign":
            value = self.expr(1)
            return [f"{self.write()} += {value}"]
        if kind == "expr":
            return [self.expr(2)]
        if kind == "divide":
            return [f"{self.read()} // {self.read()}"]
        if kind == "del":
            return [f"del {self.read()}"]
        if kind == "assert":
            return [f"assert {self.expr(2)}"]
        if kind in ("break", "continue"):
            return [kind]
        if kind == "if":
            lines = [f"if {self.expr(2)}:", *self.block(sub, loop, guarded)]
            if self.draw(st.booleans()):
                lines += ["else:", *self.block(sub, loop, guarded)]
            return lines
        if kind == "for":
            iterable = self.iterable(())
            lines = [f"for {self.write()} in {iterable}:", *self.block(sub, "for", guarded)]
            if self.draw(st.booleans()):
                lines += ["else:", *self.block(sub, loop, guarded)]
            return lines
        if kind == "while":  # runs at most once: its body ends with `break`
            body = self.block(sub, "while", guarded)
            return [f"while {self.expr(2)}:", *body, "    break"]
        if kind == "try":
            lines = ["try:", *self.block(sub, loop, True)]
            lines += ["except ZeroDivisionError as err:", *self.block(sub, loop, guarded)]
            if self.draw(st.booleans()):
                lines += ["else:", *self.block(sub, loop, guarded)]
            if self.draw(st.booleans()):
                lines += ["finally:", *self.block(sub, loop, guarded)]
            return lines
        if kind == "with":
            return ["with suppress_zero:", *self.block(sub, loop, True)]
        subject = self.expr(1)
        first = self.block(sub, loop, guarded)
        capture = self.write()
        guard = self.expr(1)
        return [
            f"match {subject}:",
            "    case 0:",
            *[f"    {line}" for line in first],
            f"    case {capture} if {guard}:",
            *[f"    {line}" for line in self.block(sub, loop, guarded)],
        ]


@st.composite
def _fuzz_statement(draw: st.DrawFn) -> str:
    # The statement ends by reading every name, so that a name bound only on some
    # paths is read after it on all of them.
    last = f"    ({', '.join(FUZZ_NAMES)})"
    fuzz = _Fuzz(draw)
    body = [line for _ in range(draw(st.integers(1, 3))) for line in fuzz.statement(2, None)]
    return "\n".join(["if 1:", *[f"    {line}" for line in body], last]) + "\n"


# Starting namespaces: each name holds a falsy or a truthy old value, or (rarely) none.
_STARTS = st.lists(
    st.tuples(*[st.sampled_from((0, 1, 0, 1, 0, 1, None))] * len(FUZZ_NAMES)),
    min_size=6,
    max_size=6,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=_fuzz_statement(), starts=_STARTS)
def test_analysis_is_sound_against_execution(
    source: str, starts: list[tuple[int | None, ...]]
) -> None:
    code = compile(source, "<fuzz>", "exec")
    info = analyze(parse_one(source))
    for start in starts:
        # Fresh `_Old` objects, so that `is` tells an old value from anything computed.
        initial: dict[str, Any] = {
            name: _Old(value)
            for name, value in zip(FUZZ_NAMES, start, strict=True)
            if value is not None
        }
        initial["suppress_zero"] = contextlib.suppress(ZeroDivisionError)
        namespace = _Probe(initial)
        with contextlib.suppress(Exception):
            exec(code, namespace)
        assert namespace.old_reads <= info.refs, (source, initial)
        final = dict(namespace)
        final.pop("__builtins__", None)
        changed = {key for key in final if key not in initial or final[key] is not initial[key]}
        assert changed - {"err"} <= info.defs, (source, initial)
        assert set(initial) - set(final) <= info.deletes, (source, initial)


# ---- effects (DESIGN.md §2 rule 9): statements that change an object they read -------------

EFFECTS = [
    ("x[0] = 99", True),
    ("df.col = v", True),
    ("x[i] += 1", True),
    ("del d[k]", True),
    ("del obj.attr", True),
    ("a, b.c = 1, 2", True),
    ("for i in range(3):\n    x[i] = i", True),
    ("if flag:\n    config.debug = True", True),
    ("with open(f) as self.fh:\n    pass", True),
    ("x = 1", False),
    ("x += 1", False),
    ("del x", False),
    ("lst.append(1)", False),  # rule 8: method calls are not seen
    ("y = x[0]", False),
    ("def f():\n    x[0] = 1", False),
    ("class C:\n    a = 1\n    def m(self):\n        self.a = 2", False),
    ("f = lambda: x.__setitem__(0, 1)", False),
    ("[y for y in x]", False),
]


@pytest.mark.parametrize(("source", "effect"), EFFECTS, ids=[s for s, _ in EFFECTS])
def test_statements_that_change_objects_they_read(source: str, effect: bool) -> None:
    (stmt,) = ast.parse(source).body
    assert analyze(stmt).effect is effect
