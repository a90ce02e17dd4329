"""Propagation overhead of the reactive workspace on a 100,000-cell chain.

The chain is ``x_0 = 0``, ``x_i = x_{i-1} + 1``. Measured, best of a few runs:

- enter: ``ws.run`` of the whole chain (parse, analyse, compile, run each
  cell) against ``exec`` of each statement's text in a dict (the baseline the
  issue names), and against one ``exec`` of the whole file;
- propagate: redefining ``x_0`` re-runs all 100,000 cells; against executing
  the same statements' precompiled code objects in a dict, one by one (the
  floor: no parsing, no compiling, no bookkeeping).

Targets: propagation ≤ 3x the plain-exec baseline; entering ≤ 3x it too (issue 18).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from sperse import Workspace


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.cells
    statements = ["x_0 = 0"] + [f"x_{i} = x_{i - 1} + 1" for i in range(1, n)]
    source = "\n".join(statements) + "\n"
    codes = [compile(s, "<bench>", "exec") for s in statements]

    def exec_each_text() -> None:
        d: dict[str, object] = {}
        for s in statements:
            exec(s, d)

    def exec_file() -> None:
        exec(source, {})

    def exec_each_code() -> None:
        d: dict[str, object] = {}
        for c in codes:
            exec(c, d)

    def enter() -> None:
        Workspace().run(source)

    ws = Workspace()
    ws.run(source)
    counter = iter(range(1, 1_000_000))

    def propagate() -> None:
        ws.run(f"x_0 = {next(counter)}")

    t_text = best_of(args.repeat, exec_each_text)
    t_file = best_of(args.repeat, exec_file)
    t_code = best_of(args.repeat, exec_each_code)
    t_enter = best_of(args.repeat, enter)
    t_prop = best_of(args.repeat, propagate)
    assert ws[f"x_{n - 1}"] == n - 1 + args.repeat, "propagation did not reach the end"

    def us(t: float) -> str:
        return f"{t / n * 1e6:7.2f} us/cell"

    print(f"chain of {n:,} cells (best of {args.repeat})")
    print(f"  baseline  exec of each statement's text   {us(t_text)}")
    print(f"  baseline  exec of the whole file          {us(t_file)}")
    print(f"  floor     exec of precompiled statements  {us(t_code)}")
    print(
        f"  sperse    enter the chain (ws.run)        {us(t_enter)}  "
        f"= {t_enter / t_text:.2f}x exec-each-text"
    )
    print(
        f"  sperse    propagate a change of x_0       {us(t_prop)}  "
        f"= {t_prop / t_text:.2f}x exec-each-text, {t_prop / t_code:.2f}x the floor"
    )
    verdict = "meets" if t_prop <= 3 * t_text else "misses"
    print(f"propagation overhead {t_prop / t_text:.2f}x plain exec: {verdict} the target (<= 3x)")
    verdict = "meets" if t_enter <= 3 * t_text else "misses"
    print(f"entry overhead {t_enter / t_text:.2f}x plain exec: {verdict} the target (<= 3x)")


if __name__ == "__main__":
    main()
