"""Named validation/evaluation sets: real rows from ../shared/data, Table 2 sizes, answer parsing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from raise_select.data import benchmarks as bm
from raise_select.data.validation import load_validation
from raise_select.errors import UserError


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- Table 2 validation sets


@pytest.mark.parametrize("name,size", [("mmlu", 285), ("arc_challenge", 299), ("commonsenseqa", 280), ("gsm8k", 256)])
def test_validation_sizes_follow_table_2(shared_data, name, size):
    examples = load_validation(name, shared_data)
    assert len(examples) == size
    # distinct rows (MMLU's dev has one exact duplicate: college_physics rows 0 and 3, kept as in the paper)
    assert len({(e.source, e.row) for e in examples}) == size
    assert all(e.messages[0][0] == "user" and e.messages[-1][0] == "assistant" for e in examples)


def test_sampled_validation_is_seeded_and_drawn_from_its_split(shared_data):
    a = load_validation("gsm8k", shared_data, seed=0)
    b = load_validation("gsm8k", shared_data, seed=0)
    c = load_validation("gsm8k", shared_data, seed=1)
    assert [e.id for e in a] == [e.id for e in b]
    assert [e.id for e in a] != [e.id for e in c]
    train_questions = {r["question"].strip() for r in _jsonl(shared_data / "gsm8k/train.jsonl")}
    assert all(e.record["question"].strip() in train_questions for e in a)
    rows = [e.row for e in a]
    assert rows == sorted(rows) and all(e.source.endswith("train.jsonl") for e in a)
    csqa = load_validation("commonsenseqa", shared_data)
    assert all(e.source.endswith("train_rand_split.jsonl") for e in csqa)  # not the evaluated dev file
    # n replaces the Table 2 size
    assert len(load_validation("commonsenseqa", shared_data, n=17, seed=3)) == 17


def test_mmlu_validation_is_the_dev_split_five_per_subject(shared_data):
    examples = load_validation("mmlu", shared_data)
    per_subject: dict[str, int] = {}
    for e in examples:
        per_subject[e.record["subject"]] = per_subject.get(e.record["subject"], 0) + 1
    assert len(per_subject) == 57 and set(per_subject.values()) == {5}
    assert len(bm.load_named_set("mmlu", shared_data, "val")) == 1531


# ---------------------------------------------------------------- formats on real rows


def test_gsm8k_answers_with_thousands_commas(shared_data):
    rows = _jsonl(shared_data / "gsm8k/train.jsonl") + _jsonl(shared_data / "gsm8k/test.jsonl")
    with_comma = [r for r in rows if "," in r["answer"].rsplit("####", 1)[1]]
    assert len(with_comma) == 93  # as counted in SOURCES.md
    for r in rows:
        final = r["answer"].split("\n")[-1]
        assert final.startswith("#### ")
        assert int(bm.gsm8k_gold_answer(r["answer"])) == int(final[5:].replace(",", ""))
    # test.jsonl line 147: "... #### 2,125"
    doc = bm.load_docs("gsm8k", shared_data, "test")[146][0]
    assert doc["answer"] == "2125"
    assert "<<" not in doc["rationale"] and doc["rationale"].endswith("2125 blocks")
    assert bm.format_response(doc).endswith("\nThe answer is 2125.")


def test_arc_digit_labels_map_through_choice_labels(shared_data):
    docs = bm.load_docs("arc_challenge", shared_data, "dev")
    doc, _, row, rec = docs[89]  # NYSEDREGENTS_2014_8_20, answerKey "2"
    assert rec["id"] == "NYSEDREGENTS_2014_8_20" and rec["answerKey"] == "2"
    assert doc["label"] == 1 and doc["choices"][1] == "equal to the total mass of the products"
    assert bm.format_response(doc) == "The answer is B."
    # every split: the gold choice text is the one whose label equals answerKey
    n_digit = 0
    for split in ("train", "dev", "test"):
        for doc, _, _, rec in bm.load_docs("arc_challenge", shared_data, split):
            gold = [c["text"] for c in rec["question"]["choices"] if c["label"] == rec["answerKey"]]
            assert doc["choices"][doc["label"]] == gold[0]
            n_digit += rec["answerKey"].isdigit()
    assert n_digit == 49  # the NYSEDREGENTS items, as counted in SOURCES.md


def test_mmlu_csv_without_header_keeps_text_exactly(shared_data):
    path = shared_data / "mmlu/test/college_mathematics_test.csv"
    with open(path, encoding="utf-8", newline="") as f:
        raw = list(csv.reader(f))
    docs = bm.load_docs("mmlu_college_mathematics", shared_data, "test")
    assert len(docs) == len(raw) == 100
    for (doc, _, _, _), values in zip(docs, raw):
        assert doc["choices"] == values[1:5] and "ABCD"[doc["label"]] == values[5]
    assert len(bm.load_docs("mmlu", shared_data, "test")) == 14042


def test_mathqa_options_in_both_spellings(shared_data):
    docs = bm.load_docs("mathqa", shared_data, "test")
    assert len(docs) == 2985 and all(len(d["choices"]) == 5 for d, *_ in docs)
    listed = [(d, rec) for d, _, _, rec in docs if rec["options"].startswith("[")]
    assert listed  # the list-repr spelling occurs in the real file
    d, rec = next(
        (d, rec) for d, rec in listed if rec["Problem"].startswith("in two triangles , the ratio of the areas")
    )
    assert d["choices"] == ["2 : 3", "4 : 5", "16 : 9", "7 : 9", "8 : 5"] and d["label"] == 2
    assert bm.parse_mathqa_options("a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these") == [
        "38",
        "27.675",
        "30",
        "data inadequate",
        "none of these",
    ]
    with pytest.raises(UserError, match="options"):
        bm.parse_mathqa_options("38 or 27")


def test_commonsenseqa_test_split_has_no_answers(shared_data):
    with pytest.raises(UserError, match="answerKey"):
        bm.load_named_set("commonsenseqa", shared_data, "test")
    assert bm.BENCHMARKS["commonsenseqa"].eval_split == "dev"


def test_prompt_and_response_format():
    doc = {"question": "2+2?", "choices": ["3", "4"], "label": 1}
    assert bm.format_prompt(doc) == "Question: 2+2?\nA. 3\nB. 4\nAnswer:"
    assert bm.format_response(doc) == "The answer is B."
    gsm = {"question": "Q", "rationale": "1+1=2", "answer": "2"}
    assert bm.format_prompt(gsm) == "Question: Q\nAnswer:"
    assert bm.format_response(gsm) == "1+1=2\nThe answer is 2."


# ---------------------------------------------------------------- answer extraction


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so 3 + 4 = 7\nThe answer is 1,234.", "1234"),
        ("Total $5 then\n#### 1,000", "1000"),
        ("first 12 then 15 and finally 18", "18"),
        ("The answer is $12.50.", "12.5"),
        ("The answer is -3", "-3"),
        ("no digits here", None),
    ],
)
def test_extract_final_number(text, expected):
    assert bm.extract_final_number(text) == expected


@pytest.mark.parametrize(
    "text,n,expected",
    [
        ("The answer is B.", 4, "B"),
        ("The answer is (C)", 5, "C"),
        ("D. because", 4, "D"),
        ("E", 4, None),
        ("Answer unclear", 4, None),
    ],
)
def test_extract_letter(text, n, expected):
    assert bm.extract_letter(text, n) == expected


def test_gold_answer_round_trips_through_extraction(shared_data):
    for doc, *_ in bm.load_docs("gsm8k", shared_data, "test"):
        assert bm.extract_final_number(bm.format_response(doc)) == doc["answer"]
    for doc, *_ in bm.load_docs("arc_challenge", shared_data, "dev"):
        assert bm.extract_letter(bm.format_response(doc), len(doc["choices"])) == "ABCDE"[doc["label"]]


# ---------------------------------------------------------------- hub shapes and errors


def test_hub_rows_are_read_with_the_usual_names(monkeypatch):
    import datasets

    calls = []
    hub_rows = {
        "cais/mmlu": [{"question": "Q?", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": 2}],
        "allenai/ai2_arc": [
            {"id": "1", "question": "Q?", "choices": {"text": ["x", "y"], "label": ["1", "2"]}, "answerKey": "2"}
        ],
    }

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return hub_rows[path]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (ex,) = bm.load_named_set("mmlu", None, "test")
    assert ex.messages[-1][1] == "The answer is C." and calls[-1] == ("cais/mmlu", "all", "test")
    (ex,) = bm.load_named_set("arc_challenge", None, "validation")
    assert ex.messages[-1][1] == "The answer is B." and calls[-1] == ("allenai/ai2_arc", "ARC-Challenge", "validation")


def test_unknown_names_and_splits_list_what_exists(shared_data, tmp_path):
    with pytest.raises(UserError, match="available: mmlu, arc_challenge"):
        bm.load_named_set("hellaswag", shared_data)
    with pytest.raises(UserError, match="named sets:.*gsm8k"):
        load_validation("hellaswag", shared_data)
    with pytest.raises(UserError, match="unknown split 'val'.*train, test"):
        bm.load_named_set("gsm8k", shared_data, "val")
    with pytest.raises(UserError, match="no such file"):
        bm.load_named_set("gsm8k", tmp_path)
    bad = tmp_path / "gsm8k"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(UserError, match=r"train.jsonl, row 0, field 'answer'"):
        bm.load_named_set("gsm8k", tmp_path, "train")
