"""The server's total bounds on memory (docs/server.md, "Bounds"): each one as the state
machine keeps it, and as a client of a real server meets it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from server_helpers import RawSession, ServerThread, call_work, run, shm_files
from state_harness import PREFIX, files, machine, value

from sperse._core import Failed
from sperse._server.actions import Unlink
from sperse._server.cli import build_parser
from sperse._server.config import ServerConfig, ServerConfigError, check_config

MiB = 1 << 20


def ones(n: int) -> Any:
    return np.ones(n, dtype=np.uint8)


# ---- held values: --max-held-bytes ---------------------------------------------------------


def test_a_result_past_the_held_cap_fails_its_task_and_its_files_go() -> None:
    m = machine(max_held_bytes=3000)
    for task_id in ("t1", "t2", "t3"):
        m.submit(task_id, inline_limit=100)
    m.done("t1", value("x", files(f"{PREFIX}a1-0")))  # 1025 bytes each
    m.done("t2", value("x", files(f"{PREFIX}a2-0")))
    m.done("t3", value("x", files(f"{PREFIX}a3-0")), value("small"))
    assert m.sent() == ["done t1", "done t2", "failed t3 LimitExceeded"]
    (failed,) = [e.event for e in m.emits() if isinstance(e.event, Failed)]
    message = failed.error.message
    assert "--max-held-bytes" in message and "release" in message.lower(), message
    assert Unlink((f"{PREFIX}a3-0",)) in m.of(Unlink)
    assert m.state.held.bytes == 2050 == m.state.sessions["s"].object_bytes

    m.feed(m.state.release("s", "obj1"))  # room again
    m.submit("t4", inline_limit=100)
    m.done("t4", value("x", files(f"{PREFIX}a4-0")))
    assert m.sent()[-1] == "done t4"
    m.feed(m.state.close_session("s", "session_closed", "goodbye"))
    assert m.state.held.bytes == 0


def test_small_results_are_not_held_so_not_capped() -> None:
    m = machine(max_held_bytes=10)
    m.submit("t1", inline_limit=1 << 20)
    m.done("t1", value("x", files(f"{PREFIX}a1-0")))
    assert m.sent() == ["done t1"]


def test_the_held_cap_is_a_server_option() -> None:
    args = build_parser().parse_args(["--max-held-bytes", "4G"])
    assert args.max_held_bytes == 4 << 30
    assert ServerConfig().max_held_bytes > 0  # a fraction of the memory
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--max-held-bytes", "lots"])
    with pytest.raises(ServerConfigError, match="--max-held-bytes"):
        check_config(ServerConfig(max_held_bytes=0))


def test_a_client_past_the_held_cap_gets_a_clear_error(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(max_held_bytes=5 * MiB)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            held = []
            for task_id in ("a", "b"):
                await s.submit(s.task(task_id, call_work(ones, 2 * MiB), inline_limit=MiB))
                (v,) = (await s.done(task_id)).values
                assert v.WhichOneof("kind") == "ref"
                held.append(v.ref.object_id)
            await s.submit(s.task("c", call_work(ones, 2 * MiB), inline_limit=MiB))
            failure = await s.failed("c")
            assert failure.type_name == "LimitExceeded"
            assert "--max-held-bytes" in failure.message and "5.0 MiB" in failure.message
            stats = await server.wait_stats(lambda st: len(shm_files()) == 2)
            assert stats.object_bytes_total <= 5 * MiB
            await s.release(held[0])
            await s.submit(s.task("d", call_work(ones, 2 * MiB), inline_limit=MiB))
            (v,) = (await s.done("d")).values
            assert v.WhichOneof("kind") == "ref"

    run(scenario())
