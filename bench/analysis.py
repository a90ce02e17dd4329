"""Benchmark: statement analysis throughput (target: at least 20,000 statements/s).

Builds a 10,000-statement module that mixes the shapes people type at a prompt
(assignments, calls, imports, comprehensions, loops, functions with bodies, classes with
methods), parses it once, and times ``analyze`` over every top-level statement.

Run: ``.venv/bin/python bench/analysis.py``
"""

from __future__ import annotations

import ast
import time

from sperse._lang.analysis import analyze

TARGET_PER_SECOND = 20_000
STATEMENTS = 10_000
RUNS = 5

# One template per statement shape; `{i}` makes every statement's names distinct.
TEMPLATES = (
    "x{i} = load(path{i}, limit=10)",
    "total{i} = a{i} + b{i} * 2 - c{i}[0]",
    "y{i} += step{i}",
    "import numpy as np{i}",
    "from os.path import join as join{i}, exists",
    "squares{i} = [v * v for v in values{i} if v % 2]",
    "index{i} = {{k: v for k, v in pairs{i}.items() if k not in skip{i}}}",
    "print(f'{{name{i}!r}}: {{len(items{i})}} items')",
    "for row{i} in rows{i}:\n    acc{i} = acc{i} + row{i}.value\n    seen{i}.add(row{i}.key)",
    "def fn{i}(a, b=default{i}, *args, key=None, **kw):\n"
    "    '''Doc.'''\n"
    "    result = []\n"
    "    for item in a:\n"
    "        if key is not None and item > b:\n"
    "            result.append(helper{i}(item, key))\n"
    "        else:\n"
    "            result.append(item)\n"
    "    return sorted(result, reverse=flag{i})",
    "class Model{i}(Base{i}):\n"
    "    rate = 0.5\n"
    "    def __init__(self, data):\n"
    "        self.data = data\n"
    "    def predict(self, x):\n"
    "        return [self.rate * v + offset{i} for v in x]\n"
    "    @property\n"
    "    def size(self):\n"
    "        return len(self.data)",
    "if ready{i}:\n    out{i} = compute{i}(x{i})\nelse:\n    out{i} = None",
    "with open(fname{i}) as fh{i}:\n    text{i} = fh{i}.read()",
    "try:\n    val{i} = int(s{i})\nexcept ValueError as err:\n    val{i} = fallback{i}",
    "result{i} = sum(w * x for w, x in zip(weights{i}, xs{i}))",
    "cfg{i}['key'] = value{i}",
    "a{i}, (b{i}, *c{i}) = pair{i}",
    "obj{i}.method(arg{i}).chain(lambda q: q + bias{i})",
)


def build_source(count: int = STATEMENTS) -> str:
    return "\n".join(TEMPLATES[i % len(TEMPLATES)].format(i=i) for i in range(count)) + "\n"


def main() -> None:
    source = build_source()
    statements = ast.parse(source).body
    assert len(statements) == STATEMENTS, len(statements)
    shadowed = frozenset({"print"})
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for statement in statements:
            analyze(statement, shadowed=shadowed)
        best = min(best, time.perf_counter() - start)
    rate = len(statements) / best
    verdict = "meets" if rate >= TARGET_PER_SECOND else "MISSES"
    print(
        f"analyze: {len(statements):,} statements, best of {RUNS}: {best * 1000:.1f} ms, "
        f"{rate:,.0f} statements/s ({verdict} the target of {TARGET_PER_SECOND:,}/s)"
    )


if __name__ == "__main__":
    main()
