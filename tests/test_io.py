import os
import stat

import pytest

from raise_select.io import atomic_path, write_json_atomic


def test_atomic_write_replaces_whole_file_with_umask_mode(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert target.read_text() == '{\n  "a": 1\n}\n'


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
