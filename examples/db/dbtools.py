"""Queries against the sales database that lives beside the `db` server.

This module is yours, not installed anywhere: Sperse ships it by value to the server that
runs `query`. The database is a real SQLite file, `sales.db`, in the working directory of
the server that opens it (`examples/db/data/` with the example's cluster.toml); the first
query creates and fills it.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

DATABASE = Path("sales.db")
REGIONS = ("north", "south", "east", "west")


def _create(path: Path) -> None:
    rng = random.Random(7)
    with sqlite3.connect(path) as db:
        db.execute("create table sales (id integer primary key, region text, amount real)")
        db.executemany(
            "insert into sales (region, amount) values (?, ?)",
            [(rng.choice(REGIONS), round(rng.uniform(5, 500), 2)) for _ in range(10_000)],
        )


def query(sql: str, *params: object) -> list[tuple[object, ...]]:
    """Run one SQL query on the server's database; the rows come back."""
    if not DATABASE.exists():
        _create(DATABASE)
    with sqlite3.connect(DATABASE) as db:
        return db.execute(sql, params).fetchall()


def where_is_the_database() -> str:
    return str(DATABASE.resolve())
