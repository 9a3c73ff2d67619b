"""Atomic writes: the old file survives a failed write, and new files get ordinary permissions."""

import os
import stat

import pytest

from resnetlab.fileio import atomic_open, write_json, write_text


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.csv"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("crash in the middle")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_new_files_get_the_permissions_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "summary.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644
