"""``python -m sperse._coordinator``: the same as ``sperse coordinator``."""

from __future__ import annotations

import sys

from sperse._coordinator.cli import main

if __name__ == "__main__":
    sys.exit(main())
