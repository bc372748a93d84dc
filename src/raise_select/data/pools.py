"""Load instruction pools in Alpaca, ShareGPT or chat-`messages` format.

A pool may be a JSON/JSONL/Parquet/CSV file, a folder of such files, or a `datasets`
name (optionally `name:split`). Every example is normalised to a conversation whose last
turn is the assistant's response; everything before it is the prompt (for an Alpaca row: its
`system`, then its `history` pairs, LLaMA-Factory's earlier exchanges, then the instruction with
its input). Each example gets a stable id: the hash of its normalised content, so the same
instruction has the same id in every file and run. Exact duplicates are kept once and counted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import UserError, where
from ..io import sha256_text, write_text_atomic

log = logging.getLogger(__name__)

FORMATS = ("alpaca", "sharegpt", "messages")
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "prompter": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class Example:
    """One instruction-response pair, normalised.

    `messages` is the whole conversation as `(role, content)` pairs; the last one is the
    assistant response `y`, the rest is the prompt `x`. `record` is the row as it was read,
    so selections can be exported in the pool's own format.
    """

    id: str
    messages: tuple[tuple[str, str], ...]
    record: dict = field(compare=False, hash=False, repr=False)
    source: str = field(default="", compare=False)
    row: int = field(default=-1, compare=False)

    @property
    def response(self) -> str:
        return self.messages[-1][1]

    @property
    def prompt_messages(self) -> tuple[tuple[str, str], ...]:
        return self.messages[:-1]


@dataclass
class Pool:
    """A loaded pool: examples in file order, with what was skipped and why."""

    examples: list[Example]
    format: str
    sources: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def fingerprint(self) -> str:
        """Hash of the example ids in order: changes when any content or order changes."""
        return sha256_text(self.format, *(e.id for e in self.examples))

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]


def example_id(messages: Iterable[tuple[str, str]]) -> str:
    return sha256_text(*(f"{r}\x1f{c}" for r, c in messages))[:16]


# ---------------------------------------------------------------- reading rows


def decode_utf8(raw: bytes, path: Path | str, row: int | None = None, line: int | None = None) -> str:
    """`raw` as UTF-8 text (a leading byte-order mark dropped), or a `UserError` naming the
    file, row and line of the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        at = line if line is not None else raw[: e.start].count(b"\n") + 1
        loc = f"{where(str(path), row)}, line {at}" if row is not None else f"{path}: line {at}"
        raise UserError(f"{loc}: byte 0x{raw[e.start]:02x} is not UTF-8 text; re-save the file as UTF-8") from None


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    text = decode_utf8(path.read_bytes(), path)
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # A .json file that is really JSON Lines is common; try that before giving up.
        first = text.lstrip()[:1]
        if first == "{" and "\n" in text.strip():
            yield from _read_jsonl(path)
            return
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if isinstance(data, dict):
        for key in ("data", "train", "examples", "rows"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise UserError(f"{path}: expected a JSON array of records (or {{'data': [...]}})")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of records")
    yield from enumerate(data)


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    n = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f):
            line = decode_utf8(raw if lineno else raw.removeprefix(b"\xef\xbb\xbf"), path, lineno, lineno + 1)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: row {lineno} (line {lineno + 1}): malformed JSON ({e.msg})") from None
            n += 1
            yield lineno, rec
    if n == 0:
        raise UserError(f"{path}: file is empty")


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None
    if table.num_rows == 0:
        raise UserError(f"{path}: file is empty")
    for i, rec in enumerate(table.to_pylist()):
        yield i, rec


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name.
    text = decode_utf8(path.read_bytes(), path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    n = 0
    try:
        for i, rec in enumerate(reader):
            n += 1
            if None in rec:
                raise UserError(
                    f"{where(str(path), i)} (line {reader.line_num}): {len(rec[None]) + len(reader.fieldnames or [])} "
                    f"cells, the header has {len(reader.fieldnames or [])}"
                )
            short = [k for k, v in rec.items() if v is None]
            if short:
                raise UserError(
                    f"{where(str(path), i, short[0])} (line {reader.line_num}): missing cell (the row has fewer "
                    f"cells than the header's {len(reader.fieldnames or [])})"
                )
            yield i, rec
    except csv.Error as e:
        raise UserError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    if n == 0:
        raise UserError(f"{path}: file is empty (or has only a header)")


_READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".parquet": _read_parquet, ".csv": _read_csv}


