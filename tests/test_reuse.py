"""Reuse decisions keyed on what their inputs hold, not on their paths (issue 34): content
digests, resume points of train-policy and the online selectors, baseline reuse, the
selection prior of a trained policy, and validation rows that are also pool rows."""

from __future__ import annotations

import hashlib
import os

from raise_select.io import path_digest


def test_path_digest_is_the_sha256_of_the_contents_and_follows_them(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"abc")
    assert path_digest(f) == hashlib.sha256(b"abc").hexdigest()
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x01")
    (folder / ".raise-select.lock").write_text("pid 1")  # dot files are not contents
    by_hand = hashlib.sha256(b"config.json\x00{}" + b"sub/w.bin\x00\x00\x01").hexdigest()
    assert path_digest(folder) == by_hand
    st = (folder / "sub" / "w.bin").stat()
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x02")  # same size, rewritten
    os.utime(folder / "sub" / "w.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert path_digest(folder) != by_hand
    assert path_digest(folder) == hashlib.sha256(b"config.json\x00{}" + b"sub/w.bin\x00\x00\x02").hexdigest()
