"""GRAPE (`raise-select grape`): for a pool with several candidate responses per instruction,
keep for each instruction the response the *target* model finds most likely
(`../shared/papers/related-grape-s3ft-reft-and-others.txt`: "selects the one with the
highest probability measured by the target model, indicating that it aligns most closely
with the target model's pretrained distribution; it then proceeds with standard SFT").

The probability is length-normalised: the mean log-probability of the response tokens (and
the end-of-sequence token, as training sees them) given the rendered prompt, under the same
template and truncation as training, so long responses are not penalised for their length.
Candidates come either from a list field of each row (`field`; by default Alpaca's `output`
when it holds a list, else `responses` or `completions`), or from rows that share the same
prompt. The output is a normal pool in the input's format, one row per instruction, in the
order instructions first appear, with `grape_score` (the chosen response's mean log-prob),
`grape_candidates` (how many were scored) and `grape_choice` (the 0-based index of the
chosen one in the row's own list); ties keep the first candidate. Blank candidates are
skipped (the run says how many). Scores are cached next to the output
(`<out>.grape-cache`, JSON lines under a suffix no pool reader takes), so an interrupted run
resumes without scoring twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import check_fields
from ..data.pools import Example, example_id
from ..errors import UserError, where
from ..io import atomic_path, fingerprint
from .cache import JsonlCache

log = logging.getLogger(__name__)

LIST_FIELDS = ("responses", "completions")
OUTPUT_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class GrapeConfig:
    """`raise-select grape`: one response per instruction, chosen by the target model."""

    pool: str = dataclasses.field(
        default="",
        metadata={
            "help": "pool file or folder with several responses per instruction: a list field, or rows sharing a prompt"
        },
    )
    format: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "pool format (alpaca, sharegpt, messages); None: detected"}
    )
    field: str = dataclasses.field(
        default="",
        metadata={
            "help": "list field holding the candidates; empty: `output` when it is a list, else responses/completions, "
            "else rows sharing a prompt"
        },
    )
    model: str = dataclasses.field(default="", metadata={"help": "target model: hub id or folder"})
    out: str = dataclasses.field(
        default="", metadata={"help": "output pool: .jsonl, .json, .parquet or .csv (Alpaca rows only)"}
    )
    template: str = dataclasses.field(default="alpaca", metadata={"help": "prompt template: alpaca or chat"})
    max_length: int = dataclasses.field(default=512, metadata={"help": "tokens per example, truncated as in training"})
    batch_size: int = dataclasses.field(default=8, metadata={"help": "candidates scored per forward pass"})
    dtype: str = dataclasses.field(default="float32", metadata={"help": "model weights dtype"})
    device: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "torch device; None: cuda when available"}
    )
    limit: Optional[int] = dataclasses.field(default=None, metadata={"help": "read only the first N rows (>= 1)"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            [
                (self.max_length >= 2, "max_length", "must be >= 2"),
                (self.batch_size >= 1, "batch_size", "must be >= 1"),
                (self.limit is None or self.limit >= 1, "limit", "must be >= 1; leave it unset for every row"),
            ],
            "grape",
        )


@dataclass
class Group:
    """One instruction: its candidates as examples, and the row each came from."""

    prompt: tuple[tuple[str, str], ...]
    candidates: list[Example]
    positions: list[int] | None = None  # each candidate's index in the row's list; None: 0, 1, ...
    blank: int = 0  # blank candidates of the row's list, skipped


def _detect_field(rec: dict, field: str, at: str = "") -> str:
    if field:
        return field
    if isinstance(rec.get("output"), list):
        return "output"
    found = next((f for f in LIST_FIELDS if isinstance(rec.get(f), list)), "")
    odd = next((f for f in LIST_FIELDS if f in rec and not isinstance(rec[f], list)), "")
    if not found and odd and "output" not in rec:  # `responses: "one text"`: not read as rows sharing a prompt
        raise UserError(f"{at}, field '{odd}': expected a list of candidate responses, got {type(rec[odd]).__name__}")
    return found


def _with_response(rec: dict, fmt: str, list_field: str, response: str) -> dict:
    """The row with one candidate in the response slot (the list field removed)."""
    out = {k: v for k, v in rec.items() if k != list_field}
    if fmt == "alpaca":
        out["output"] = response
    elif fmt == "messages":
        out["messages"] = [*rec.get("messages", []), {"role": "assistant", "content": response}]
    else:
        out["conversations"] = [*rec.get("conversations", []), {"from": "gpt", "value": response}]
    return out


def read_groups(
    spec: str, fmt: str | None = None, field: str = "", limit: int | None = None
) -> tuple[list[Group], str]:
    """The pool's instructions with their candidate responses, and the pool format."""
    from ..data.pools import FORMATS, load_pool, normalise, rows_from_path

    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown pool format '{fmt}'; available: {', '.join(FORMATS)}")
    path = Path(spec)
    if not path.exists():
        raise UserError(f"{spec}: pool file or folder not found")
    rows = rows_from_path(path)
    first = next(rows, None)
    if first is None:
        raise UserError(f"{spec}: no rows")
    source, row, rec = first
    if not isinstance(rec, dict):
        raise UserError(f"{where(source, row)}: expected a record (object)")
    list_field = _detect_field(rec, field, where(source, row))
    if not list_field:
        pool = load_pool(spec, fmt=fmt, limit=limit)
        groups: dict[tuple, Group] = {}
        for e in pool.examples:
            groups.setdefault(e.prompt_messages, Group(e.prompt_messages, [])).candidates.append(e)
        return list(groups.values()), pool.format

    def all_rows():
        yield first
        yield from rows

    out: list[Group] = []
    for source, row, rec in all_rows():
        at = where(source, row)
        if not isinstance(rec, dict):
            raise UserError(f"{at}: expected a record (object)")
        cands = rec.get(list_field)
        if not isinstance(cands, list) or not cands:
            raise UserError(f"{at}, field '{list_field}': expected a non-empty list of candidate responses")
        if fmt is None:  # the prompt's shape: chat turns, ShareGPT turns, else Alpaca fields
            fmt = "messages" if "messages" in rec else "sharegpt" if "conversations" in rec else "alpaca"
        examples, positions = [], []
        for j, c in enumerate(cands):
            if not isinstance(c, str):
                raise UserError(f"{at}, field '{list_field}[{j}]': expected text, got {type(c).__name__}")
            if not c.strip():
                continue
            full = _with_response(rec, fmt, list_field, c)
            msgs = tuple(normalise(full, fmt, source, row))
            examples.append(Example(id=example_id(msgs), messages=msgs, record=full, source=source, row=row))
            positions.append(j)
        if not examples:
            raise UserError(f"{at}, field '{list_field}': every candidate response is empty")
        out.append(Group(examples[0].prompt_messages, examples, positions, len(cands) - len(examples)))
        if limit is not None and len(out) >= limit:
            break
    return out, fmt or "alpaca"