def rows_from_path(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(file, row number, record) of every row of a pool file, or of every pool file under a folder."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise UserError(f"{path}: folder holds no {'/'.join(FILE_SUFFIXES)} files")
    else:
        files = [path]
    for fp in files:
        reader = _READERS.get(fp.suffix.lower())
        if reader is None:
            raise UserError(f"{fp}: unsupported file type '{fp.suffix}'; use one of {', '.join(FILE_SUFFIXES)}")
        for i, rec in reader(fp):
            yield str(fp), i, rec


def _rows_from_hub(name: str) -> Iterator[tuple[str, int, Any]]:
    import datasets

    split = "train"
    if ":" in name:
        name, split = name.rsplit(":", 1)
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, missing dataset, bad split
        raise UserError(
            f"pool '{name}': not a file or folder, and loading it as a `datasets` name failed: {e}"
        ) from None
    for i, rec in enumerate(ds):
        yield f"{name}:{split}", i, rec


# ---------------------------------------------------------------- normalising


def detect_format(record: Any, source: str = "", row: int | None = None) -> str:
    if not isinstance(record, dict):
        raise UserError(f"{where(source, row)}: expected a record (object), got {type(record).__name__}")
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "messages"
    if "instruction" in record or "output" in record:
        return "alpaca"
    raise UserError(
        f"{where(source, row)}: unknown format; expected Alpaca ('instruction', 'input', 'output'), "
        f"ShareGPT ('conversations') or chat ('messages') fields, found {sorted(record)[:8]}"
    )


def _text(value: Any, source: str, row: int, fld: str, required: bool = True) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN from CSV/Parquet
        if required:
            raise UserError(f"{where(source, row, fld)}: missing value")
        return ""
    if not isinstance(value, str):
        # A number or true/false is refused rather than turned into text: `42` or `true`
        # where a response should be usually means the wrong column or a broken export.
        shown = json.dumps(value, ensure_ascii=False, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        advice = (
            "join the parts into one string"
            if isinstance(value, (list, tuple))
            else "write it as a string if it is meant as one"
        )
        raise UserError(f"{where(source, row, fld)}: expected text, got {type(value).__name__} {shown} ({advice})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate escape such as "\ud800" in JSON
        raise UserError(
            f"{where(source, row, fld)}: invalid text (lone surrogate U+{ord(value[e.start]):04X} "
            f"at character {e.start}, e.g. an unpaired \\u{ord(value[e.start]):04x} escape)"
        ) from None
    return value


def _normalise_alpaca(rec: dict, source: str, row: int) -> list[tuple[str, str]]:
    for fld in ("instruction", "output"):
        if fld not in rec:
            raise UserError(
                f"{where(source, row, fld)}: missing field (Alpaca format needs 'instruction' and 'output')"
            )
    instruction = _text(rec["instruction"], source, row, "instruction")
    inp = _text(rec.get("input"), source, row, "input", required=False)
    output = _text(rec["output"], source, row, "output")
    prompt = instruction if not inp.strip() else f"{instruction}\n\n{inp}"
    msgs = []
    if rec.get("system"):
        msgs.append(("system", _text(rec["system"], source, row, "system")))
    msgs += _alpaca_history(rec.get("history"), source, row)
    return msgs + [("user", prompt), ("assistant", output)]


def _alpaca_history(history: Any, source: str, row: int) -> list[tuple[str, str]]:
    """The earlier turns of an Alpaca row: LLaMA-Factory's `history`, a list of `[user, assistant]`
    pairs before the instruction (what `select --format alpaca` writes for a conversation). Absent,
    null, `[]` or an empty cell (CSV) is no history, so such a row keeps the id it has without
    the field; anything else that is not a list of pairs of two strings is refused."""
    if history is None or (isinstance(history, float) and history != history) or history == "":
        return []
    if not isinstance(history, (list, tuple)):
        raise UserError(
            f"{where(source, row, 'history')}: expected a list of [user, assistant] pairs, got {type(history).__name__}"
        )
    turns = []
    for j, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            got = f"{len(pair)} items" if isinstance(pair, (list, tuple)) else type(pair).__name__
            raise UserError(
                f"{where(source, row, f'history[{j}]')}: expected a [user, assistant] pair of two strings, got {got}"
            )
        turns.append(("user", _text(pair[0], source, row, f"history[{j}][0]")))
        turns.append(("assistant", _text(pair[1], source, row, f"history[{j}][1]")))
    return turns


def _normalise_turns(
    turns: Any, source: str, row: int, fld: str, role_key: str, content_key: str
) -> list[tuple[str, str]]:
    if not isinstance(turns, (list, tuple)) or len(turns) == 0:
        raise UserError(f"{where(source, row, fld)}: expected a non-empty list of turns")
    out = []
    for j, t in enumerate(turns):
        if not isinstance(t, dict) or role_key not in t or content_key not in t:
            raise UserError(f"{where(source, row, f'{fld}[{j}]')}: each turn needs '{role_key}' and '{content_key}'")
        role = _ROLE_ALIASES.get(str(t[role_key]).lower())
        if role is None:
            raise UserError(f"{where(source, row, f'{fld}[{j}].{role_key}')}: unknown role {t[role_key]!r}")
        out.append((role, _text(t[content_key], source, row, f"{fld}[{j}].{content_key}")))
    # The last assistant turn is the response; later turns (a dangling user turn) are dropped.
    last = max((j for j, (r, _) in enumerate(out) if r == "assistant"), default=None)
    if last is None:
        raise UserError(f"{where(source, row, fld)}: no assistant turn to use as the response")
    if last == 0:
        raise UserError(f"{where(source, row, fld)}: the assistant turn has no prompt before it")
    return out[: last + 1]


def normalise(record: Any, fmt: str, source: str, row: int) -> list[tuple[str, str]]:
    if not isinstance(record, dict):
        raise UserError(f"{where(source, row)}: expected a record (object), got {type(record).__name__}")
    if fmt == "alpaca":
        return _normalise_alpaca(record, source, row)
    if fmt == "sharegpt":
        if "conversations" not in record:
            raise UserError(f"{where(source, row, 'conversations')}: missing field (ShareGPT format)")
        msgs = _normalise_turns(record["conversations"], source, row, "conversations", "from", "value")
        if record.get("system"):
            msgs = [("system", _text(record["system"], source, row, "system"))] + msgs
        return msgs
    if fmt == "messages":
        if "messages" not in record:
            raise UserError(f"{where(source, row, 'messages')}: missing field (chat messages format)")
        return _normalise_turns(record["messages"], source, row, "messages", "role", "content")
    raise UserError(f"unknown pool format '{fmt}'; available: {', '.join(FORMATS)}")


def _rename(rec: dict, columns: dict[str, str], source: str, row: int) -> dict:
    out = dict(rec)
    for target, field_name in columns.items():
        if field_name not in rec:
            raise UserError(f"{where(source, row, field_name)}: missing field (mapped to '{target}')")
        out[target] = out.pop(field_name)
    return out


def load_pool(
    spec: str | Path,
    fmt: str | None = None,
    limit: int | None = None,
    columns: dict[str, str] | None = None,
) -> Pool:
    """Load a pool from a file, a folder or a `datasets` name.

    `fmt` is one of `alpaca`, `sharegpt`, `messages`, or None to detect it from the first
    record. Rows with an empty response are skipped and counted in `Pool.skipped`; exact
    duplicates (same id) are kept once and counted in `Pool.duplicates`. Everything else
    that is wrong raises `UserError` naming the file, row and field.

    `columns` renames fields before format detection, e.g. `{"instruction": "question",
    "output": "answer"}` reads GSM8K's `question`/`answer` rows as Alpaca records.
    """
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown pool format '{fmt}'; available: {', '.join(FORMATS)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1 (leave it out to use the whole pool)")
    path = Path(spec)
    if path.exists():
        rows = rows_from_path(path)
    elif any(str(spec).endswith(s) for s in FILE_SUFFIXES) or "/" in str(spec) and str(spec).startswith((".", "/")):
        raise UserError(f"{spec}: pool file or folder not found")
    else:
        rows = _rows_from_hub(str(spec))

    examples: list[Example] = []
    seen: set[str] = set()
    skipped: Counter = Counter()
    duplicates = 0
    sources: list[str] = []
    for source, row, rec in rows:
        if columns and isinstance(rec, dict):
            rec = _rename(rec, columns, source, row)
        if fmt is None:
            fmt = detect_format(rec, source, row)
        if not sources or sources[-1] != source:
            sources.append(source)
        msgs = normalise(rec, fmt, source, row)
        if not msgs[-1][1].strip():
            skipped["empty_response"] += 1
            continue
        ex_id = example_id(msgs)
        if ex_id in seen:
            duplicates += 1
            continue
        seen.add(ex_id)
        examples.append(Example(id=ex_id, messages=tuple(msgs), record=rec, source=source, row=row))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise UserError(f"{spec}: no usable examples (skipped: {dict(skipped) or 'none'})")
    if duplicates:
        log.warning("%s: %d exact duplicate example(s) kept once", spec, duplicates)
    if skipped:
        log.warning("%s: skipped %s", spec, dict(skipped))
    return Pool(
        examples=examples, format=fmt or "alpaca", sources=sources, skipped=dict(skipped), duplicates=duplicates
    )


def to_format(example: Example, fmt: str) -> dict:
    """Write an example back as a record of `fmt` (the pool's own format on export)."""
    msgs = list(example.messages)
    if fmt == "alpaca":
        if example.record and "instruction" in example.record:
            rec = {k: example.record.get(k, "") for k in ("instruction", "input", "output")}
            # the fields that make the earlier turns, so the record reads back as the same example
            rec.update({k: example.record[k] for k in ("system", "history") if example.record.get(k)})
            return rec
        prompt = "\n\n".join(c for r, c in msgs[:-1] if r != "system")
        return {"instruction": prompt, "input": "", "output": msgs[-1][1]}
    if fmt == "sharegpt":
        role = {"user": "human", "assistant": "gpt", "system": "system"}
        return {"conversations": [{"from": role[r], "value": c} for r, c in msgs]}
    if fmt == "messages":
        return {"messages": [{"role": r, "content": c} for r, c in msgs]}
    raise UserError(f"unknown pool format '{fmt}'; available: {', '.join(FORMATS)}")


def sample_indices(total: int, n: int, seed: int) -> list[int]:
    """`n` distinct indices of `range(total)`, seeded, in increasing order (file order kept)."""
    return sorted(random.Random(seed).sample(range(total), n))


def subsample_to_file(pool: Pool, size: int | None, seed: int, path: str | Path) -> Pool:
    """A seeded random subsample of `size` rows (all rows when `size` is None or not smaller),
    written to `path` as JSONL in the pool's format (rewritten only when it changed), and read
    back as the pool that commands given `--pool path` see."""
    keep = sample_indices(len(pool), size, seed) if size is not None and size < len(pool) else range(len(pool))
    path = Path(path)
    text = "".join(json.dumps(to_format(pool.examples[i], pool.format)) + "\n" for i in keep)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)
    return load_pool(path, fmt=pool.format)
