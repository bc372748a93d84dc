"""Atomic file output and content hashing shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success.

    A crash mid-write leaves the old file (or none), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it (logs and metrics; a crash loses at most this line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike, what: str = "log", advice: str = "") -> list[dict]:
    """The records of a JSON-lines log that `append_jsonl` wrote. A last line cut short by a
    crash mid-write is dropped; any other line that is not a JSON object is a `UserError`
    naming the file and row."""
    return [record for _, record in read_jsonl_rows(path, what, advice)]


def read_jsonl_rows(path: str | os.PathLike, what: str = "log", advice: str = "") -> list[tuple[int, dict]]:
    """`read_jsonl` with each record's row (0-based line number), for errors that name it."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for row, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if row == len(lines) - 1:
                break
            raise UserError(f"{path}: row {row}: not a JSON line; the {what} is damaged{advice}") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}: row {row}: not a JSON object; the {what} is damaged{advice}")
        records.append((row, record))
    return records


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-serialisable object (keys sorted)."""
    return sha256_text(json.dumps(obj, sort_keys=True, default=str))


# ---------------------------------------------------------------- content digests of files and folders

# (resolved path, listing of (relative name, size, mtime_ns)) -> digest: a folder's (or file's)
# contents are read once per process; a file written, replaced or touched since changes the
# listing, so it is read again. Size and mtime only decide whether to re-read, never the digest.
_digests: dict[tuple[str, tuple], str] = {}


def _listing(path: Path) -> tuple[tuple[str, int, int], ...]:
    if path.is_file():
        st = path.stat()
        return (("", st.st_size, st.st_mtime_ns),)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return tuple((p.relative_to(path).as_posix(), *(lambda s: (s.st_size, s.st_mtime_ns))(p.stat())) for p in files)


def path_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a folder's files (each relative name, a NUL, its bytes;
    in name order; files whose names start with a dot, such as locks, left out).

    The contents are hashed once per process and again only when a file's size or mtime
    changed, so callers may ask for it wherever a reuse decision needs it. A missing path is
    an `OSError` (FileNotFoundError)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(str(path))
    key = (str(path), _listing(path))
    if key in _digests:
        return _digests[key]
    h = hashlib.sha256()
    if path.is_file():
        _hash_file_into(h, path)
    else:
        for name, _, _ in key[1]:
            h.update(str(Path(name)).encode() + b"\0")
            _hash_file_into(h, path / name)
    _digests[key] = h.hexdigest()
    return _digests[key]


def _hash_file_into(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)


def check_output(
    out: str | os.PathLike,
    inputs: dict[str, Any] | None = None,
    kind: str = "folder",
    flag: str = "--out",
    read_by_name: tuple[str, ...] = ("--features", "--policy"),
) -> Path:
    """Refuse, before anything is computed, an output path that would destroy or mix with an
    input of the same command, or that cannot be written.

    `kind` is "folder" (the command writes several files into `out`) or "file". `inputs`
    maps a flag (e.g. "--pool") to the path it was given (None and names that are not
    local paths, such as hub ids, are skipped). Refused: `out` equal to an input (paths
    resolved, so `./a` and `a` are the same); `out` inside an input folder, whose files are
    read by scanning it (a pool folder: the outputs would be read back as pool rows; a model
    folder: its fingerprint would change), except for the folders in `read_by_name`, whose
    files are read by their names; an existing path of the wrong kind; a location without
    write permission.
    """
    out_path = Path(out).expanduser()
    target = out_path.resolve()
    if kind == "folder" and target.exists() and not target.is_dir():
        raise UserError(f"{flag} {out}: exists and is a file; give a folder (new or existing) for the outputs")
    if kind == "file" and target.is_dir():
        raise UserError(f"{flag} {out}: is a folder; give a file name")
    for name, spec in (inputs or {}).items():
        if spec is None or str(spec) == "":
            continue
        source = Path(str(spec)).expanduser()
        if not source.exists():
            continue
        source = source.resolve()
        if source == target:
            raise UserError(
                f"{flag} {out} is also the input {name}; writing there would destroy the input; "
                "choose another output path"
            )
        if source.is_dir() and target.is_relative_to(source) and name not in read_by_name:
            raise UserError(
                f"{flag} {out} lies inside the input folder {name} {spec}; outputs there would be read "
                "back as input; choose a path outside it"
            )
    folder = target if kind == "folder" else target.parent  # where files get created (atomically, by rename)
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{flag} {out}: {folder} is a file, so nothing can be created below it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: no permission to write in {folder}; choose a path you can write to")
    return out_path


# ---------------------------------------------------------------- one run per output folder

LOCK_FILE = ".raise-select.lock"
# What each command leaves in its output folder that no other command writes there: a folder
# holding one of these belongs to that command, and another command's run into it is refused
# (their files would mix: train-policy and finetune both write config.yaml and metrics.jsonl,
# and `select --run` could no longer tell which run the folder holds).
OUTPUT_SIGNATURES = {
    "featurize": ("features.parquet", "shards"),
    "train-policy": ("policy/policy.json", "checkpoint/latest.json", "selections"),
    "finetune": ("selections.jsonl",),
    "baseline": ("selection.json",),
    "evaluate": ("lm_eval_results.json", "results.md"),
    "study": ("study_table.json", "cells"),
    "demo": ("summary.json",),
}
_held_locks: dict[Path, int] = {}  # folder -> open descriptor holding its lock
_new_folders: list[Path] = []  # output folders this command created (removed again when it is refused)


def note_new_folder(folder: str | os.PathLike) -> None:
    """Remember that this command created output folder `folder` (before it does)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.exists() and folder not in _new_folders:
        _new_folders.append(folder)


