"""Tab completion: workspace names (pending ones marked), attributes of ready values, commands."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

import sperse
from sperse.repl import COMMANDS
from sperse.repl._completion import WorkspaceCompleter


@pytest.fixture(scope="module")
def ws(cluster: sperse.Cluster) -> Iterator[sperse.Workspace]:
    workspace = sperse.Workspace(cluster)
    workspace.run(
        "import time\n"
        "def slow(n):\n    time.sleep(n)\n    return n\n"
        "text_value = 'hello'\n"
        "text_later = remote slow(30)\n"
        "_hidden = 1\n"
    )
    yield workspace
    workspace.close()


def complete(ws: sperse.Workspace, text: str) -> dict[str, str]:
    completer = WorkspaceCompleter(lambda: ws, COMMANDS)
    found = completer.get_completions(Document(text, len(text)), CompleteEvent(True))
    return {c.text: c.display_meta_text for c in found}


def test_workspace_names_with_their_state(ws: sperse.Workspace) -> None:
    found = complete(ws, "text_")
    assert found == {"text_later": "pending", "text_value": "str"}
    assert "slow" in complete(ws, "x = sl")
    assert "slice" in complete(ws, "x = sl")  # builtins too, after the workspace's names
    assert next(iter(complete(ws, "sl"))) == "slow"


def test_private_names_only_on_request(ws: sperse.Workspace) -> None:
    assert "_hidden" not in complete(ws, "")
    assert "_hidden" in complete(ws, "_h")


def test_attributes_of_ready_values_only(ws: sperse.Workspace) -> None:
    assert {"upper", "startswith"} <= set(complete(ws, "text_value."))
    assert set(complete(ws, "text_value.up")) == {"upper"}
    assert complete(ws, "text_later.") == {}  # pending: nothing is evaluated or waited for
    assert "sleep" in complete(ws, "time.sl")
    assert "__class__" in complete(ws, "text_value.__")


def test_nothing_inside_strings_or_comments(ws: sperse.Workspace) -> None:
    assert complete(ws, "'text_") == {}
    assert complete(ws, "x = 1  # text_") == {}


def test_commands_and_their_arguments(ws: sperse.Workspace) -> None:
    assert set(complete(ws, "%wa")) == {"wait"}
    assert complete(ws, "%ru") == {
        "run_stale": "Run the stale cells: lazy mode's, and statements not re-applied (x[0] = 1)."
    }
    assert complete(ws, "%wait text_") == {"text_later": "pending", "text_value": "str"}
    assert set(complete(ws, "%mode ")) == {"auto", "lazy", "notebook"}
    assert set(complete(ws, "%help gr")) == {"graph"}
    assert complete(ws, "%wait text_later ") == {}  # the timeout: nothing to offer
