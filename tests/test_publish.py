"""A publishable selection: `select --out DIR` and `baseline --export DIR` write a `datasets`
folder (or LLaMA-Factory's files) with a dataset card and scores.parquet of the whole pool."""

import json
import random

import numpy as np
import pandas as pd
import pytest
import yaml
from datasets import load_from_disk
from typer.testing import CliRunner

import raise_select
from conftest import random_features
from raise_select.cli.main import app
from raise_select.data.pools import load_pool

N = 20
CLASSES = 3


def _alpaca_pool(path, n=N):
    path.write_text(
        "".join(
            json.dumps({"instruction": f"do {i}", "input": f"x{i}" if i % 2 else "", "output": f"y{i}"}) + "\n"
            for i in range(n)
        ),
        encoding="utf-8",
    )
    return path


def _sharegpt_pool(path, n=N):
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "be brief"},
                {"from": "human", "value": f"question {i}"},
                {"from": "gpt", "value": f"answer {i}"},
            ]
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _ifd_columns(rng, n):
    columns = dict(
        truncated=np.zeros(n), logp_cond=-rng.uniform(0.5, 2.0, size=n), logp_uncond=-rng.uniform(1.0, 3.0, size=n)
    )
    columns["logp_uncond"][5] = 0.0
    columns["truncated"][7] = 1.0
    return columns


def _features(path, pool, seed=0):
    """Random features with classes i % 3; logp_uncond 0 on row 5 (IFD undefined), truncated row 7."""
    table = random_features(pool.ids, CLASSES, seed=seed, more_columns=_ifd_columns)
    table.write(path)
    return table.columns


def _finetune_run(root, pool_path, features, steps=5, batch=3, seed=1):
    """A finetune run folder: config.yaml naming the pool and features, and selections.jsonl."""
    pool = load_pool(pool_path)
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"pool": str(pool_path), "features": str(features), "steps": steps})
    )
    rng = random.Random(seed)
    lines = []
    for t in range(1, steps + 1):
        idx = rng.sample(range(len(pool)), batch)
        lines.append({"step": t, "ids": [pool.examples[i].id for i in idx], "indices": idx, "random": t == 3})
    (run / "selections.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run, pool, lines


def _card(folder):
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])["raise_select"], text


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_select_publishes_a_raise_run_as_a_datasets_folder(tmp_path):
    pool_path = _alpaca_pool(tmp_path / "pool.jsonl")
    run, pool, lines = _finetune_run(tmp_path, pool_path, tmp_path / "features")
    _features(tmp_path / "features", pool)
    _invoke("select", "--run", run, "--out", tmp_path / "hf")

    # reference: a plain loop over the log, rows in order of first choice
    ref: dict[str, list[int]] = {}
    for line in lines:
        for ex_id in line["ids"]:
            ref.setdefault(ex_id, []).append(line["step"])
    ds = load_from_disk(str(tmp_path / "hf"))
    assert ds["id"] == list(ref)
    assert ds["steps"] == list(ref.values()) and ds["times_selected"] == [len(s) for s in ref.values()]
    by_id = {e.id: e.record for e in pool.examples}
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in ds] == [by_id[i] for i in ref]

    scores = pd.read_parquet(tmp_path / "hf" / "scores.parquet")
    assert scores["id"].tolist() == pool.ids and scores["index"].tolist() == list(range(N))
    assert scores["times_selected"].tolist() == [len(ref.get(i, [])) for i in pool.ids]
    assert [list(s) for s in scores["steps"]] == [ref.get(i, []) for i in pool.ids]
    assert scores["chosen"].tolist() == [i in ref for i in pool.ids]
    assert scores["class"].tolist() == [i % CLASSES for i in range(N)]
    order = list(ref)
    assert [None if pd.isna(r) else int(r) for r in scores["rank"]] == [
        order.index(i) if i in ref else None for i in pool.ids
    ]

    card, text = _card(tmp_path / "hf")
    assert card["method"] == "raise" and card["settings"]["steps"] == 5
    assert card["pool"]["fingerprint"] == pool.fingerprint and card["pool"]["size"] == N
    assert card["budget"]["rows"] == len(ref) and card["budget"]["selections"] == 15 and card["budget"]["steps"] == 5
    assert card["raise_select_version"] == raise_select.__version__
    assert card["command"] == f"raise-select select --run {run} --out {tmp_path / 'hf'}"
    rows_per_class = [sum(pool.ids.index(i) % CLASSES == c for i in ref) for c in range(CLASSES)]
    assert [s["rows"] for s in card["class_shares"]] == rows_per_class
    assert [s["share"] for s in card["class_shares"]] == pytest.approx([r / len(ref) for r in rows_per_class], abs=1e-6)
    assert [s["pool_share"] for s in card["class_shares"]] == pytest.approx([7 / 20, 7 / 20, 6 / 20], abs=1e-6)
    assert pool.fingerprint in text and "scores.parquet" in text

    # --policy-only leaves the random step 3 out of the counts
    _invoke("select", "--run", run, "--out", tmp_path / "hf2", "--policy-only")
    ds2 = load_from_disk(str(tmp_path / "hf2"))
    assert sum(ds2["times_selected"]) == 12 and all(3 not in s for s in ds2["steps"])


