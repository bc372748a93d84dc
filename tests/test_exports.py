"""Exports publish exactly the rows that were scored: every field of the row (an Alpaca
`system`, the earlier turns of a conversation), each drawn row once with its count, a card
whose counts are those of the folder, and a re-export that keeps what a user added."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml
from datasets import load_from_disk
from typer.testing import CliRunner

from conftest import finetune_run, multi_turn_sharegpt
from raise_select.cli.main import app
from raise_select.data.pools import load_pool

runner = CliRunner()
N = 12


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _refused(result, *fragments):
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _alpaca_with_system(path, n=N):
    """Odd rows carry a system prompt, even rows an empty one or none."""
    rows = []
    for i in range(n):
        row = {"instruction": f"do {i}", "input": f"x{i}" if i % 3 == 0 else "", "output": f"y{i}"}
        if i % 2:
            row["system"] = f"you are helper {i}"
        elif i % 4 == 0:
            row["system"] = ""
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_an_alpaca_system_field_is_kept_by_every_export(tmp_path):
    rows = _alpaca_with_system(tmp_path / "pool.jsonl")
    want = {f"do {i}": r for i, r in enumerate(rows)}

    def same_row(rec):
        row = want[rec["instruction"]]
        assert (rec["input"], rec["output"]) == (row["input"], row["output"])
        assert rec["system"] == row.get("system", "")

    # baseline --export: a datasets folder
    _invoke(
        "baseline", "--method", "random", "--pool", tmp_path / "pool.jsonl", "--budget", "6", "--out", tmp_path / "b",
        "--export", tmp_path / "b-hf",
    )  # fmt: skip
    ds = load_from_disk(str(tmp_path / "b-hf"))
    assert len(ds) == 6 and any(r["system"] for r in ds)
    for rec in ds:
        same_row(rec)

    # select --format llamafactory: data.json with the system column named in dataset_info.json
    _invoke("select", "--run", tmp_path / "b", "--out", tmp_path / "lf", "--format", "llamafactory")
    ((_, entry),) = json.loads((tmp_path / "lf" / "dataset_info.json").read_text()).items()
    assert entry["columns"]["system"] == "system"
    data = json.loads((tmp_path / "lf" / "data.json").read_text())
    assert len(data) == 6
    for rec in data:
        same_row(rec)

    # select --out chosen.jsonl of a finetune run
    run, _ = finetune_run(tmp_path, tmp_path / "pool.jsonl", [[1, 2, 3], [3, 4, 5]])
    _invoke("select", "--run", run, "--out", tmp_path / "chosen.jsonl")
    records = [json.loads(line) for line in (tmp_path / "chosen.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in records] == ["do 1", "do 2", "do 3", "do 4", "do 5"]
    for rec in records:
        same_row(rec)


def test_multi_turn_sharegpt_as_alpaca_keeps_its_earlier_turns_as_history(tmp_path):
    rows = multi_turn_sharegpt(tmp_path / "pool.json")
    run, pool = finetune_run(tmp_path, tmp_path / "pool.json", [[0, 1, 2], [3, 5]])

    def by_hand(i):
        """LLaMA-Factory's alpaca layout of row i, written from the raw turns."""
        turns = rows[i]["conversations"]
        system = [t["value"] for t in turns if t["from"] == "system"]
        talk = [t["value"] for t in turns if t["from"] != "system"]
        return {
            "instruction": talk[-2],
            "input": "",
            "output": talk[-1],
            "system": system[0] if system else "",
            "history": [[talk[k], talk[k + 1]] for k in range(0, len(talk) - 2, 2)],
        }

    result = _invoke("select", "--run", run, "--out", tmp_path / "chosen.jsonl", "--format", "alpaca")
    records = [json.loads(line) for line in (tmp_path / "chosen.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in ("instruction", "input", "output", "system", "history")} for r in records] == [
        by_hand(i) for i in (0, 1, 2, 3, 5)
    ]
    assert [len(r["history"]) for r in records] == [2, 1, 0, 2, 0]
    assert "3 of the 5 are multi-turn" in result.output and "history" in result.output

    # the same as a datasets folder: one column set for every row
    result = _invoke("select", "--run", run, "--out", tmp_path / "hf", "--format", "alpaca")
    ds = load_from_disk(str(tmp_path / "hf"))
    assert ds["history"] == [by_hand(i)["history"] for i in (0, 1, 2, 3, 5)]
    assert ds["system"] == [by_hand(i)["system"] for i in (0, 1, 2, 3, 5)]
    assert "3 of the 5 are multi-turn" in result.output
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "history" in card

    # the pool's own format keeps the conversation as it was
    _invoke("select", "--run", run, "--out", tmp_path / "own.jsonl")
    own = [json.loads(line) for line in (tmp_path / "own.jsonl").read_text().splitlines()]
    assert [r["conversations"] for r in own] == [rows[i]["conversations"] for i in (0, 1, 2, 3, 5)]


def _stub_encoder(monkeypatch):
    import raise_select.features.semantic as semantic

    def encode(_encoder, texts, _batch):
        return np.array([[len(t) / 10, t.count("1") + 1.0, t.count("2") + 0.5] for t in texts], dtype=np.float32)

    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda *a, **k: object())
    monkeypatch.setattr(semantic, "encode_texts", encode)


