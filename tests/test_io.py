import os
import stat

import pytest

from raise_select.errors import UserError
from raise_select.io import append_jsonl, atomic_path, read_jsonl, read_jsonl_rows, write_json_atomic


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


def test_jsonl_rows_skip_blank_lines_and_drop_a_last_line_cut_by_a_crash(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"k": 0})
    with open(log, "a") as f:
        f.write("\n")  # a blank line: skipped, but it counts as a row
    append_jsonl(log, {"k": 2})
    with open(log, "a") as f:
        f.write('{"k": 3, "cut')  # a line cut short mid-write by a crash
    assert read_jsonl_rows(log) == [(0, {"k": 0}), (2, {"k": 2})]
    assert read_jsonl(log) == [{"k": 0}, {"k": 2}]
    log.write_text('{"k": 0}\n\n[1, 2]\n{"k": 3}\n')
    with pytest.raises(UserError, match=r"log.jsonl: row 2: not a JSON object; the metrics log is damaged, start over"):
        read_jsonl(log, what="metrics log", advice=", start over")
