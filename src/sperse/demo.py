"""A guided tour of the reactive workspace: ``make run`` / ``python -m sperse.demo``.

It types statements into a ``Workspace`` the way a person would at the
prompt, and narrates: remote statements return at once with pending names,
dependents wait and run by themselves, and a new definition re-runs
everything downstream.
"""

from __future__ import annotations

import time

import sperse


def main() -> None:
    with sperse.connect(workers=2) as cluster:
        ws = sperse.Workspace(cluster)
        started = time.monotonic()

        def show(event: sperse.CellEvent) -> None:
            if event.cell.id > typed_after[0]:
                return  # entered by the statement being typed: printed below it
            t = time.monotonic() - started
            if event.kind == "done":
                names = ", ".join(f"{n} = {ws[n]!r}" for n in sorted(event.cell.defs) if n in ws)
                what = names or repr(event.value)
                where = f"on {event.cell.where}" if event.cell.is_remote else "here"
                print(f"   [{t:4.1f} s] [{event.cell.id}] {what}  (ran {where})")
            else:
                print(f"   [{t:4.1f} s] {event.kind}: [{event.cell.id}] {event.error}")

        typed_after = [1 << 60]
        ws.subscribe(show)

        def type_in(source: str) -> None:
            for line in source.strip("\n").splitlines():
                print(f">>> {line}")
            typed_after[0] = max((c.id for c in ws.cells()), default=0)
            cells = ws.run(source)
            typed_after[0] = 1 << 60
            for cell in cells:
                if cell.status == "done":
                    if cell.defs:
                        values = ", ".join(f"{n} = {ws[n]!r}" for n in sorted(cell.defs) if n in ws)
                        print(f"    {values}")
                    elif cell.value is not None:
                        print(f"    {cell.value!r}")

        print("Sperse demo: remote statements return at once; dependents run when inputs arrive.\n")
        type_in("import time")
        type_in("def slow_square(n):\n    time.sleep(1)\n    return n * n\n")
        type_in("x = remote slow_square(4)")
        type_in("y = x + 1")
        print(f"    pending now: {ws.pending()}")
        print("    (the prompt is back at once; y waits for x)\n")
        ws.wait("y", timeout=60)

        print("\nA new definition re-runs everything downstream, like a spreadsheet:")
        type_in("x = remote slow_square(10)")
        print(f"    pending now: {ws.pending()}")
        ws.wait("y", timeout=60)

        print("\nErrors propagate, and a new definition clears them:")
        type_in("x = remote slow_square('a')")
        try:
            ws.wait("y", timeout=60)
        except sperse.SperseError as exc:
            print(f"    y -> {type(exc).__name__}: {str(exc).splitlines()[0]}")
        type_in("x = 3")

        print("\nThe same engine from plain Python: @sperse.remote returns a Pending.")
        square = sperse.remote(_square)
        pendings = [square(i) for i in range(5)]
        print(f">>> [square(i) for i in range(5)] -> {pendings[0]!r}, ...")
        print(f"    sperse.gather(...) -> {sperse.gather(*pendings, timeout=60)}")
        print("\nThe graph of the workspace:")
        print(ws.graph())


def _square(n: int) -> int:
    return n * n


if __name__ == "__main__":
    main()
