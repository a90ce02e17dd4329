"""``SperseBackend``: the client of one ``sperse server``, over gRPC.

One asyncio loop on a background thread ("the I/O thread") owns the gRPC
channel and the session stream. Callers on other threads only enqueue
messages (``submit``, ``cancel``, ``release``) or wait on a future
(``fetch``, ``stats``); events go to the sink on the I/O thread.

Errors of grpc are translated here, and only here, into Sperse's own:
a refused token is ``AuthenticationError``; no answer at the address is
``ServerUnavailable``; a stream that breaks and cannot be resumed within
``reconnect_timeout`` ends every unfinished task with ``ServerLost``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import platform
import secrets
import select
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from sperse._backends.base import (
    Done,
    ErrorInfo,
    ErrorKind,
    EventSink,
    Failed,
    Output,
    ServerInfo,
    Started,
    StatementTask,
    TaskSpec,
)
from sperse._serialize import RemoteRef, RemoteValue, dumps_oob, loads_oob
from sperse._wire import MAX_MESSAGE, PROTOCOL, BlobReceiver, BlobSender, pb
from sperse._wire.sperse_pb2_grpc import SperseStub
from sperse.errors import (
    AuthenticationError,
    ProtocolError,
    ServerLost,
    ServerUnavailable,
    SperseError,
)

__all__ = ["EmbeddedServer", "SperseBackend", "parse_url"]

log = logging.getLogger("sperse.client")
T = TypeVar("T")

DEFAULT_INLINE_LIMIT = 1 << 20


def parse_url(url: str) -> str:
    """``sperse://host:port`` (or ``host:port``) → ``host:port``."""
    address = url.removeprefix("sperse://").rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not a server address: {url!r}; expected sperse://HOST:PORT")
    return address


@dataclass(slots=True)
class _Task:
    spec: TaskSpec
    is_statement: bool  # its result is a dict of the names a remote statement defined


