"""The terminal REPL: prompt_toolkit in front of a :class:`Session`.

Threads (DESIGN.md §2 rule 6). Everything here runs on one thread, the
user's. That thread owns an asyncio loop that runs only while the prompt
waits for input; statements run outside it, between prompts. While the prompt
waits, a task in the loop sleeps on the cluster's waker (the I/O thread calls
it after queuing work) and drains the queue inside ``run_in_terminal``: the
prompt is hidden, arrivals print, and the prompt is drawn again below them
with the half-typed line, cursor and completion state intact.

Keys typed before the next prompt is drawn (while a statement runs, while
arrivals print, in the gap between two prompts) act as if typed at that prompt:
the terminal stays in the prompt's raw mode except while a statement runs, and
then Ctrl-D is an ordinary key (see :mod:`sperse.repl._tty`).

Keys: Enter runs a complete input and otherwise adds a line (indented after a
colon); Alt-Enter (Esc Enter) runs it whatever it is; Tab completes, or indents
at the start of a line; Ctrl-C clears the line at the prompt and interrupts a
running local statement; Ctrl-D on an empty line exits, after asking when
work is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.application import get_app, run_in_terminal
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.styles import Style

from sperse._workspace import Workspace
from sperse.repl._commands import COMMANDS, CommandRegistry
from sperse.repl._completion import WorkspaceCompleter
from sperse.repl._input import indent_after, is_complete
from sperse.repl._lexer import STYLE, SperseLexer
from sperse.repl._session import Session
from sperse.repl._tty import TtyModes, prompt_input

__all__ = ["Repl", "history_path"]

PROMPT = ">>> "
CONTINUATION = "... "


def history_path() -> Path:
    """``$SPERSE_HISTORY``, else ``$XDG_DATA_HOME/sperse/history`` (~/.local/share)."""
    explicit = os.environ.get("SPERSE_HISTORY")
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.join("~", ".local", "share")
    return Path(data).expanduser() / "sperse" / "history"


def _history(path: Path | None) -> History:
    if path is None:
        return InMemoryHistory()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError:
        return InMemoryHistory()  # a read-only home: the session works, without memory
    return FileHistory(str(path))


class Repl:
    """An interactive prompt on a workspace. ``run()`` returns the exit status."""

    def __init__(
        self,
        ws: Workspace,
        *,
        history: Path | None = None,
        commands: CommandRegistry = COMMANDS,
        session: Session | None = None,
    ) -> None:
        self.ws = ws
        self.session = session or Session(ws, commands=commands)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._input = prompt_input()  # one input for every prompt: keys typed ahead pass on
        self._prompt: PromptSession[str] = PromptSession(
            PROMPT,
            input=self._input,
            multiline=True,
            prompt_continuation=lambda width, line, wrapped: CONTINUATION.rjust(width),
            lexer=PygmentsLexer(SperseLexer),
            style=Style.from_dict(STYLE),
            history=_history(history),
            completer=WorkspaceCompleter(lambda: self.ws, self.session.commands),
            complete_while_typing=False,
            key_bindings=_key_bindings(),
            rprompt=self._rprompt,
            enable_open_in_editor=False,
        )

    # ---- the loop ------------------------------------------------------------

    def run(self, banner: str = "") -> int:
        if banner:
            self.session.write(banner)
        loop = asyncio.new_event_loop()  # not asyncio.run: it would turn Ctrl-C into cancelling
        self._loop = loop
        try:
            with TtyModes() as tty:
                while True:
                    tty.hold()  # again: an interrupt may have cut the way back short
                    self._drain()
                    try:
                        text = loop.run_until_complete(self._read())
                    except KeyboardInterrupt:
                        continue  # Ctrl-C at the prompt: a fresh line
                    except EOFError:
                        if self._confirm_exit():
                            return 0
                        continue
                    try:
                        with tty.statement():
                            self.session.execute(text)
                        self._drain()
                    except KeyboardInterrupt:
                        self.session.error("KeyboardInterrupt")
        finally:
            self._loop = None
            loop.close()

    def _drain(self) -> None:
        try:
            self.session.drain()
        except KeyboardInterrupt:
            self.session.error("KeyboardInterrupt")

    async def _read(self) -> str:
        arrivals = asyncio.ensure_future(self._show_arrivals())
        try:
            return await self._prompt.prompt_async()
        finally:
            arrivals.cancel()
            await asyncio.wait([arrivals])
            if not arrivals.cancelled() and arrivals.exception() is not None:
                self.session.error(f"arrivals stopped showing: {arrivals.exception()!r}")

    async def _show_arrivals(self) -> None:
        """While the prompt waits: drain the cluster's queue whenever the I/O thread fills it."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        cluster = self.ws.cluster

        def wake() -> None:  # on the I/O thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(woken.set)

        key = cluster.add_waker(wake)
        try:
            while True:
                if cluster.wait_for_work(0):
                    await run_in_terminal(self._drain_above_prompt, in_executor=False)
                await woken.wait()
                woken.clear()
        finally:
            cluster.remove_waker(key)

    def _drain_above_prompt(self) -> None:
        try:
            self.session.drain()
        except Exception as exc:  # a bug of ours must not end the session
            self.session.error(f"error while applying results: {type(exc).__name__}: {exc}")

    def _rprompt(self) -> FormattedText:
        if get_app().is_done:
            return FormattedText([])  # not kept in the scrollback with the accepted line
        count = len(self.ws.pending())
        return FormattedText([("fg:ansibrightblack", f"{count} pending" if count else "")])

    # ---- leaving -------------------------------------------------------------

    def _confirm_exit(self) -> bool:
        pending = self.ws.pending()
        if not pending:
            return True
        names = ", ".join(list(pending)[:5]) + (", ..." if len(pending) > 5 else "")
        question = f"{len(pending)} pending ({names}): cancel and exit? [y/N] "
        assert self._loop is not None
        try:
            answer = self._loop.run_until_complete(_ask(question, self._input))
        except EOFError:
            answer = "y"  # Ctrl-D twice: leave
        except KeyboardInterrupt:
            answer = "n"
        return answer.strip().lower() in ("y", "yes")


async def _ask(question: str, keys: Input) -> str:
    asker: PromptSession[str] = PromptSession(history=InMemoryHistory(), input=keys)
    return await asker.prompt_async(question)


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @Condition
    def at_line_start() -> bool:
        before = get_app().current_buffer.document.current_line_before_cursor
        return not before.strip()

    @bindings.add("enter")
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        state = buffer.complete_state
        if state is not None and state.current_completion is not None:
            buffer.apply_completion(state.current_completion)
            return
        document = buffer.document
        single = "\n" not in document.text
        if (single or document.is_cursor_at_the_end) and is_complete(document.text):
            buffer.validate_and_handle()
            return
        buffer.insert_text("\n" + indent_after(document.current_line_before_cursor))

    @bindings.add("escape", "enter")
    def _run(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    @bindings.add("tab", filter=at_line_start)
    def _indent(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("    ")

    return bindings