def test_tsds_draws_are_exported_once_each_with_their_count(tmp_path, monkeypatch):
    _stub_encoder(monkeypatch)
    n = 30
    pool_path = tmp_path / "pool.jsonl"
    pool_path.write_text(
        "".join(json.dumps({"instruction": f"task {i}", "output": "2" * (i % 7 + 1)}) + "\n" for i in range(n))
    )
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"instruction": f"task {i}", "output": "22"}) + "\n" for i in range(3)))
    out = tmp_path / "tsds"
    _invoke(
        "baseline", "--method", "tsds", "--pool", pool_path, "--val", val, "--budget", "20", "--out", out,
        "--set", "tsds.representation=embed", "--export", tmp_path / "hf",
    )  # fmt: skip
    record = json.loads((out / "selection.json").read_text())
    draws = Counter(record["indices"])
    assert len(draws) < len(record["indices"]) == 20  # drawn with replacement: some rows twice or more
    first = list(dict.fromkeys(record["indices"]))  # rows in order of their first draw

    pool = load_pool(pool_path)
    ds = load_from_disk(str(tmp_path / "hf"))
    assert ds["id"] == [pool.ids[i] for i in first]  # each drawn row once
    assert ds["times_drawn"] == [draws[i] for i in first] and sum(ds["times_drawn"]) == 20
    assert ds["rank"] == list(range(len(first)))

    scores = pd.read_parquet(tmp_path / "hf" / "scores.parquet")
    assert scores["chosen"].sum() == len(first) == len(ds)
    assert scores["times_drawn"].tolist() == [draws.get(i, 0) for i in range(n)]
    assert [None if pd.isna(r) else int(r) for r in scores["rank"]] == [
        first.index(i) if i in draws else None for i in range(n)
    ]  # by the first draw, not the last
    np.testing.assert_allclose(scores["score"], record["pool_scores"])

    card = yaml.safe_load((tmp_path / "hf" / "README.md").read_text().split("---\n")[1])["raise_select"]
    assert card["budget"]["rows"] == len(first) and card["budget"]["draws"] == 20
    assert card["budget"]["fraction_of_pool"] == pytest.approx(len(first) / n, abs=1e-6)


def test_baseline_export_onto_a_folder_of_other_files_is_refused_before_any_work(tmp_path):
    rows = _alpaca_with_system(tmp_path / "pool.jsonl")
    assert rows
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    out = tmp_path / "b"
    result = runner.invoke(
        app,
        ["baseline", "--method", "random", "--pool", str(tmp_path / "pool.jsonl"), "--budget", "4",
         "--out", str(out), "--export", str(busy)],
    )  # fmt: skip
    _refused(result, "--export", str(busy), "holds other files")
    assert not out.exists()  # no selection.json, no log, no lock
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_re_exporting_keeps_the_files_a_user_added(tmp_path):
    _alpaca_with_system(tmp_path / "pool.jsonl")
    run, _ = finetune_run(tmp_path, tmp_path / "pool.jsonl", [[1, 2, 3], [3, 4, 5]])
    hf = tmp_path / "hf"
    _invoke("select", "--run", run, "--out", hf)
    (hf / "LICENSE").write_text("my licence")
    (hf / "notes").mkdir()
    (hf / "notes" / "a.txt").write_text("a")
    # again, as LLaMA-Factory files: the datasets files go, the user's stay
    _invoke("select", "--run", run, "--out", hf, "--format", "llamafactory")
    names = {p.name for p in hf.iterdir() if not p.name.startswith(".")}
    assert names == {"LICENSE", "notes", "README.md", "scores.parquet", "data.json", "dataset_info.json"}
    assert (hf / "LICENSE").read_text() == "my licence" and (hf / "notes" / "a.txt").read_text() == "a"
    assert len(json.loads((hf / "data.json").read_text())) == 5
    # and back to a datasets folder
    _invoke("select", "--run", run, "--out", hf)
    assert len(load_from_disk(str(hf))) == 5 and not (hf / "data.json").exists()
    assert (hf / "LICENSE").read_text() == "my licence"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".old")]
    assert leftovers == [] and not [p for p in hf.iterdir() if p.name.endswith(".tmp")]


def test_a_user_file_an_export_would_overwrite_is_refused(tmp_path):
    _alpaca_with_system(tmp_path / "pool.jsonl")
    run, _ = finetune_run(tmp_path, tmp_path / "pool.jsonl", [[1, 2, 3]])
    hf = tmp_path / "hf"
    _invoke("select", "--run", run, "--out", hf)
    (hf / "data.json").write_text("[]")  # the user's, not the export's
    _refused(runner.invoke(app, ["select", "--run", str(run), "--out", str(hf), "--format", "llamafactory"]),
             "data.json", "did not write")  # fmt: skip
    assert (hf / "data.json").read_text() == "[]"


@pytest.mark.parametrize(
    "turns",
    [
        [("human", "q"), ("gpt", "a1"), ("gpt", "a2")],  # the response follows another assistant turn
        [("gpt", "hello"), ("human", "q"), ("gpt", "a")],  # an assistant turn with no user turn before it
    ],
    ids=["two-assistant-turns", "assistant-first"],
)
def test_a_conversation_alpaca_cannot_hold_is_refused_for_alpaca_only(tmp_path, turns):
    rows = [
        {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]} for i in range(3)
    ]
    rows.append({"conversations": [{"from": f, "value": v} for f, v in turns]})
    (tmp_path / "pool.json").write_text(json.dumps(rows))
    run, _ = finetune_run(tmp_path, tmp_path / "pool.json", [[0, 3]])
    _refused(
        runner.invoke(app, ["select", "--run", str(run), "--out", str(tmp_path / "c.jsonl"), "--format", "alpaca"]),
        "pool.json",
        "row 3",
        "--format sharegpt or messages",
    )
    assert not (tmp_path / "c.jsonl").exists()
    _invoke("select", "--run", run, "--out", tmp_path / "c.jsonl", "--format", "messages")
