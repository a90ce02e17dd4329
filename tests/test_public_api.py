"""The public surface: every name in ``__all__`` resolves, exactly once, sorted."""

from __future__ import annotations

import subprocess
import sys

import sperse
import sperse.errors


def test_all_is_sorted_and_unique() -> None:
    assert sperse.__all__ == sorted(set(sperse.__all__))


def test_every_public_name_resolves() -> None:
    for name in sperse.__all__:
        assert getattr(sperse, name) is not None, name


def test_public_names_come_from_private_modules_or_errors() -> None:
    for name in sperse.__all__:
        module = getattr(sperse, name).__module__
        private = any(part.startswith("_") for part in module.split(".")[1:])
        assert private or module == "sperse.errors", (name, module)


def test_every_error_is_exported_and_derives_from_the_root() -> None:
    for name in sperse.errors.__all__:
        error = getattr(sperse.errors, name)
        assert issubclass(error, sperse.SperseError)
        assert getattr(sperse, name) is error


def test_unknown_attribute_is_a_clear_attribute_error() -> None:
    try:
        sperse.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_sperse_is_light() -> None:
    code = "import sys, sperse; print(sorted(m for m in sys.modules if m.startswith('sperse')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['sperse', 'sperse._version', 'sperse.errors']"
