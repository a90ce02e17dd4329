"""One authenticated ``Session`` call, attached to its session: a reader and a writer.

Invariants:

- A stream has two tasks: a reader that hands client messages to its
  :class:`~sperse._server.stream_in.StreamInput` (synchronously, in arrival order), and a
  writer that sends ``Welcome``, then what its :class:`~sperse._server.stream_out.StreamOutput`
  has: replies and the session's queued events.
- A same-host stream (:mod:`sperse._server.local`) skips the tasks when it can: a message is
  handled as soon as it is read (unless the reader has some queued, or it is a big
  ``Submit``), and while the writer waits, what the session queues is written at once (after
  each batch of worker events). The order of messages is the same either way, and only one
  of the two writes at a time: the writer when it runs, ``flush_now`` while it waits.
- A ``Submit`` of many tasks is handled a chunk of ``SUBMIT_CHUNK`` tasks at a time, the
  loop turning in between, so the workers are fed while the rest is read. One of more than
  ``MAX_TASKS`` (:mod:`sperse._core.limits`) is a protocol violation.
- A protocol violation ends the stream with ``Error("protocol")``. The stream also ends
  after ``Goodbye``, when another stream resumes the session (``kick``), when the server
  stops (after sending what is queued), or when the client goes away.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterator
from typing import Any, Protocol

import grpc.aio

from sperse._server import core
from sperse._server.blobs import OutBlob, Violation
from sperse._server.bounds import submit_violation
from sperse._server.config import ServerConfig
from sperse._server.local import LocalCall
from sperse._server.logs import log_event
from sperse._server.stream_in import StreamInput
from sperse._server.stream_out import StreamOutput
from sperse._wire import Piece, pb

__all__ = ["SUBMIT_CHUNK", "Stream", "StreamHost"]

SUBMIT_CHUNK = 100  # tasks of a Submit handled before the loop turns


class StreamHost(Protocol):
    """What a stream needs of the service that runs it."""

    @property
    def config(self) -> ServerConfig: ...
    @property
    def core(self) -> core.ServerCore: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def flushes(self) -> list[Stream]: ...
    def flush(self) -> None: ...


class Stream:
    """One authenticated ``Session`` call, attached to one session (a ``core.Listener``)."""

    def __init__(
        self,
        host: StreamHost,
        session: core.Session,
        context: Any,
        peer: str,
        shm_on: bool,
    ) -> None:
        self.host = host
        self.core = host.core
        self.session = session
        self.context = context
        self.peer = peer
        self.output = StreamOutput(host.core, session, shm_on)
        self.input = StreamInput(
            host.core, session, host.config.max_value_size, self.output, self.wake
        )
        self.violation = ""
        self.kicked = False
        self._wake = asyncio.Event()
        # What is being sent: one iterator of messages per reply, batch of events or blob.
        # Messages to write, a piece of a blob as its wire bytes (``OutBlob.pieces``).
        self._carry: collections.deque[Iterator[pb.ServerMessage | bytes]] = collections.deque()
        # A same-host call is served without its coroutines when it can be: a message is
        # handled as it is read, and events are written as they are queued (see _take_now
        # and flush_now); the coroutines take over for what must wait.
        self._direct = isinstance(context, LocalCall)
        self._parked = False  # the writer waits for a wake-up
        self._reading = False  # the read loop is handling a message (see _read_loop)
        self._flush_scheduled = False
        if isinstance(context, LocalCall):
            context.handler = self._take_now

    @property
    def said_goodbye(self) -> bool:
        return self.input.said_goodbye

    # ---- core.Listener -----------------------------------------------------------------

    def wake(self) -> None:
        if self._direct and self._parked:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.host.flushes.append(self)
                if not self.core.in_pool_batch:  # else the batch's end flushes: no extra turn
                    asyncio.get_running_loop().call_soon(self.host.flush)
            return
        self._wake.set()

    def kick(self) -> None:
        self.kicked = True
        self._wake.set()

    # ---- the two halves --------------------------------------------------------------------

    async def run(self, welcome: pb.ServerMessage) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                reader = tasks.create_task(self._read_loop())
                await self._write_loop(welcome)
                reader.cancel()
        finally:
            self.input.receiver.close()  # the files of values no message named

    async def _read_loop(self) -> None:
        while True:
            message = await self.context.read()
            if message is grpc.aio.EOF:
                return  # no more requests; events still go out until the call ends
            if self.violation or self.said_goodbye:
                return  # (ended by a message handled as it was read: see _take_now)
            # While this message is handled (a big Submit yields between its chunks), later
            # ones wait behind it: tasks, and the calls of a remote object, keep their order.
            self._reading = True
            try:
                if not isinstance(message, Piece) and message.WhichOneof("kind") == "submit":
                    await self._submit(message.submit.tasks)
                else:
                    self.input.handle(message)
            except Violation as exc:
                self._protocol_error(exc)
                return
            finally:
                self._reading = False
            if self.said_goodbye:
                self.wake()
                return

    async def _submit(self, tasks: Any) -> None:
        count = len(tasks)
        too_many = submit_violation(count)
        if too_many:
            raise Violation(too_many)
        for start in range(0, count, SUBMIT_CHUNK):
            self.input.submit_chunk(tasks[start : start + SUBMIT_CHUNK])
            if start + SUBMIT_CHUNK < count:
                await asyncio.sleep(0)  # let the workers' results and the writer through

    def _protocol_error(self, exc: Violation) -> None:
        self.violation = str(exc)
        log_event(
            logging.WARNING,
            "protocol_error",
            session=self.session.session_id,
            peer=self.peer,
            error=self.violation,
        )
        self._wake.set()

    def _take_now(self, message: pb.ClientMessage | Piece) -> bool:
        """Handle a message of a same-host call as it is read (on the loop, from the
        socket's callback). False: the read loop must (a big Submit, or after the end)."""
        if self.violation or self.said_goodbye or self._reading:
            return False
        tasks = None
        if not isinstance(message, Piece) and message.WhichOneof("kind") == "submit":
            tasks = message.submit.tasks
        if tasks is not None and len(tasks) > SUBMIT_CHUNK:
            return False
        try:
            if tasks is not None:
                self.input.submit_chunk(tasks)
            else:
                self.input.handle(message)
        except Violation as exc:
            self._protocol_error(exc)
        if self.said_goodbye:
            self._wake.set()
        return True

    async def _write_loop(self, welcome: pb.ServerMessage) -> None:
        await self.context.write(welcome)
        while True:
            if self.violation:
                error = pb.Error(code="protocol", message=self.violation)
                await self.context.write(pb.ServerMessage(error=error))
                return
            if self.kicked or self.said_goodbye:
                return
            if self._fill():
                for message in self._carry[0]:
                    await self.context.write(message)
                self._carry.popleft()
                continue
            if self.host.stopping:
                return
            self._wake.clear()
            self._parked = True
            try:
                await self._wake.wait()
            finally:
                self._parked = False

    def _fill(self) -> bool:
        """Whether there is something to send (in ``_carry``), taking the next reply or
        batch of events when it is empty."""
        if not self._carry:
            for item in self.output.next_messages():
                self._carry.append(item.pieces() if isinstance(item, OutBlob) else iter((item,)))
        return bool(self._carry)

    def flush_now(self) -> None:
        """Write what is queued, synchronously, while the same-host client reads; hand the
        rest (and any ending) to the writer."""
        if not self._flush_scheduled:
            return  # flushed already
        self._flush_scheduled = False
        context = self.context
        if not self._parked:
            return  # the writer runs: it sends what is queued
        assert isinstance(context, LocalCall)
        if not (self.violation or self.kicked or self.said_goodbye or self.host.stopping):
            try:
                while not context.write_blocked and self._fill():
                    for message in self._carry[0]:
                        context.write_now(message)
                        if context.write_blocked:
                            break
                    else:
                        self._carry.popleft()
            except ConnectionError:
                pass  # the writer finds out, and the call ends
            if not context.write_blocked and not self._carry:
                return
        self._wake.set()
