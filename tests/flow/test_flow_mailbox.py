"""A respond replica's mailbox keeps each answer until its client says it received it."""

from __future__ import annotations

import asyncio

from sperse._flow.mailbox import FORGET, Mailbox
from sperse._flow.service import Answer

WAIT = 60.0  # a deadline, never a delay


def test_answers_are_taken_again_until_the_client_says_it_received_them() -> None:
    async def scenario() -> None:
        box = Mailbox()
        box.put([Answer("c", 1, "one"), Answer("c", 2, "two"), Answer("d", 3, "three")])
        first = await box.take("c", 0)
        assert [a[1] for a in first] == [1, 2]
        assert [a[1] for a in await box.take("c", 0)] == [1, 2]  # that reply was lost
        box.put([Answer("c", 4, "four")])
        assert [a[1] for a in await box.take("c", 0, received=[1, 2])] == [4]
        assert await box.take("c", 0, received=[4]) == []
        assert [a[1] for a in await box.take("d", 0)] == [3]  # each client its own

    asyncio.run(scenario())


def test_two_polls_of_one_client_at_once_drop_only_what_each_got() -> None:
    async def scenario() -> None:
        box = Mailbox()
        box.put([Answer("c", 1, "one")])
        assert [a[1] for a in await box.take("c", 0)] == [1]
        assert [a[1] for a in await box.take("c", 0)] == [1]  # a second poller's
        box.put([Answer("c", 2, "two")])
        assert [a[1] for a in await box.take("c", 0, received=[1])] == [2]
        assert [a[1] for a in await box.take("c", 0, received=[1])] == [2]  # not dropped

    asyncio.run(scenario())


def test_a_stopping_host_drains_until_every_answer_was_received() -> None:
    async def scenario() -> None:
        box = Mailbox()
        box.put([Answer("c", 1, "one")])
        assert len(await box.take("c", 0)) == 1
        drain = asyncio.create_task(box.drain(WAIT))
        for _ in range(10):  # let it run: taken but not received, it waits
            await asyncio.sleep(0)
        assert not drain.done()
        assert await box.take("c", 0, received=[1]) == []
        await asyncio.wait_for(drain, WAIT)

    asyncio.run(scenario())


def test_the_answers_of_a_client_that_stopped_polling_are_dropped() -> None:
    # Kept until received, an answer of a client that left (got it, and exited before its
    # next poll could say so) would stay for ever: after FORGET seconds without a poll,
    # its client is gone.
    async def scenario() -> None:
        now = [0.0]
        box = Mailbox(clock=lambda: now[0])
        box.put([Answer("gone", 1, "one"), Answer("here", 2, "two")])
        assert len(await box.take("gone", 0)) == 1  # and never again
        now[0] = FORGET / 2
        assert len(await box.take("here", 0)) == 1  # it polls
        now[0] = FORGET + 1
        box.put([Answer("here", 3, "three")])  # a sweep
        assert [a[1] for a in await box.take("here", 0)] == [2, 3]
        assert await box.take("gone", 0) == []
        drain = asyncio.create_task(box.drain(WAIT))
        assert await box.take("here", 0, received=[2, 3]) == []
        await asyncio.wait_for(drain, WAIT)

    asyncio.run(scenario())