class SperseBackend:
    """Runs tasks on one ``sperse server``."""

    def __init__(
        self,
        address: str,
        *,
        token: str,
        tls_ca: bytes | None = None,
        tls: bool = False,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 5.0,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        process: EmbeddedServer | None = None,
        client_name: str = "",
        python_version: str | None = None,
    ) -> None:
        self.address = parse_url(address)
        self._token = token
        self._tls = tls or tls_ca is not None
        self._tls_ca = tls_ca
        self._connect_timeout = connect_timeout
        self._reconnect_timeout = reconnect_timeout
        self._inline_limit = inline_limit
        self._process = process
        self._client_name = client_name or f"{platform.node()}:{os.getpid()}"
        self._python_version = python_version or platform.python_version()
        self._sink: EventSink | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="sperse-io", daemon=True)
        self._sender = BlobSender()
        self._tasks: dict[str, _Task] = {}
        self._tasks_lock = threading.Lock()
        self._requests = itertools.count(1)
        self._replies: dict[int, asyncio.Future[Any]] = {}
        # Messages for the I/O thread, and whether a wake-up of it is already on its way.
        self._outbox: collections.deque[pb.ClientMessage] = collections.deque()
        self._outbox_lock = threading.Lock()
        self._outbox_ready: asyncio.Event | None = None
        self._wake_scheduled = False
        self._welcome: pb.Welcome | None = None
        self._session_id = ""
        self._channel: grpc.aio.Channel | None = None
        self._stream: Any = None
        self._closed = False
        self._lost: SperseError | None = None
        self._main: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        """Connect and authenticate; raises AuthenticationError, ServerUnavailable, ..."""
        self._sink = sink
        self._thread.start()
        try:
            self._call(self._open(), self._connect_timeout + 1)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown(), 5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if self._process is not None:
            self._process.stop()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    # ---- the protocol (I/O thread) ----------------------------------------------

    async def _open(self) -> None:
        self._outbox_ready = asyncio.Event()
        await self._connect(resume=False)
        self._main = asyncio.create_task(self._serve())

    async def _connect(self, *, resume: bool) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ]
        if self._tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self._tls_ca)
            channel = grpc.aio.secure_channel(self.address, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(self.address, options=options)
        self._channel = channel
        try:
            await asyncio.wait_for(channel.channel_ready(), self._connect_timeout)
        except TimeoutError:
            await channel.close()
            raise ServerUnavailable(
                f"no sperse server answered at {self.address} within {self._connect_timeout} s: "
                "is it running (sperse server --port PORT), and is the address right?"
            ) from None
        stream = SperseStub(channel).Session()  # type: ignore[no-untyped-call]
        hello = pb.Hello(
            token=self._token,
            protocol=PROTOCOL,
            client_version=_version(),
            python_version=self._python_version,
            session_id=self._session_id if resume else "",
            client_name=self._client_name,
        )
        try:
            await stream.write(pb.ClientMessage(hello=hello))
            reply = await asyncio.wait_for(stream.read(), self._connect_timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self.address) from exc
        if reply is grpc.aio.EOF or reply is None:
            raise ServerLost(f"the server at {self.address} closed the session at once")
        kind = reply.WhichOneof("kind")
        if kind == "error":
            raise _error_from(reply.error, self.address)
        if kind != "welcome":
            raise ProtocolError(f"the server at {self.address} answered {kind!r} to hello")
        self._welcome = reply.welcome
        if resume and not reply.welcome.resumed:
            raise ServerLost(f"the server at {self.address} no longer has this session")
        self._session_id = reply.welcome.session_id
        self._stream = stream

    async def _serve(self) -> None:
        """Run the session; on a broken stream, resume it or end everything in ServerLost."""
        while not self._closed:
            receiver = BlobReceiver()
            sender = asyncio.create_task(self._send_loop(self._stream))
            try:
                await self._receive_loop(self._stream, receiver)
                error: BaseException | None = None
            except grpc.aio.AioRpcError as exc:
                error = exc
            except SperseError as exc:
                error = exc
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            if self._closed:
                return
            if isinstance(error, AuthenticationError | ProtocolError):
                self._fail_everything(error)
                return
            if not await self._resume():
                reason = "" if error is None else f" ({_describe_grpc(error)})"
                self._fail_everything(
                    ServerLost(
                        f"lost the connection to server {self.name!r} at {self.address}{reason} "
                        f"and could not resume within {self._reconnect_timeout} s"
                    )
                )
                return

    async def _resume(self) -> bool:
        if self._process is not None and not self._process.alive():
            return False
        deadline = time.monotonic() + self._reconnect_timeout
        delay = 0.05
        while time.monotonic() < deadline and not self._closed:
            with contextlib.suppress(Exception):
                if self._channel is not None:
                    await self._channel.close()
            try:
                await self._connect(resume=True)
                log.info("resumed session %s with %s", self._session_id, self.address)
                self._ask_again()
                return True
            except (ServerUnavailable, ServerLost, grpc.aio.AioRpcError):
                if self._process is not None and not self._process.alive():
                    return False
            except SperseError:
                return False
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay *= 2
        return False

    def _ask_again(self) -> None:
        """After a resume: an event written just before the break may be lost, so name every
        unfinished task again (with no work): the server re-sends the outcome of finished
        ones and ignores running ones."""
        with self._tasks_lock:
            ids = list(self._tasks)
        if ids:
            tasks = [pb.Task(task_id=task_id) for task_id in ids]
            self._send([pb.ClientMessage(submit=pb.Submit(tasks=tasks))])

    async def _send_loop(self, stream: Any) -> None:
        ready = self._outbox_ready
        assert ready is not None
        while True:
            await ready.wait()
            ready.clear()
            with self._outbox_lock:
                batch = list(self._outbox)
                self._outbox.clear()
                self._wake_scheduled = False
            for message in _merge_submits(batch):
                await stream.write(message)

    async def _receive_loop(self, stream: Any, receiver: BlobReceiver) -> None:
        while True:
            message = await stream.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("kind")
            if kind == "blob":
                receiver.add(message.blob)
            elif kind == "events":
                for event in message.events.events:
                    self._on_event(event, receiver)
            elif kind == "fetch_reply" or kind == "stats":
                reply = getattr(message, kind)
                future = self._replies.pop(reply.request_id, None)
                if future is not None and not future.done():
                    if kind == "fetch_reply" and not reply.error:
                        future.set_result(receiver.pickled(reply.value))
                    else:
                        future.set_result(reply)
            elif kind == "error":
                raise _error_from(message.error, self.address)

    def _on_event(self, event: pb.Event, receiver: BlobReceiver) -> None:
        sink = self._sink
        assert sink is not None
        task_id = event.task_id
        where = self.name
        kind = event.WhichOneof("kind")
        if kind == "started":
            sink(Started(task_id, where))
        elif kind == "output":
            stderr = event.output.stream == "stderr"
            sink(Output(task_id, where, "stderr" if stderr else "stdout", event.output.text))
        elif kind == "done":
            with self._tasks_lock:
                task = self._tasks.pop(task_id, None)
            try:
                values = {v.name: self._value(v, receiver) for v in event.done.values}
            except SperseError as exc:
                sink(
                    Failed(task_id, where, ErrorInfo("serialization", type(exc).__name__, str(exc)))
                )
                return
            if task is not None and task.is_statement:
                sink(Done(task_id, where, values))
            else:
                sink(Done(task_id, where, values.get("")))
        elif kind == "failed":
            with self._tasks_lock:
                self._tasks.pop(task_id, None)
            f = event.failed
            info = ErrorInfo(_kind(f.kind), f.type_name, f.message, f.traceback)
            sink(Failed(task_id, where, info))

    def _value(self, value: pb.Value, receiver: BlobReceiver) -> Any:
        if value.WhichOneof("kind") == "ref":
            r = value.ref
            ref = RemoteRef(r.object_id, self.name, r.type_name, r.size, r.repr)
            handle = RemoteValue(ref, self._fetch)
            weakref.finalize(handle, self._release_one, r.object_id)
            return handle
        data, buffers = receiver.pickled(value.inline)
        writable = [bytearray(b) for b in buffers]  # arrays the user may change in place
        return loads_oob(data, writable, what=f"a result from {self.name}")

    def _fail_everything(self, error: SperseError) -> None:
        self._lost = error
        with self._tasks_lock:
            tasks, self._tasks = self._tasks, {}
        for future in self._replies.values():
            if not future.done():
                future.set_exception(error)
        self._replies.clear()
        sink = self._sink
        if sink is None:
            return
        kind: ErrorKind = "server_lost" if isinstance(error, ServerLost) else "internal"
        for task_id in tasks:
            sink(Failed(task_id, self.name, ErrorInfo(kind, type(error).__name__, str(error))))

    async def _shutdown(self) -> None:
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        if self._stream is not None:
            with contextlib.suppress(Exception):  # the session is over: free it at once
                await self._stream.write(pb.ClientMessage(goodbye=pb.Goodbye()))
                await self._stream.done_writing()
        if self._channel is not None:
            await self._channel.close()

    # ---- the Backend protocol (any thread) ----------------------------------------

    @property
    def name(self) -> str:
        return self._welcome.server_name if self._welcome is not None else self.address

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        if self._lost is not None:
            raise self._lost
        messages: list[pb.ClientMessage] = []
        tasks = []
        for spec in specs:
            data, buffers, refs = dumps_oob(spec.work, what=spec.label or "the task")
            blobs: list[pb.Blob] = []
            task = pb.Task(
                task_id=spec.task_id,
                work=self._sender.pickled(data, [b.raw() for b in buffers], blobs),
                refs=refs,
                retries=spec.retries,
                inline_limit=self._inline_limit,
                label=spec.label,
            )
            messages.extend(pb.ClientMessage(blob=b) for b in blobs)
            tasks.append(task)
        messages.append(pb.ClientMessage(submit=pb.Submit(tasks=tasks)))
        with self._tasks_lock:
            for spec in specs:
                returns_names = isinstance(spec.work, StatementTask) and not spec.work.is_expression
                self._tasks[spec.task_id] = _Task(spec, returns_names)
        self._send(messages)

    def cancel(self, task_id: str) -> None:
        self._send([pb.ClientMessage(cancel=pb.Cancel(task_ids=[task_id]))])

    def release(self, object_ids: Iterable[str]) -> None:
        ids = list(object_ids)
        if ids and not self._closed and self._lost is None:
            self._send([pb.ClientMessage(release=pb.Release(object_ids=ids))])

    def _release_one(self, object_id: str) -> None:
        with contextlib.suppress(Exception):
            self.release([object_id])

    def _send(self, messages: list[pb.ClientMessage]) -> None:
        """Queue messages for the I/O thread (any thread); wakes it once per batch."""
        ready = self._outbox_ready
        if ready is None or self._closed:
            raise ServerLost(f"the connection to {self.address} is closed")
        with self._outbox_lock:
            self._outbox.extend(messages)
            wake = not self._wake_scheduled
            self._wake_scheduled = True
        if wake:
            self._loop.call_soon_threadsafe(ready.set)

    def _fetch(self, ref: RemoteRef, timeout: float | None) -> Any:
        data, buffers = self._call(self._request("fetch", object_id=ref.object_id), timeout)
        writable = [bytearray(b) for b in buffers]  # arrays the user may change in place
        return loads_oob(data, writable, what=f"{ref.type_name} fetched from {ref.server}")

    def stats(self, timeout: float | None = 10.0) -> dict[str, int]:
        """The server's counters (objects held, tasks done, workers...)."""
        reply = self._call(self._request("stats"), timeout)
        fields = reply.DESCRIPTOR.fields
        return {f.name: getattr(reply, f.name) for f in fields if f.name != "request_id"}

    async def _request(self, kind: str, **fields: Any) -> Any:
        if self._lost is not None:
            raise self._lost
        request_id = next(self._requests)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._replies[request_id] = future
        if kind == "fetch":
            message = pb.ClientMessage(fetch=pb.Fetch(request_id=request_id, **fields))
        else:
            message = pb.ClientMessage(stats=pb.StatsRequest(request_id=request_id))
        self._send([message])
        reply = await future
        if kind == "fetch" and isinstance(reply, pb.FetchReply):
            raise SperseError(f"fetch of {fields.get('object_id')} failed: {reply.error}")
        return reply

    def servers(self) -> list[ServerInfo]:
        w = self._welcome
        if w is None:
            return []
        with self._tasks_lock:
            busy = len(self._tasks)
        return [
            ServerInfo(
                w.server_name,
                frozenset(w.tags),
                dict(w.resources),
                workers=w.workers,
                busy=busy,
                address=self.address,
            )
        ]


_SUBMIT_BYTES = MAX_MESSAGE // 2


def _merge_submits(batch: list[pb.ClientMessage]) -> list[pb.ClientMessage]:
    """Adjacent Submits become one (the server takes many tasks per message), within limits."""
    out: list[pb.ClientMessage] = []
    size = 0
    for message in batch:
        if message.WhichOneof("kind") != "submit":
            out.append(message)
            continue
        for task in message.submit.tasks:
            task_size = task.ByteSize()
            last = out[-1] if out else None
            if (
                last is not None
                and last.WhichOneof("kind") == "submit"
                and size + task_size < _SUBMIT_BYTES
            ):
                last.submit.tasks.append(task)
                size += task_size
            else:
                out.append(pb.ClientMessage(submit=pb.Submit(tasks=[task])))
                size = task_size
    return out


def _kind(kind: str) -> Any:
    known = {"raised", "worker_died", "cancelled", "serialization", "missing_module", "internal"}
    return kind if kind in known else "internal"


def _error_from(error: pb.Error, address: str) -> SperseError:
    if error.code == "auth":
        return AuthenticationError(
            f"the server at {address} refused the token: {error.message}. Pass the server's "
            "token (connect(url, token=...), SPERSE_TOKEN, or a token file)."
        )
    if error.code == "version":
        return ProtocolError(f"version mismatch with the server at {address}: {error.message}")
    return ProtocolError(
        f"the server at {address} ended the session: {error.code}: {error.message}"
    )


def _translate(exc: grpc.aio.AioRpcError, address: str) -> SperseError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailable(f"the server at {address} is unavailable: {exc.details()}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"the server at {address} refused the token: {exc.details()}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ProtocolError(
            f"the server at {address} refused an oversized message: {exc.details()}"
        )
    return ServerLost(f"the session with {address} failed: {code.name}: {exc.details()}")


def _describe_grpc(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def _version() -> str:
    from sperse import __version__

    return __version__


# ---- the embedded server ---------------------------------------------------------------


class EmbeddedServer:
    """A ``sperse server`` child process on a random loopback port, owned by this client.

    The token goes to it on its stdin, never on a command line (where ``ps``
    shows it). It keeps reading stdin: when this process dies, stdin closes
    and the server stops by itself, so no orphan survives its client.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        name: str = "local",
        tags: Iterable[str] = (),
        resources: dict[str, float] | None = None,
        ready_timeout: float = 30.0,
        log_level: str = "warning",
    ) -> None:
        self.token = secrets.token_urlsafe(32)
        args = [sys.executable, "-m", "sperse.server", "--host", "127.0.0.1", "--port", "0"]
        args += ["--token-stdin", "--name", name, "--log-level", log_level]
        if workers:
            args += ["--workers", str(workers)]
        for tag in tags:
            args += ["--tag", tag]
        for key, value in (resources or {}).items():
            args += ["--resource", f"{key}={value}"]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C at the prompt is ours to handle, not the server's
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(self.token.encode() + b"\n")
        self.process.stdin.flush()
        self.address = self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                self.stop()
                raise ServerUnavailable(
                    f"the embedded sperse server did not start (exit code {self.process.returncode}); "
                    "its error output is above"
                )
            ready, _, _ = select.select([stdout], [], [], remaining)
            if ready:
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        text = line.decode().strip()
        if " ready at " not in text:
            self.stop()
            raise ServerUnavailable(f"the embedded sperse server said {text!r} instead of ready")
        return parse_url(text.rsplit(" ready at ", 1)[1])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Close its stdin (it stops itself), then terminate, then kill: by its own pid."""
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
