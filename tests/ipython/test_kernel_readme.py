"""The README's script snippet as notebook cells, in a real Jupyter kernel.

With the extension loaded (the ``kernel`` fixture loads it), ``p = total(...)`` binds the
Pending, as under ``python`` (docs/decisions.md, "One calling convention"). A cell that
reads a still-pending ``p`` waits for it and runs when it arrives, its value shown as an
update of the cell's display; so ``p.then(print)`` prints 499500 (possibly after its cell
has finished) and ``p.result(timeout=60)`` shows 499500. Were ``p`` bound to the bare
value, ``p.then(print)`` would fail with ``AttributeError: 'int' object has no attribute
'then'``. Every wait reads the kernel's messages with a deadline.
"""

from __future__ import annotations

import pytest
from jupyter_kernel import Execution, Kernel, Message, display_id, output_text

pytestmark = pytest.mark.slow

DEFINE = "@sperse.remote(retries=1)\ndef total(rows):\n    return sum(rows)\n"


def ok(kernel: Kernel, code: str) -> Execution:
    cell = kernel.execute(code)
    assert cell.reply["content"]["status"] == "ok", cell.text()
    return cell


def shown_value(kernel: Kernel, cell: Execution, timeout: float = 60) -> str:
    """The value the cell shows: its result, or the update of its placeholder when the
    value arrives after the cell finished."""
    results = [m for m in cell.outputs if m["msg_type"] == "execute_result"]
    if results:
        return output_text(results[-1])
    (placeholder,) = cell.displays()
    did = display_id(placeholder)
    assert did is not None, placeholder

    def arrived(msg: Message) -> bool:
        return (
            msg["msg_type"] == "update_display_data"
            and display_id(msg) == did
            and not output_text(msg).startswith("<pending")
        )

    return output_text(kernel.wait_for(arrived, timeout))


def failed(msg: Message) -> bool:
    return msg["msg_type"] == "error" or "Traceback" in output_text(msg)


def test_readme_snippet_in_cells(kernel: Kernel) -> None:
    start = len(kernel.messages)
    ok(kernel, "import sperse")
    ok(kernel, DEFINE)
    ok(kernel, "p = total(range(1000))")
    ok(kernel, "p.then(print)")
    value = ok(kernel, "p.result(timeout=60)")

    # The callback's output, or (to fail at once) an error shown by any of these cells.
    printed = kernel.wait_for(
        lambda m: (m["msg_type"] == "stream" and "499500" in output_text(m)) or failed(m),
        timeout=60,
    )
    assert not failed(printed), output_text(printed)
    assert printed["content"]["name"] == "stdout"
    assert output_text(printed) == "499500\n"
    assert shown_value(kernel, value) == "499500"
    assert shown_value(kernel, ok(kernel, "type(p).__name__")) == "'Pending'"

    # Nothing failed, at once or later: no error output, no traceback in any update.
    ours = kernel.messages[start:]
    assert not [m for m in ours if failed(m) or "AttributeError" in output_text(m)], [
        output_text(m) for m in ours
    ]
