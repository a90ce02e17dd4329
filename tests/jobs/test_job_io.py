"""Inputs and outputs on disk: lazy walks, line units, atomic writes, the failure list."""

from __future__ import annotations

import io
import json
from pathlib import Path

from sperse.jobs._io import DirectoryInput, LinesInput, OutputDir, is_reserved


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_every_file_under_a_directory_is_a_unit_named_by_its_path(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "in", {"a": b"1", "d/b": b"2", "d/e/c": b"3", ".hidden": b"", "d/.x": b""}
    )
    (root / "link").symlink_to(root / "d", target_is_directory=True)  # not followed
    source = DirectoryInput(str(root))
    units = {unit.name: unit.read() for unit in source}
    assert units == {"a": b"1", "d/b": b"2", "d/e/c": b"3"}
    assert source.count() == 3


def test_an_output_directory_inside_the_input_is_left_out(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {"a": b"1", "out/a": b"old output"})
    assert [u.name for u in DirectoryInput(str(root), exclude=str(root / "out"))] == ["a"]


def test_units_are_read_only_when_asked(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {"a": b"before"})
    (unit,) = DirectoryInput(str(root))
    (root / "a").write_bytes(b"after")
    assert unit.read() == b"after"


def test_lines_are_units_named_by_line_number() -> None:
    units = list(LinesInput(io.BytesIO(b"first\r\n\nthird\nfourth")))
    assert [(u.name, u.read()) for u in units] == [
        ("00000001", b"first"),
        ("00000003", b"third"),
        ("00000004", b"fourth"),
    ]


def test_outputs_are_written_whole_through_a_rename(tmp_path: Path) -> None:
    out = OutputDir(str(tmp_path / "out"))
    out.prepare()
    assert not out.done("x/y")
    path = out.write("x/y", b"data")
    assert Path(path).read_bytes() == b"data" and out.done("x/y")
    assert list((tmp_path / "out" / ".sperse-partial").iterdir()) == []
    out.close()
    assert not (tmp_path / "out" / ".sperse-partial").exists()


def test_prepare_drops_half_written_files_and_the_old_failure_list(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "out", {".sperse-partial/7": b"half", "_failed.jsonl": b"{}\n", "a": b"ok"}
    )
    out = OutputDir(str(root))
    out.prepare()
    assert not (root / ".sperse-partial" / "7").exists()
    assert not (root / "_failed.jsonl").exists()
    assert (root / "a").read_bytes() == b"ok"


def test_failures_are_appended_as_json_lines(tmp_path: Path) -> None:
    out = OutputDir(str(tmp_path))
    out.prepare()
    out.record_failure({"unit": "a", "error": "é"})
    out.record_failure({"unit": "b"})
    lines = (tmp_path / "_failed.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["unit"] for line in lines] == ["a", "b"]
    assert json.loads(lines[0])["error"] == "é"
    out.close()


def test_the_jobs_own_names_are_reserved() -> None:
    assert is_reserved("_failed.jsonl") and is_reserved(".sperse-partial/3")
    assert not is_reserved("d/_failed.jsonl") and not is_reserved("a")
