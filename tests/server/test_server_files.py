"""The server's unlinking of shared memory files: after the loop's turn, on a thread of its
own (freeing a big file's pages takes milliseconds the loop should not wait for), and all of
it done when the server stops. Real files in /dev/shm, a real event loop."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from server_helpers import shm_files

from sperse._serialize import shm
from sperse._server.files import Files

pytestmark = pytest.mark.skipif(not shm.available(), reason="no /dev/shm on this host")

WAIT = 30.0


def test_files_are_unlinked_off_the_loop_and_all_of_them_by_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = shm.server_prefix() + "files-"
    unlinked_on: list[str] = []
    real_unlink = shm.unlink

    def unlink(names: list[str]) -> int:
        unlinked_on.append(threading.current_thread().name)
        return real_unlink(names)

    monkeypatch.setattr(shm, "unlink", unlink)

    async def scenario() -> None:
        files = Files(asyncio.get_running_loop())
        first = [shm.write(prefix, os.urandom(1000)) for _ in range(3)]
        files.unlink_soon(first)
        assert set(first) <= shm_files(), "not before the loop's next turn"
        deadline = asyncio.get_running_loop().time() + WAIT
        while set(first) & shm_files():
            assert asyncio.get_running_loop().time() < deadline, "never unlinked"
            await asyncio.sleep(0.01)  # (a poll of /dev/shm with a deadline)
        assert unlinked_on == ["sperse-unlink"], "by the thread, not the loop"

        last = [shm.write(prefix, b"x")]
        files.unlink_soon(last)
        files.close()  # (before the loop's turn: close unlinks what waits, too)
        assert not set(last) & shm_files()

    asyncio.run(scenario())
    assert not {name for name in shm_files() if name.startswith(prefix)}