def lock_output(folder: str | os.PathLike, command: str, flag: str = "--out") -> None:
    """Hold an exclusive lock on output folder `folder` until the command ends, so a second run
    into it at the same time is refused in one line naming the holder instead of interleaving
    its files. The lock is `fcntl.flock` on `<folder>/.raise-select.lock`: the kernel drops it
    when its holder exits or is killed, so a lock left by a dead run never blocks the next one
    (the file stays; only the lock on it counts). Under `accelerate launch` / `torchrun` the
    main process (RANK 0) holds it for all. A folder that holds another command's output
    (`OUTPUT_SIGNATURES`) is refused, before anything is written into it."""
    import fcntl
    import socket
    import time

    if os.environ.get("RANK", "0").strip() not in ("", "0"):
        return
    folder = Path(folder).expanduser().resolve()
    if folder in _held_locks:
        return
    note_new_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    new_lock = not (folder / LOCK_FILE).exists()
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by a live process
        holder = os.read(fd, 400).decode("utf-8", errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(
            f"{flag} {folder}: in use by another run ({holder}); wait for it to end, or choose another {flag}"
        ) from None
    try:
        _check_kind(folder, command, flag)
    except UserError:
        os.close(fd)
        if new_lock:  # the other run's folder is left as it was
            (folder / LOCK_FILE).unlink(missing_ok=True)
        raise
    os.ftruncate(fd, 0)
    os.write(
        fd,
        f"pid {os.getpid()} on {socket.gethostname()}, `raise-select {command}` since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode("utf-8"),
    )
    _held_locks[folder] = fd


def _check_kind(folder: Path, command: str, flag: str) -> None:
    """Refuse `command` writing into a folder that holds another command's output."""
    for other, names in OUTPUT_SIGNATURES.items():
        found = next((n for n in names if (folder / n).exists()), None)
        if other != command and command in OUTPUT_SIGNATURES and found is not None:
            raise UserError(
                f"{flag} {folder}: holds the output of `raise-select {other}` ({found}); a folder holds "
                f"one kind of run, and `raise-select {command}` would mix its files with it; choose "
                f"another {flag}"
            )


def end_of_command(refused: bool, keep: tuple[str, ...] = ()) -> None:
    """Release this command's output locks; when it was refused (a user error), remove the
    output folders it created that hold nothing but its lock and the files named in `keep`
    (its own log), so a refusal leaves no empty run folder behind."""
    for fd in _held_locks.values():
        os.close(fd)
    _held_locks.clear()
    if refused:
        for folder in reversed(_new_folders):
            names = {p.name for p in folder.iterdir()} if folder.is_dir() else {"?"}
            if names <= {LOCK_FILE, *keep}:
                for name in names:
                    (folder / name).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()
    _new_folders.clear()
