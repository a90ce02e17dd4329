"""A script for `sperse run examples/tour_script.py`: the prompt's semantics, from a file.

`sperse run` enters each statement into a reactive workspace, as the `sperse` prompt does.
A call of a `@sperse.remote` function returns a Pending at once, as under plain Python, and
the name it is assigned to is pending until the Pending settles; a statement that reads a
pending name waits and runs by itself then (so its `.result()` returns at once); a new
definition later in the file re-runs what depends on it. `sperse run` prints each cell that
finishes later, and waits for all pending work at the end.

(Files run by `sperse run` may also use the prompt's `x = remote f(y)` syntax; this one
sticks to plain Python so that linters and editors read it.)
"""

import time

import sperse


@sperse.remote
def load(n):
    time.sleep(0.2)
    return list(range(n))


@sperse.remote
def squares(n):
    return [i * i for i in range(n)]


rows = load(1000)  # a Pending, at once: `rows` is pending
total = sum(rows.result())  # waits for rows, then runs by itself
print("total:", total)  # runs when total is ready

n = 10
sq = squares(n)
biggest = max(sq.result())
print("biggest:", biggest)
n = 20  # everything downstream of n runs again; the run for n = 10 is cancelled, never shown
