"""Config files are replaced whole or not at all."""

import os
import stat

import pytest

from tinygen.atomic import atomic_write, atomic_write_text
from tinygen.errors import TinygenError


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

    with pytest.raises(TinygenError, match=f"cannot write {path}: disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["conf.json"]



def test_files_get_the_umask_modes_not_mkstemps_0600(tmp_path):
    """A model folder written by export must stay readable by the user who serves it."""
    old = os.umask(0o022)
    try:
        new = tmp_path / "tinygen.json"
        atomic_write_text(new, "{}")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o640)
        atomic_write_text(kept, "new")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_folder_in_the_files_place_is_one_line(tmp_path):
    (tmp_path / "conf.json").mkdir()
    with pytest.raises(TinygenError, match="conf.json is a folder; give the path of the file to write"):
        atomic_write_text(tmp_path / "conf.json", "{}")
