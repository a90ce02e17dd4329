"""A Jupyter kernel of this venv with the extension loaded, shared by a module's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from jupyter_kernel import Kernel, started_kernel

SLOW = "import time\ndef slow(n):\n    time.sleep(1)\n    return n\n"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with started_kernel(tmp_path_factory.mktemp("kernel")) as k:
        for code in ("%load_ext sperse", SLOW):
            done = k.execute(code)
            assert done.reply["content"]["status"] == "ok", done.text()
        yield k
