"""The extension's magics: the REPL's ``%`` commands, ``%%remote``, ``%sperse_connect``, and
the hidden ``%%sperse_cell`` that routed cells call.

A magic whose name the shell has already (another extension's) is registered with a
``sperse_`` prefix instead; ``unregister`` removes exactly the magics registered here.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any, Final

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.interactiveshell import InteractiveShell

from sperse._cluster.connect import connect
from sperse._workspace import Workspace
from sperse.errors import SperseError, UsageError
from sperse.ipython._cells import remote_block
from sperse.repl._commands import Command, CommandRegistry

__all__ = ["CELL_MAGIC", "Magics"]

CELL_MAGIC: Final = "sperse_cell"


class Magics:
    """The magics of one extension, registered on its shell.

    ``run`` enters a cell's source into the workspace, ``presentable`` turns an error into
    the one IPython should show, ``after_command`` brings the displays up to date after a
    command, ``connected`` follows a change of the default cluster.
    """

    def __init__(
        self,
        shell: InteractiveShell,
        ws: Workspace,
        *,
        run: Callable[[str], Any],
        presentable: Callable[[BaseException], BaseException],
        after_command: Callable[[], None],
        connected: Callable[[], None],
    ) -> None:
        self._shell = shell
        self._ws = ws
        self._run = run
        self._presentable = presentable
        self._after_command = after_command
        self._connected = connected
        self._registered: list[tuple[str, str]] = []
        self.remote_magic = self._free_name("remote", "cell")

    def register(self, commands: CommandRegistry) -> None:
        for command in commands:
            self._register(
                self._command_magic(command), "line", self._free_name(command.name, "line")
            )
        self._register(self._remote_magic, "cell", self.remote_magic)
        self._register(self._cell_magic, "cell", CELL_MAGIC)
        self._register(self._connect_magic, "line", self._free_name("sperse_connect", "line"))

    def unregister(self) -> None:
        magics = self._shell.magics_manager.magics
        for kind, name in self._registered:
            magics[kind].pop(name, None)
        self._registered = []

    def _free_name(self, name: str, kind: str) -> str:
        """``name``, or ``sperse_name`` when the shell has a magic of that name already."""
        taken = self._shell.magics_manager.magics[kind]
        return f"sperse_{name}" if name in taken else name

    def _register(self, fn: Callable[..., Any], kind: str, name: str) -> None:
        self._shell.magics_manager.register_function(fn, magic_kind=kind, magic_name=name)
        self._registered.append((kind, name))

    def _command_magic(self, command: Command) -> Callable[[str], None]:
        def magic(line: str) -> None:
            failure: BaseException | None = None
            text = ""
            try:
                text = command(self._ws, line, _say)
            except UsageError as exc:
                failure = IPythonUsageError(str(exc))
            except SperseError as exc:
                failure = self._presentable(exc)
            finally:
                self._after_command()
            if failure is not None:
                raise failure
            if text:
                print(text, flush=True)

        magic.__name__ = command.name
        magic.__doc__ = f"{command.usage}\n\n{command.help.strip()}"
        return magic

    def _remote_magic(self, line: str, cell: str) -> Any:
        """%%remote [placement]: run the whole cell remotely, as one ``remote[placement]:`` block."""
        return self._run(remote_block(line, cell))

    def _cell_magic(self, line: str, cell: str) -> Any:
        """Run the cell through the sperse workspace (what the extension does with every cell)."""
        return self._run(cell)

    def _connect_magic(self, line: str) -> None:
        """%sperse_connect [URL] [--token TOKEN]: run remote cells on another cluster.

        Without a URL, a new embedded server. Work still running on the old cluster ends
        in errors.
        """
        usage = "usage: %sperse_connect [sperse://host:port] [--token TOKEN]"
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise IPythonUsageError(f"{exc}; {usage}") from None
        url: str | None = None
        token: str | None = None
        while words:
            word = words.pop(0)
            if word == "--token" and words:
                token = words.pop(0)
            elif word.startswith("--token="):
                token = word.removeprefix("--token=")
            elif url is None and not word.startswith("-"):
                url = word
            else:
                raise IPythonUsageError(f"unexpected `{word}`; {usage}")
        failure: BaseException | None = None
        try:
            cluster = connect(url, token=token)
        except SperseError as exc:
            failure = self._presentable(exc)
        if failure is not None:
            raise failure
        self._connected()
        names = ", ".join(info.name for info in cluster.servers()) or "none yet"
        where = url or "a new embedded server"
        print(f"connected to {where}; servers: {names}", flush=True)
        if self._ws.cluster is not cluster:
            print("this workspace keeps its cluster (it is not the default one)", flush=True)


def _say(text: str) -> None:
    print(text, flush=True)
