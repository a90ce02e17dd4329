"""Flows end to end in this process: every operator, the sinks, failures, cancel. No
sleeps: each waits on a Pending with a deadline."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sperse
from sperse._flow.api import InProcess


def run(f: sperse.Flow, seed: int | None = None, **kw: Any) -> sperse.Flow:
    f.run(executor=InProcess(seed=seed, batch=kw.pop("batch", 7)), **kw)
    return f


def collected(build: Any, seed: int | None = None, replicas: int = 1) -> Any:
    f = sperse.Flow("t")
    out = build(f, replicas)
    run(f, seed)
    return out.result(timeout=30)


OPS = [
    (
        "map",
        lambda f, r: f.source(range(5)).map(lambda x: x * 2).on(replicas=r).collect(),
        [0, 2, 4, 6, 8],
    ),
    (
        "filter",
        lambda f, r: f.source(range(6)).filter(lambda x: x % 2).on(replicas=r).collect(),
        [1, 3, 5],
    ),
    (
        "flat_map",
        lambda f, r: f.source(["a b", "c"]).flat_map(str.split).on(replicas=r).collect(),
        ["a", "b", "c"],
    ),
    (
        "batch_map",
        lambda f, r: (
            f.source(range(20))
            .batch_map(lambda xs: [sum(xs)])
            .on(replicas=r)
            .map(lambda x: 1)
            .collect()
        ),
        None,
    ),
    (
        "union",
        lambda f, r: f.source([1, 2]).union(f.source([3])).on(replicas=r).collect(),
        [1, 2, 3],
    ),
    ("shuffle", lambda f, r: f.source(range(9)).shuffle().on(replicas=r).collect(), list(range(9))),
    (
        "window count",
        lambda f, r: f.source(range(5)).window(count=2).collect(),
        [[0, 1], [2, 3], [4]],
    ),
    (
        "fold",
        lambda f, r: (
            f.source("abca").key_by(str).fold(0, lambda n, _: n + 1).on(replicas=r).collect()
        ),
        {"a": 2, "b": 1, "c": 1},
    ),
    (
        "reduce",
        lambda f, r: (
            f.source([("a", 1), ("b", 5), ("a", 3)])
            .key_by(lambda p: p[0])
            .map_values(lambda p: p[1])
            .reduce(max)
            .on(replicas=r)
            .collect()
        ),
        {"a": 3, "b": 5},
    ),
    (
        "map_values",
        lambda f, r: (
            f.source([1, 2]).key_by(str).map_values(lambda x: x * 10).on(replicas=r).collect()
        ),
        {"1": 10, "2": 20},
    ),
    (
        "keyed window",
        lambda f, r: (
            f.source([1, 1, 1, 2]).key_by(str).window(count=2).on(replicas=r).pairs().collect()
        ),
        [("1", [1, 1]), ("1", [1]), ("2", [2])],
    ),
    (
        "keyed filter",
        lambda f, r: f.source([1, 2, 3]).key_by(str).filter(lambda kv: kv[1] > 1).collect(),
        {"2": 2, "3": 3},
    ),
    ("values", lambda f, r: f.source([1, 2]).key_by(str).values().collect(), [1, 2]),
]


def norm(value: Any) -> Any:
    return sorted(value, key=repr) if isinstance(value, list) else value


@pytest.mark.parametrize("replicas", [1, 3])
@pytest.mark.parametrize(("what", "build", "expected"), OPS, ids=[o[0] for o in OPS])
def test_operator(what: str, build: Any, expected: Any, replicas: int) -> None:
    got = collected(build, replicas=replicas)
    if expected is None:
        assert len(got) >= 1
    else:
        assert norm(got) == norm(expected)


def test_scan_keeps_state_per_key_one_output_per_item() -> None:
    def running(total: int, x: int) -> tuple[int, int]:
        return total + x, total + x

    got = collected(
        lambda f, r: (
            f.source([("a", 1), ("b", 10), ("a", 2), ("a", 3)])
            .key_by(lambda p: p[0])
            .map_values(lambda p: p[1])
            .scan(0, running)
            .on(replicas=r)
            .pairs()
            .collect()
        ),
        replicas=2,
    )
    assert sorted(got) == [("a", 1), ("a", 3), ("a", 6), ("b", 10)]


def test_join_pairs_every_left_with_every_right_of_its_key() -> None:
    def build(f: sperse.Flow, r: int) -> Any:
        left = (
            f.source([("k", 1), ("k", 2), ("z", 0)])
            .key_by(lambda p: p[0])
            .map_values(lambda p: p[1])
        )
        right = f.source([("k", "x"), ("q", "y")]).key_by(lambda p: p[0]).map_values(lambda p: p[1])
        return left.join(right).on(replicas=r).pairs().collect()

    assert sorted(collected(build, replicas=2)) == [("k", (1, "x")), ("k", (2, "x"))]


def test_broadcast_gives_every_replica_every_item() -> None:
    got = collected(lambda f, r: f.source([1, 2]).broadcast().on(replicas=3).collect())
    assert sorted(got) == [1, 1, 1, 2, 2, 2]


def test_inspect_and_for_each_see_every_item() -> None:
    seen: list[int] = []
    done: list[int] = []
    f = sperse.Flow("t")
    p = f.source(range(4)).inspect(seen.append).map(lambda x: x + 1).for_each(done.append)
    run(f)
    assert p.result(30) is None
    assert sorted(seen) == [0, 1, 2, 3] and sorted(done) == [1, 2, 3, 4]


def test_read_lines_and_to_dir(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("x y\nz\n")
    (src / "b.txt").write_text("x\n")
    f = sperse.Flow("t")
    counts = f.read_lines(src).flat_map(str.split).key_by(str).fold(0, lambda n, _: n + 1)
    files = counts.on(replicas=2).to_dir(tmp_path / "out")
    run(f)
    paths = files.result(30)
    assert [Path(p).name for p in paths] == ["part-00000", "part-00001"]
    lines = sorted(line for p in paths for line in Path(p).read_text().splitlines())
    assert lines == ["x\t2", "y\t1", "z\t1"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_push_queue_runs_while_items_come() -> None:
    f = sperse.Flow("t")
    q = f.queue()
    out = q.map(lambda x: x * x).collect()
    run(f)
    pusher = threading.Thread(target=lambda: (q.push(1, 2), q.push(3), q.close()))
    pusher.start()
    assert sorted(out.result(30)) == [1, 4, 9]
    pusher.join()


def test_run_reports_progress_and_runs_once() -> None:
    f = sperse.Flow("t")
    out = f.source(range(10)).map(lambda x: x, name="same").collect()
    r = f.run()
    assert r.result(30).items["same"] == 10
    assert r.progress().state == "done" and out.result(0) == list(range(10))
    with pytest.raises(ValueError, match="runs once"):
        f.run()


def test_a_flow_uses_the_cluster_in_use() -> None:
    with sperse.connect(backend="memory") as cluster:
        f = sperse.Flow("t")
        assert f.cluster is cluster
        out = f.source([1]).collect()
        f.run()
        assert out.result(30) == [1]


# -- failures -----------------------------------------------------------------------------------


def fails(build: Any, *, seed: int | None = None) -> sperse.FlowFailed:
    f = sperse.Flow("bad")
    outs = build(f)
    r = f.run(executor=InProcess(seed=seed))
    with pytest.raises(sperse.FlowFailed) as info:
        r.result(30)
    for out in outs:
        with pytest.raises(sperse.FlowFailed):
            out.result(0)
    return info.value


def test_an_operator_that_raises_names_itself_and_the_item() -> None:
    error = fails(
        lambda f: [
            f.source([1, 2, 0, 4]).map(lambda x: 1 / x, name="inv").collect(),
            f.source([5]).collect(),
        ]
    )
    assert error.operator == "inv" and error.item == "0" and error.type_name == "ZeroDivisionError"
    assert "flow 'bad': the operator 'inv' on the item 0 raised ZeroDivisionError" in str(error)
    assert "1 / x" in error.remote_traceback
    assert pickle.loads(pickle.dumps(error)).operator == "inv"


def numbers_then_trouble() -> Iterator[int]:
    yield from range(3000)
    raise OSError("the disk went away")


def test_a_source_that_cannot_be_read_names_itself(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff not utf-8\n")
    error = fails(lambda f: [f.read_lines(tmp_path, name="lines").map(len).collect()])
    assert error.operator == "lines" and error.type_name == "UnicodeDecodeError"
    assert "the operator 'lines' could not read its input: UnicodeDecodeError" in str(error)
    error = fails(lambda f: [f.source(numbers_then_trouble(), name="gen").collect()])
    assert error.operator == "gen" and "OSError: the disk went away" in str(error)


def test_an_unhashable_key_is_named() -> None:
    error = fails(
        lambda f: [f.source([[1], [2]]).key_by(lambda x: x, name="k").fold(0, max).collect()]
    )
    assert error.operator == "k" and error.item == "[1]"
    assert "unhashable" in str(error)


def test_an_unpicklable_item_is_named_with_the_operator_that_made_it() -> None:
    error = fails(
        lambda f: [
            f.source([1, 2])
            .map(lambda x: threading.Lock() if x == 2 else x, name="mk")
            .on(replicas=2)
            .collect()
        ]
    )
    assert error.operator == "mk" and error.item.startswith("<unlocked _thread.lock")


def test_a_key_that_comes_twice_to_a_dict_collect() -> None:
    error = fails(lambda f: [f.source([1, 1]).key_by(str).collect(name="c")])
    assert error.operator == "c" and "came twice" in str(error)


def test_a_loop_that_does_not_end_says_how_many_items_were_left() -> None:
    error = fails(
        lambda f: [
            f.source(range(10))
            .iterate(
                lambda s: s.map(lambda x: x + 1), until=lambda x: x >= 5, max_rounds=3, name="up"
            )
            .collect()
        ]
    )
    assert "2 items were still going round after max_rounds=3" in str(error)
    assert error.operator == "up"


def test_an_error_in_combine_names_the_loop() -> None:
    error = fails(
        lambda f: [
            f.source([1])
            .replay(
                0,
                lambda s, st: s.map(lambda x: x),
                lambda a, x: x,
                lambda old, parts: 1 / 0,
                lambda o, n: True,
                name="rp",
            )
            .collect()
        ]
    )
    assert error.operator == "rp" and "combine function raised ZeroDivisionError" in str(error)


def test_cancel_settles_everything_cancelled() -> None:
    f = sperse.Flow("t")
    q = f.queue()
    out = q.collect()
    r = f.run()
    assert r.cancel()
    with pytest.raises(sperse.TaskCancelled):
        r.result(30)
    with pytest.raises(sperse.TaskCancelled):
        out.result(0)
    assert r.progress().state == "cancelled"


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_fold_with_combine_pre_aggregates_before_the_hash_edge(seed: int | None) -> None:
    lines = ["a b a", "b c", "a"] * 50
    f = sperse.Flow("wc")
    counts = (
        f.source(lines)
        .flat_map(str.split)
        .on(replicas=2)
        .key_by(lambda w: w)
        .fold(0, lambda n, w: n + 1, combine=lambda a, b: a + b, name="count")
        .on(replicas=3)
    )
    out = counts.collect()
    run = f.run(executor=InProcess(seed=seed, batch=30))
    assert out.result(timeout=30) == {"a": 150, "b": 100, "c": 50}
    items = run.result(30).items
    assert items["count.combine"] == 300  # every word, on the sending side
    assert items["count"] <= 3 * 2 * 5  # one partial per key per batch (5 batches of 30 lines)


def test_reduce_combines_on_the_sending_side() -> None:
    f = sperse.Flow("sum")
    out = (
        f.source(range(1000)).key_by(lambda x: x % 3).reduce(lambda a, b: a + b).on(replicas=2)
    ).collect()
    run = f.run(executor=InProcess(batch=100))
    assert out.result(timeout=30) == {
        k: sum(x for x in range(1000) if x % 3 == k) for k in range(3)
    }
    assert run.result(30).items["reduce#3"] <= 3 * 10
