"""The extension in a real Jupyter kernel, driven over its channels as a notebook would.

The acceptance path: a remote statement and a dependent return at once with placeholders;
the values arrive while the kernel is idle, as updates of those displays, tagged with the
cell that asked for them; a redefinition updates the dependent's display again.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from jupyter_kernel import Kernel, Message, display_id, output_text

pytestmark = pytest.mark.slow


def update_of(did: str, text: str) -> Callable[[Message], bool]:
    def match(msg: Message) -> bool:
        return (
            msg["msg_type"] == "update_display_data"
            and display_id(msg) == did
            and text in output_text(msg)
        )

    return match


def test_values_arrive_in_the_cells_that_asked_while_the_kernel_is_idle(kernel: Kernel) -> None:
    x_cell = kernel.execute("x = remote slow(2)", cell_id="x-cell")
    y_cell = kernel.execute("y = x * 10")
    for cell in (x_cell, y_cell):
        assert cell.reply["content"]["status"] == "ok", cell.text()
    (x_display,) = x_cell.displays()
    (y_display,) = y_cell.displays()
    assert output_text(x_display).startswith("<pending x: ")
    assert output_text(y_display) == "<pending y: waiting for x>"
    y_id = display_id(y_display)
    assert y_id is not None and y_id != display_id(x_display)

    y_ready = kernel.wait_for(update_of(y_id, "y = 20"))
    assert output_text(y_ready) == "y = 20"
    assert y_ready["parent_header"]["msg_id"] == y_cell.msg_id
    # It came after the cell had finished: its reply and its idle status went first.
    y_idle = next(
        i
        for i, m in enumerate(kernel.messages)
        if m["msg_type"] == "status"
        and m["parent_header"].get("msg_id") == y_cell.msg_id
        and m["content"]["execution_state"] == "idle"
    )
    assert kernel.messages.index(y_ready) > y_idle
    assert y_cell.reply["header"]["date"] < y_ready["header"]["date"]
    x_ready = kernel.wait_for(update_of(str(display_id(x_display)), "x = 2"))
    assert x_ready["parent_header"]["msg_id"] == x_cell.msg_id

    again = kernel.execute("x = remote slow(3)", cell_id="x-cell")  # the x cell, re-executed
    assert again.reply["content"]["status"] == "ok", again.text()
    kernel.wait_for(update_of(y_id, "<pending y: waiting for x>"))
    y_again = kernel.wait_for(update_of(y_id, "y = 30"))
    assert y_again["parent_header"]["msg_id"] == y_cell.msg_id
    assert kernel.execute("y").outputs[-1]["content"]["data"]["text/plain"] == "30"


def test_a_remote_error_arrives_with_its_remote_traceback(kernel: Kernel) -> None:
    kernel.execute("def fail(n):\n    raise ValueError(f'no {n}')\n")
    cell = kernel.execute("bad = remote fail(7)")
    assert cell.reply["content"]["status"] == "ok"
    (placeholder,) = cell.displays()
    failed = kernel.wait_for(update_of(str(display_id(placeholder)), "ValueError: no 7"))
    text = output_text(failed)
    assert "bad failed on local" in text
    assert "This happened remotely on local" in text
    assert "Traceback (most recent call last)" in text and "in fail" in text
    assert failed["parent_header"]["msg_id"] == cell.msg_id


def test_remote_cell_magic_runs_the_whole_cell_remotely(kernel: Kernel) -> None:
    cell = kernel.execute("%%remote @local\nimport os\nwhere = os.getpid()\n")
    assert cell.reply["content"]["status"] == "ok", cell.text()
    (placeholder,) = cell.displays()
    assert "<pending where: " in output_text(placeholder)
    waited = kernel.execute("%wait where 30")
    assert "where = " in waited.text()
    elsewhere = kernel.execute("where != __import__('os').getpid()")
    assert elsewhere.outputs[-1]["content"]["data"]["text/plain"] == "True"


def test_ipython_syntax_and_values_keep_working(kernel: Kernel) -> None:
    mixed = kernel.execute("a = 6\n%pending\nb = %pending\na * 7")
    assert mixed.reply["content"]["status"] == "ok", mixed.text()
    assert "nothing is pending" in mixed.text()
    result = mixed.outputs[-1]
    assert result["msg_type"] == "execute_result"
    assert result["content"]["data"]["text/plain"] == "42"
    assert kernel.execute("_ + 1").outputs[-1]["content"]["data"]["text/plain"] == "43"
    help_text = kernel.execute("a?")
    assert help_text.reply["content"]["status"] == "ok"


def short_error(cell_reply: Message, outputs: list[Message]) -> str:
    assert cell_reply["content"]["status"] == "error"
    text = "\n".join(output_text(m) for m in outputs)
    assert len(text.splitlines()) <= 8, text
    return text


def test_bad_input_is_explained_shortly_and_the_session_goes_on(kernel: Kernel) -> None:
    unknown = kernel.execute("n = remote[nosuchtag] slow(1)")
    text = short_error(unknown.reply, unknown.outputs)
    assert unknown.reply["content"]["ename"] == "NoMatchingServer"
    assert "no server matches [nosuchtag]" in text

    syntax = kernel.execute("n = remote[gpu &] slow(1)")
    text = short_error(syntax.reply, syntax.outputs)
    assert syntax.reply["content"]["ename"] == "SyntaxError"
    assert "expected a tag name after '&'" in text

    usage = kernel.execute("%wait")
    text = short_error(usage.reply, usage.outputs)
    assert "UsageError: %wait: missing name; usage: %wait name [timeout]" in text

    # An exception in local code: IPython's traceback of the user's frames, none of Sperse's.
    local = kernel.execute("def boom():\n    return 1 / 0\n\nboom()")
    assert local.reply["content"]["status"] == "error"
    assert local.reply["content"]["ename"] == "ZeroDivisionError"
    text = local.text()
    assert "return 1 / 0" in text and "ZeroDivisionError: division by zero" in text
    assert "sperse/" not in text and "_workspace" not in text

    assert kernel.execute("1 + 1").outputs[-1]["content"]["data"]["text/plain"] == "2"


def test_pending_lists_what_waits(kernel: Kernel) -> None:
    cell = kernel.execute("p = remote slow(4)\nq = p + 1\n%pending")
    text = cell.text()
    assert "p  " in text and "q  waiting for p" in text
    assert len(cell.text().splitlines()) <= 6


def test_unload_removes_the_extension_and_cancels_pending_work(kernel: Kernel) -> None:
    cell = kernel.execute("late = remote slow(30)")
    (placeholder,) = cell.displays()
    unloaded = kernel.execute("%unload_ext sperse")
    assert unloaded.reply["content"]["status"] == "ok", unloaded.text()
    kernel.wait_for(update_of(str(display_id(placeholder)), "cancelled"))
    plain = kernel.execute("z = remote slow(1)")
    assert plain.reply["content"]["ename"] == "SyntaxError"  # plain IPython again
    gone = kernel.execute("%pending")
    assert "UsageError" in gone.text()
    assert kernel.execute("%load_ext sperse").reply["content"]["status"] == "ok"


def test_remote_output_streams_back_while_idle(kernel: Kernel) -> None:
    cell = kernel.execute("remote print('hello from', 6 * 7)")
    assert cell.reply["content"]["status"] == "ok"
    kernel.wait_for(
        lambda m: m["msg_type"] == "stream" and "[local] hello from 42" in output_text(m)
    )


def test_ipython_keeps_the_cells_as_typed(kernel: Kernel) -> None:
    """A trailing `;`, `In[n]` and the lines a traceback quotes are IPython's (rule 10)."""
    assert kernel.execute("21 * 2").outputs[-1]["content"]["data"]["text/plain"] == "42"
    quiet = kernel.execute("10+20;")
    assert quiet.reply["content"]["status"] == "ok" and quiet.outputs == []
    assert kernel.execute("_").outputs[-1]["content"]["data"]["text/plain"] == "42"
    typed = kernel.execute("In[-2], In[-3]").outputs[-1]["content"]["data"]["text/plain"]
    assert typed == "('_', '10+20;')"

    failing = kernel.execute("def k(x):\n    return 1 / x\n%xmode Verbose\nk(0)\nk(1)")
    try:
        text = failing.text()
        assert "----> 4 k(0)" in text and "      5 k(1)" in text
        assert "      3 get_ipython().run_line_magic('xmode', 'Verbose')" in text
        assert "----> 2     return 1 / x" in text
    finally:
        assert kernel.execute("%xmode Context").reply["content"]["status"] == "ok"


def test_dashboard_magic_starts_the_dashboard_and_prints_its_address(kernel: Kernel) -> None:
    import json
    import re
    import urllib.request

    # A kernel has no browser at hand here (no display): the magic must not try one.
    kernel.execute("import os; [os.environ.pop(k, None) for k in ('DISPLAY', 'WAYLAND_DISPLAY')]")
    text = kernel.execute("%dashboard").text()
    found = re.search(r"dashboard (started|serving) at (http://127\.0\.0\.1:\d+/\?token=\S+)", text)
    assert found is not None, text
    assert "open it in a browser" in text
    base, token = found.group(2).split("/?token=")
    request = urllib.request.Request(
        f"{base}/api/workspaces", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert len(json.load(response)["workspaces"]) == 1  # the notebook's workspace
    assert found.group(2) in kernel.execute("%dashboard").text()  # the same one again
