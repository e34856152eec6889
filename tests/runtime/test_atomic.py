"""Config files are replaced whole or not at all."""

import pytest

from tinygen.atomic import atomic_write, atomic_write_text


def test_text_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "conf.json"
    path.write_text("old")
    atomic_write_text(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["conf.json"]


def test_a_write_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "conf.json"
    path.write_text("old")

    def half_then_fail(f):
        f.write(b"half of a new fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["conf.json"]

