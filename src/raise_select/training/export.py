"""Export the instructions a run chose, in the pool's own format (`raise-select select`).

Reads a run's selection log (`selections.jsonl`, one line per step: `step`, `ids`,
`indices`, `scores`, `classes`, `random`) and writes every chosen instruction once, as a
record of the pool's format (`data.pools.to_format`) with two extra fields:
`times_selected` (how many steps chose it) and `steps` (which ones, ascending). Records
come in the order they were first chosen. A record holds the whole row that was scored
(`export_records`): an Alpaca record keeps its `system` prompt, and a conversation written as
Alpaca keeps its earlier exchanges in `history` (LLaMA-Factory's field for them). A `.jsonl`
output gets one record per line, a `.json` output one array. If a step appears twice in
the log (a resumed run redid it), the later line wins; a last line cut short by a crash
mid-write is left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.pools import FORMATS, Example, Pool, to_format
from ..errors import UserError, where
from ..io import atomic_path, check_output, read_jsonl_rows

SELECTIONS_FILE = "selections.jsonl"
OUTPUT_SUFFIXES = (".json", ".jsonl")


@dataclass
class ExportSummary:
    """What `export_chosen` wrote."""

    out: Path
    log: Path  # the selection log read
    steps: int  # steps read from the log (after keeping the last line of a redone step)
    chosen: int  # distinct instructions written
    selections: int  # (step, instruction) pairs, i.e. the sum of times_selected
    random_steps: int  # steps chosen uniformly at random (appendix F) that were included or skipped
    skipped_random: bool
    multi_turn: int = 0  # records whose earlier exchanges went to `history` (a conversation written as alpaca)


ROUND_FILES = "selections/round_*.jsonl"  # train-policy: one selection log per round


def round_logs(run: Path) -> dict[int, Path]:
    """Round number -> selection log of a train-policy run folder (empty for other folders)."""
    out = {}
    for path in run.glob(ROUND_FILES):
        suffix = path.stem.removeprefix("round_")
        if suffix.isdigit():
            out[int(suffix)] = path
    return dict(sorted(out.items()))


def round_file(run: Path, round: int) -> Path:
    return run / "selections" / f"round_{round}.jsonl"


def finished_rounds(run: Path) -> list[int]:
    """The rounds a train-policy run finished, by its checkpoint pointer (not by the files
    present: a round cut short also left a log, and a finished round's log may be gone)."""
    from .runs import RunFolder

    done = RunFolder(run, enabled=False).latest_round()
    if done == 0:
        raise UserError(
            f"{run}: no train-policy round has finished yet (no {run / 'checkpoint' / 'latest.json'}); "
            "run or resume train-policy first"
        )
    return list(range(done))


def selections_path(run: str | Path, round: int | None = None) -> Path:
    """The selection log of a run: `run` itself when it is a log file; `<run>/selections.jsonl`
    for a finetune run; for a train-policy run, `selections/round_<round>.jsonl` of a
    finished round, by default the last (the choices of the most trained policy). A folder
    holding both kinds needs `--round` (or the selections.jsonl file itself)."""
    run = Path(run)
    if run.is_dir():
        trained = bool(round_logs(run)) or (run / "checkpoint" / "latest.json").is_file()
        if trained and (run / SELECTIONS_FILE).is_file() and round is None:
            raise UserError(
                f"{run}: holds both a finetune's {SELECTIONS_FILE} and train-policy round logs; pass "
                f"--round K for a round, or {run / SELECTIONS_FILE} itself as --run"
            )
        if trained:
            rounds = finished_rounds(run)
            target = rounds[-1] if round is None else round
            if target not in rounds:
                cut = " (that round was cut short)" if target in round_logs(run) else ""
                raise UserError(
                    f"--round {round}: {run} has selection logs of rounds {', '.join(map(str, rounds))}{cut}"
                )
            path = round_file(run, target)
            if not path.is_file():
                raise UserError(
                    f"{path}: missing, but the run finished rounds {rounds[0]}-{rounds[-1]}; restore the "
                    "file" + (" or pass another --round" if len(rounds) > 1 else "")
                )
            return path
        if round is not None:
            raise UserError(f"--round {round}: {run} is not a train-policy run folder (no {ROUND_FILES})")
        path = run / SELECTIONS_FILE
    else:
        if round is not None:
            raise UserError(f"--round {round}: give the train-policy run folder, not a selection log")
        path = run
    if not path.is_file():
        raise UserError(
            f"{path}: no selection log here; give a run folder written by "
            f"`raise-select finetune` or `train-policy`, or one of its selection logs"
        )
    return path


def read_selections(path: str | Path, allow_empty: bool = False) -> list[dict]:
    """The log's lines by step (ascending); a redone step keeps its last line, a last line cut
    short by a crash is dropped (`io.read_jsonl`). An empty log is refused unless `allow_empty`."""
    path = Path(path)
    by_step: dict[int, dict] = {}
    for row, rec in read_jsonl_rows(path, what="selection log"):
        for fld, kind in (("step", int), ("ids", list)):
            if not isinstance(rec.get(fld), kind) or isinstance(rec.get(fld), bool):
                raise UserError(
                    f"{where(str(path), row, fld)}: missing or not a{'n integer' if kind is int else ' list'}"
                )
        if not all(isinstance(i, str) for i in rec["ids"]):
            raise UserError(f"{where(str(path), row, 'ids')}: expected a list of example ids (strings)")
        rec["_row"] = row
        by_step[rec["step"]] = rec
    if not by_step and not allow_empty:
        raise UserError(f"{path}: the selection log is empty")
    return [by_step[s] for s in sorted(by_step)]


def _alpaca_history(example: Example) -> tuple[str, list[list[str]]]:
    """(instruction, history) of a conversation written as one Alpaca record: the user turns
    after the last earlier assistant turn are the instruction (joined as `to_format` joins
    them), each earlier (user turns, assistant turn) exchange a `[prompt, response]` pair."""
    turns = [(r, c) for r, c in example.messages[:-1] if r != "system"]
    history: list[list[str]] = []
    asked: list[str] = []
    for role, content in turns:
        if role == "user":
            asked.append(content)
            continue
        if not asked:
            raise UserError(
                f"{where(example.source, example.row)}: an assistant turn with no user turn before it cannot be "
                "written as Alpaca history; export with --format sharegpt or messages"
            )
        history.append(["\n\n".join(asked), content])
        asked = []
    if not asked:
        raise UserError(
            f"{where(example.source, example.row)}: the response follows another assistant turn, which Alpaca "
            "cannot hold; export with --format sharegpt or messages"
        )
    return "\n\n".join(asked), history


def export_records(examples: list[Example], fmt: str) -> tuple[list[dict], int]:
    """The records of `examples` in `fmt`, holding everything that was scored, and how many keep
    earlier exchanges in `history`. `to_format` gives the turns; for `alpaca` this adds a
    `system` field (the row's system prompt) and, for a conversation, `history` with its
    earlier exchanges instead of flattening them into the instruction. Either field is on
    every record when it is on one (empty where the row has none), so the records make one
    table (`datasets` takes its columns from the first record)."""
    records = [to_format(e, fmt) for e in examples]
    if fmt != "alpaca":
        return records, 0
    multi_turn = 0
    for ex, rec in zip(examples, records):
        system = [c for r, c in ex.messages if r == "system"]
        if system:
            rec["system"] = "\n\n".join(system)
        if any(r == "assistant" for r, _ in ex.messages[:-1]):
            rec["instruction"], rec["history"] = _alpaca_history(ex)
            rec["input"] = ""
            multi_turn += 1
    for name, empty in (("system", ""), ("history", [])):
        if any(name in rec for rec in records):
            for rec in records:
                rec.setdefault(name, empty)
    return records, multi_turn


def check_ids(pool: Pool, log: list[dict], path: Path) -> None:
    """Refuse a log naming an example the pool does not hold (the run used another pool)."""
    ids = set(pool.ids)
    for rec in log:
        missing = [i for i in rec["ids"] if i not in ids]
        if missing:
            raise UserError(
                f"{where(str(path), rec['_row'], 'ids')}: example {missing[0]} is not in the pool "
                f"({pool.sources[0] if pool.sources else 'given'}); pass the pool the run used with --pool"
            )


def chosen_steps(selections: list[dict], include_random: bool = True) -> dict[str, list[int]]:
    """Example id -> the steps that chose it, in order of first choice."""
    out: dict[str, list[int]] = {}
    for rec in selections:
        if rec.get("random") and not include_random:
            continue
        for ex_id in rec["ids"]:
            out.setdefault(ex_id, []).append(rec["step"])
    return out


def export_chosen(
    pool: Pool,
    selections: str | Path,
    out: str | Path,
    fmt: str | None = None,
    include_random: bool = True,
    round: int | None = None,
) -> ExportSummary:
    """Write the instructions chosen in the log `selections` (a file or run folder) to `out`.

    `fmt` is the output format (default: the pool's own). Steps chosen uniformly at
    random (`"random": true`, between policy steps) count unless `include_random` is off.
    For a train-policy run folder, `round` picks the round (default: the last).
    """
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"{out}: output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    fmt = fmt or pool.format
    if fmt not in FORMATS:
        raise UserError(f"unknown output format '{fmt}'; available: {', '.join(FORMATS)}")
    path = selections_path(selections, round)
    check_output(out, {"--run": path}, kind="file")
    for source in pool.sources:  # every file of a pool folder
        check_output(out, {"--pool": source}, kind="file")
    log = read_selections(path)
    check_ids(pool, log, path)
    steps = chosen_steps(log, include_random)
    by_id = {e.id: e for e in pool.examples}
    records, multi_turn = export_records([by_id[ex_id] for ex_id in steps], fmt)
    for rec, chosen_at in zip(records, steps.values()):
        rec["times_selected"] = len(chosen_at)
        rec["steps"] = chosen_at
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".jsonl":
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        else:
            tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return ExportSummary(
        out=out,
        log=path,
        steps=len(log),
        chosen=len(records),
        selections=sum(len(s) for s in steps.values()),
        random_steps=sum(bool(r.get("random")) for r in log),
        skipped_random=not include_random,
        multi_turn=multi_turn,
    )