def best_candidates(scores: list[list[float]]) -> list[int]:
    """Per group the index of the highest score; ties keep the first."""
    return [max(range(len(s)), key=lambda j: (s[j], -j)) for s in scores]


def write_pool(path: str | Path, records: list[dict]) -> Path:
    """Write records as a pool file chosen by suffix (.jsonl, .json, .parquet, .csv), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"{path}: output must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    with atomic_path(path) as tmp:
        if suffix == ".jsonl":
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        elif suffix == ".json":
            tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        else:
            import pandas as pd

            frame = pd.DataFrame.from_records(records)
            if suffix == ".parquet":
                frame.to_parquet(tmp, index=False)
            else:
                if any(isinstance(v, (list, dict)) for r in records for v in r.values()):
                    raise UserError(f"{path}: CSV holds flat (Alpaca) rows only; write .jsonl, .json or .parquet")
                frame.to_csv(tmp, index=False)
    return path


def run_grape(cfg: GrapeConfig) -> dict:
    """Score every candidate, keep the best per instruction, write the pool; returns a summary."""
    import torch

    from ..data.pools import to_format
    from ..models.loading import load_model_and_tokenizer
    from .lm import example_losses

    missing = [f"--{n}" for n in ("pool", "model", "out") if not getattr(cfg, n)]
    if missing:
        raise UserError(f"missing required setting(s): {', '.join(missing)}")
    if Path(cfg.out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"{cfg.out}: output must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    groups, fmt = read_groups(cfg.pool, cfg.format, cfg.field, cfg.limit)
    if Path(cfg.out).suffix.lower() == ".csv" and fmt != "alpaca":
        raise UserError(
            f"{cfg.out}: CSV holds flat (Alpaca) rows only and this pool is in {fmt} format; "
            f"write .jsonl, .json or .parquet"
        )
    examples = [e for g in groups for e in g.candidates]
    cache = JsonlCache(Path(f"{cfg.out}.grape-cache"))
    from ..features.featurize import model_fingerprint

    prefix = fingerprint(  # the scoring model by its contents: one rebuilt at the same path scores again
        {
            "model": model_fingerprint(cfg.model),
            "template": cfg.template,
            "max_length": cfg.max_length,
            "dtype": cfg.dtype,
        }
    )
    todo = list(dict.fromkeys(e.id for e in examples if f"{prefix}:{e.id}" not in cache))
    if todo:
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tok = load_model_and_tokenizer(cfg.model, dtype=cfg.dtype, device=device)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        by_id = {e.id: e for e in examples}
        for s in range(0, len(todo), 256):  # cache as we go: a crash loses at most one chunk
            chunk = [by_id[i] for i in todo[s : s + 256]]
            losses = example_losses(
                model, tok, chunk, cfg.template, cfg.max_length, batch_size=cfg.batch_size, desc="grape"
            )
            for e, v in zip(chunk, losses.tolist()):
                cache.put(f"{prefix}:{e.id}", {"logp": -v})
    scores = [[cache.get(f"{prefix}:{e.id}")["logp"] for e in g.candidates] for g in groups]
    choice = best_candidates(scores)
    records = []
    for g, s, j in zip(groups, scores, choice):
        rec = to_format(g.candidates[j], fmt)
        rec.update(
            {
                "grape_score": s[j],
                "grape_candidates": len(g.candidates),
                "grape_choice": j if g.positions is None else g.positions[j],
            }
        )
        records.append(rec)
    write_pool(cfg.out, records)
    multi = sum(len(g.candidates) > 1 for g in groups)
    blank = sum(g.blank for g in groups)
    log.info(
        "grape: %d instructions (%d with several candidates), %d candidates scored now, %d blank ones skipped",
        len(groups),
        multi,
        len(todo),
        blank,
    )
    return {
        "instructions": len(groups),
        "candidates": len(examples),
        "multi": multi,
        "scored": len(todo),
        "blank": blank,
        "format": fmt,
        "out": cfg.out,
    }
