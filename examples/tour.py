"""A tour of Sperse from plain Python: run it with `.venv/bin/python examples/tour.py`."""

from __future__ import annotations

import sperse


@sperse.remote
def load(n: int) -> list[int]:
    return list(range(n))


@sperse.remote(retries=1)
def total(rows: list[int]) -> int:
    print(f"summing {len(rows)} rows")  # streams back, prefixed by where it ran
    return sum(rows)


def main() -> None:
    with sperse.connect(workers=2):
        rows = load(1000)  # a Pending, at once
        s = total(rows)  # takes the Pending as an argument: runs when rows arrive
        doubled = s.then(lambda v: v * 2)  # runs here, on this thread, when s arrives
        print("total:", s.result(timeout=60))
        print("doubled:", doubled.result(timeout=60))

        # The reactive workspace: statements, pending names, re-propagation.
        ws = sperse.Workspace()
        ws.run("n = 10")
        ws.run("squares = remote [i * i for i in range(n)]\nbiggest = max(squares)")
        print("pending:", sorted(ws.pending()))
        print("biggest:", ws.wait("biggest", timeout=60))
        ws.run("n = 20")  # everything downstream of n runs again
        print("biggest after n = 20:", ws.wait("biggest", timeout=60))


if __name__ == "__main__":
    main()