def test_baseline_export_has_every_pool_rows_score(tmp_path):
    pool_path = _alpaca_pool(tmp_path / "pool.jsonl")
    pool = load_pool(pool_path)
    cols = _features(tmp_path / "features", pool)
    out = tmp_path / "ifd"
    _invoke(
        "baseline",
        "--method",
        "ifd",
        "--pool",
        pool_path,
        "--features",
        tmp_path / "features",
        "--budget",
        "6",
        "--out",
        out,
        "--export",
        out / "hf",
        "--set",
        "ifd.max_ifd=10",
    )
    record = json.loads((out / "selection.json").read_text())
    ds = load_from_disk(str(out / "hf"))
    assert ds["id"] == record["ids"] and ds["rank"] == list(range(6))
    # IFD by hand: the mean conditional loss over the mean unconditional loss
    by_hand = [(-c) / (-u) if u < 0 else None for c, u in zip(cols["logp_cond"], cols["logp_uncond"])]
    scores = pd.read_parquet(out / "hf" / "scores.parquet")
    assert len(scores) == N and scores["id"].tolist() == pool.ids
    assert scores["score"].isna().tolist() == [s is None for s in by_hand]
    np.testing.assert_allclose(scores["score"].dropna(), [s for s in by_hand if s is not None], rtol=1e-12)
    np.testing.assert_allclose(ds["score"], [by_hand[i] for i in record["indices"]], rtol=1e-12)
    assert scores["chosen"].sum() == 6
    card, _ = _card(out / "hf")
    assert card["method"] == "ifd" and card["settings"]["options"] == {"max_ifd": 10.0}
    assert card["command"] == (
        f"raise-select baseline --method ifd --pool {pool_path} --features {tmp_path / 'features'} "
        f"--out {out} --budget 6.0 --export {out / 'hf'} --set ifd.max_ifd=10"
    )
    assert card["budget"]["budget_count"] == 6 and card["pool"]["fingerprint"] == pool.fingerprint
    assert sum(s["rows"] for s in card["class_shares"]) == 6

    # the same folder again through `select --run <baseline folder>`
    _invoke("select", "--run", out, "--out", tmp_path / "again")
    assert load_from_disk(str(tmp_path / "again"))["id"] == record["ids"]
    assert pd.read_parquet(tmp_path / "again" / "scores.parquet").equals(scores)


def test_a_schedule_baseline_exports_its_per_step_counts(tmp_path):
    pool_path = _alpaca_pool(tmp_path / "pool.jsonl")
    pool = load_pool(pool_path)
    _features(tmp_path / "features", pool)
    out = tmp_path / "sspl"
    _invoke(
        "baseline",
        "--method",
        "sspl",
        "--pool",
        pool_path,
        "--features",
        tmp_path / "features",
        "--budget",
        "6",
        "--batch-size",
        "2",
        "--out",
        out,
    )
    _invoke("select", "--run", out, "--out", tmp_path / "hf")
    record = json.loads((out / "selection.json").read_text())
    ref: dict[int, list[int]] = {}
    for pos, row in enumerate(record["indices"]):  # batch t of B = 2 is positions 2(t-1), 2(t-1)+1
        ref.setdefault(row, []).append(pos // 2 + 1)
    scores = pd.read_parquet(tmp_path / "hf" / "scores.parquet")
    assert scores["times_selected"].tolist() == [len(ref.get(i, [])) for i in range(N)]
    assert [list(s) for s in scores["steps"]] == [ref.get(i, []) for i in range(N)]
    assert load_from_disk(str(tmp_path / "hf"))["id"] == [pool.ids[i] for i in ref]


@pytest.mark.parametrize("maker", [_alpaca_pool, _sharegpt_pool])
def test_llamafactory_files_have_the_fields_its_docs_name(tmp_path, maker):
    pool_path = maker(tmp_path / "pool.json")
    run, pool, lines = _finetune_run(tmp_path, pool_path, tmp_path / "no-features")
    _invoke("select", "--run", run, "--out", tmp_path / "lf", "--format", "llamafactory")
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    ((name, entry),) = info.items()
    assert name == "raise_select_raise"
    data = json.loads((tmp_path / "lf" / entry["file_name"]).read_text())
    chosen = list(dict.fromkeys(i for line in lines for i in line["ids"]))
    assert len(data) == len(chosen)
    if maker is _alpaca_pool:
        # LLaMA-Factory data/README.md, alpaca: columns prompt, query, response
        assert entry["formatting"] == "alpaca"
        assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output"}
        by_id = {e.id: e.record for e in pool.examples}
        assert data == [by_id[i] for i in chosen]
    else:
        # sharegpt: columns.messages and tags role_tag, content_tag, user_tag, assistant_tag, system_tag
        assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "conversations"}
        tags = entry["tags"]
        assert set(tags) == {"role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag"}
        roles = {tags["user_tag"], tags["assistant_tag"], tags["system_tag"]}
        for rec in data:
            turns = rec[entry["columns"]["messages"]]
            assert all(
                set(t) == {tags["role_tag"], tags["content_tag"]} and t[tags["role_tag"]] in roles for t in turns
            )
            assert turns[-1][tags["role_tag"]] == tags["assistant_tag"]
    card, _ = _card(tmp_path / "lf")
    assert card["layout"] == "llamafactory" and card["class_shares"] is None  # no feature table
    assert len(pd.read_parquet(tmp_path / "lf" / "scores.parquet")) == N


def test_refused_outputs_are_one_line_exit_2(tmp_path):
    pool_path = _alpaca_pool(tmp_path / "pool.jsonl")
    run, _, _ = _finetune_run(tmp_path, pool_path, tmp_path / "features")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    for args, message in [
        (["--out", busy], "exists and holds other files"),
        (["--out", tmp_path / "x.jsonl", "--format", "llamafactory"], "--format llamafactory writes a folder"),
        (["--out", tmp_path / "y", "--format", "csv"], "unknown output format 'csv'"),
    ]:
        result = CliRunner().invoke(app, ["select", "--run", str(run), *map(str, args)])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert (busy / "mine.txt").read_text() == "keep me"
