"""tal_keras.atomic.atomic_folder: a folder appears whole or not at all."""

import os
import pathlib

import pytest

from tal_keras.atomic import atomic_folder


def test_a_folder_appears_whole_and_replaces_only_with_overwrite(tmp_path):
    target = tmp_path / "made"
    target.mkdir()  # an empty folder is replaced
    with atomic_folder(target) as building:
        assert not target.joinpath("a.txt").exists()
        (pathlib.Path(building) / "a.txt").write_text("first")
    assert sorted(os.listdir(target)) == ["a.txt"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)
    with (
        pytest.raises(FileExistsError, match="appeared"),
        atomic_folder(target) as building,
    ):
        (pathlib.Path(building) / "b.txt").write_text("second")
    with atomic_folder(target, overwrite=True) as building:
        (pathlib.Path(building) / "b.txt").write_text("second")
    assert sorted(os.listdir(target)) == ["b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["made"]  # no temporaries left


def test_an_exception_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "made"
    target.mkdir()
    target.joinpath("old.txt").write_text("old")
    with (
        pytest.raises(RuntimeError),
        atomic_folder(target, overwrite=True) as building,
    ):
        (pathlib.Path(building) / "new.txt").write_text("new")
        raise RuntimeError
    assert sorted(os.listdir(target)) == ["old.txt"]
    assert sorted(os.listdir(tmp_path)) == ["made"]
