import json
import random

import pytest
import yaml
from typer.testing import CliRunner

from raise_select.cli.main import app
from raise_select.data.pools import load_pool
from raise_select.errors import UserError
from raise_select.training.export import export_chosen, read_selections


def _sharegpt_pool(path, n=12):
    rows = [
        {
            "conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}],
            "extra": i,
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _alpaca_pool(path, n=12):
    path.write_text(
        "".join(
            json.dumps({"instruction": f"do {i}", "input": f"x{i}" if i % 2 else "", "output": f"y{i}"}) + "\n"
            for i in range(n)
        ),
        encoding="utf-8",
    )
    return path


def _log(path, pool, steps, rng, batch=3, random_every=0):
    """A selection log as finetune writes it; returns the lines."""
    lines = []
    for t in range(1, steps + 1):
        idx = rng.sample(range(len(pool)), batch)
        lines.append(
            {
                "step": t,
                "ids": [pool.examples[i].id for i in idx],
                "indices": idx,
                "scores": [0.0] * batch,
                "classes": [0] * batch,
                "random": bool(random_every) and t % random_every == 0,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return lines


def _reference(lines, include_random=True):
    """Times and steps per id by a plain loop over the lines."""
    ref = {}
    for line in lines:
        if line["random"] and not include_random:
            continue
        for ex_id in line["ids"]:
            ref.setdefault(ex_id, []).append(line["step"])
    return ref


@pytest.mark.parametrize("maker,suffix", [(_sharegpt_pool, ".json"), (_alpaca_pool, ".jsonl")])
def test_round_trip_keeps_the_pool_format_and_counts(tmp_path, maker, suffix):
    pool = load_pool(maker(tmp_path / f"pool{suffix}"))
    lines = _log(tmp_path / "selections.jsonl", pool, steps=9, rng=random.Random(0))
    out = tmp_path / f"chosen{suffix}"
    summary = export_chosen(pool, tmp_path, out)
    ref = _reference(lines)
    assert summary.steps == 9 and summary.chosen == len(ref) and summary.selections == 27

    back = load_pool(out)
    assert back.format == pool.format
    assert back.ids == list(ref)  # order of first choice
    if suffix == ".jsonl":
        records = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        records = json.loads(out.read_text())
    by_id = {e.id: e for e in pool.examples}
    for ex, rec in zip(back.examples, records):
        assert ex.messages == by_id[ex.id].messages
        assert rec["times_selected"] == len(ref[ex.id]) and rec["steps"] == ref[ex.id]


def test_policy_only_skips_random_steps_and_a_redone_step_keeps_its_last_line(tmp_path):
    pool = load_pool(_alpaca_pool(tmp_path / "pool.jsonl"))
    log = tmp_path / "selections.jsonl"
    lines = _log(log, pool, steps=6, rng=random.Random(1), random_every=2)
    redo = dict(lines[2], ids=[pool.examples[0].id])  # step 3 written again after a resume
    with open(log, "a") as f:
        f.write(json.dumps(redo) + "\n")
    lines[2] = redo
    assert [r["step"] for r in read_selections(log)] == [1, 2, 3, 4, 5, 6]
    summary = export_chosen(pool, log, tmp_path / "chosen.jsonl", include_random=False)
    ref = _reference(lines, include_random=False)
    records = {r["output"]: r for r in map(json.loads, (tmp_path / "chosen.jsonl").read_text().splitlines())}
    assert summary.random_steps == 3 and summary.selections == sum(map(len, ref.values()))
    for ex in pool.examples:
        if ex.id in ref:
            assert records[ex.response]["steps"] == ref[ex.id]
        else:
            assert ex.response not in records


def test_a_log_whose_last_line_a_crash_cut_is_read_without_it_and_a_damaged_middle_line_refused(tmp_path):
    pool = load_pool(_alpaca_pool(tmp_path / "pool.jsonl"))
    log = tmp_path / "selections.jsonl"
    lines = _log(log, pool, steps=4, rng=random.Random(3))
    whole = log.read_text()
    log.write_text(whole + json.dumps(dict(lines[0], step=5))[:25])  # step 5's line, cut mid-write
    assert [r["step"] for r in read_selections(log)] == [1, 2, 3, 4]
    result = CliRunner().invoke(
        app,
        ["select", "--run", str(log), "--pool", str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "chosen.jsonl")],
    )
    assert result.exit_code == 0, result.output
    assert load_pool(tmp_path / "chosen.jsonl").ids == list(_reference(lines))
    log.write_text(whole.replace("\n", "\n{oops\n", 1))
    with pytest.raises(UserError, match=r"selections.jsonl: row 1: not a JSON line; the selection log is damaged"):
        read_selections(log)
    log.write_text('{"step": 1, "id')  # nothing but a cut line
    with pytest.raises(UserError, match="the selection log is empty"):
        read_selections(log)
    assert read_selections(log, allow_empty=True) == []


def test_bad_logs_and_foreign_ids_are_refused(tmp_path):
    pool = load_pool(_alpaca_pool(tmp_path / "pool.jsonl"))
    log = tmp_path / "selections.jsonl"
    log.write_text(json.dumps({"step": 1, "ids": ["0123456789abcdef"]}) + "\n")
    with pytest.raises(
        UserError, match=r"selections.jsonl, row 0, field 'ids': example 0123456789abcdef is not in the pool"
    ):
        export_chosen(pool, log, tmp_path / "out.jsonl")
    log.write_text('{"step": 1, "ids": []}\n{"ids": []}\n')
    with pytest.raises(UserError, match=r"row 1, field 'step'"):
        export_chosen(pool, log, tmp_path / "out.jsonl")
    with pytest.raises(UserError, match="must end in"):
        export_chosen(pool, log, tmp_path / "out.csv")
    with pytest.raises(UserError, match="no selection log"):
        export_chosen(pool, tmp_path / "nowhere", tmp_path / "out.jsonl")


def test_cli_reads_the_pool_from_the_run_config(tmp_path):
    pool_path = _sharegpt_pool(tmp_path / "pool.json")
    pool = load_pool(pool_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"pool": str(pool_path)}))
    lines = _log(run / "selections.jsonl", pool, steps=4, rng=random.Random(2))
    result = CliRunner().invoke(app, ["select", "--run", str(run), "--out", str(tmp_path / "chosen.jsonl")])
    assert result.exit_code == 0, result.output
    assert load_pool(tmp_path / "chosen.jsonl").ids == list(_reference(lines))
    result = CliRunner().invoke(app, ["select", "--run", str(tmp_path), "--out", str(tmp_path / "c.jsonl")])
    assert result.exit_code == 2 and "no selection log" in result.output
