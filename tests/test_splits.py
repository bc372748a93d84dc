"""Validation, dev and test parts of each target: sizes, no shared question, held-out sets by
name, and validation never drawn from the split that evaluation scores."""

from __future__ import annotations

import json

import pytest

from raise_select.data import benchmarks as bm
from raise_select.data.validation import load_validation
from raise_select.errors import UserError

TARGETS = {"gsm8k": 256, "arc_challenge": 500, "commonsenseqa": 500}


def _qkey(example) -> str:
    """The question key of an example: its multiple-choice question field, else (GSM8K) its record's question."""
    rec = example.record
    return bm.question_key({"question": rec[bm.QUESTION_FIELD] if bm.QUESTION_FIELD in rec else rec["question"]})


def test_validation_and_evaluation_never_share_a_split(shared_data):
    """The package default draws validation rows from another split than the one evaluated
    (CommonsenseQA drew both from its dev file)."""
    for name, spec in bm.BENCHMARKS.items():
        assert spec.validation_split != spec.eval_split, name
    evaluated = {bm.question_key(d) for d, *_ in bm.load_docs("commonsenseqa", shared_data, "dev")}
    for seed in (0, 1):
        val = load_validation("commonsenseqa", shared_data, seed=seed)
        assert len(val) == 280 and not {_qkey(e) for e in val} & evaluated


@pytest.mark.parametrize("name,least", list(TARGETS.items()))
def test_three_disjoint_parts_per_target(shared_data, name, least):
    parts = bm.split_parts(name, shared_data)
    keys = {p: {bm.question_key(d) for d, *_ in rows} for p, rows in parts.items()}
    assert len(parts["dev"]) >= least and len(parts["test"]) >= least
    assert not keys["validation"] & keys["dev"] and not keys["validation"] & keys["test"]
    assert not keys["dev"] & keys["test"]
    # every file row lands in at most one part, and file order is kept
    rows = [(s, r) for p in parts.values() for _, s, r, _ in p]
    assert len(rows) == len(set(rows))
    for p in parts.values():
        assert [(s, r) for _, s, r, _ in p] == sorted((s, r) for _, s, r, _ in p)
    # the named held-out sets are those parts; a validation sample of any seed and size stays in its part
    for part in ("dev", "test"):
        named = load_validation(f"{name}:{part}", shared_data)
        assert [(e.source, e.row) for e in named] == [(s, r) for _, s, r, _ in parts[part]]
    held = keys["dev"] | keys["test"]
    for seed, n in ((0, None), (1, None), (2, 400)):
        val = load_validation(name, shared_data, n=n, seed=seed)
        questions = {_qkey(e) for e in val}
        assert questions <= keys["validation"] and not questions & held
    # n caps a held-out set with a seeded sample drawn from it
    some = load_validation(f"{name}:test", shared_data, n=7, seed=3)
    assert len(some) == 7 and {(e.source, e.row) for e in some} <= {(s, r) for _, s, r, _ in parts["test"]}


def test_held_out_sizes_and_sources(shared_data):
    """The parts as documented in `data.benchmarks` (and docs/metrics.md)."""
    sizes = {n: {p: len(v) for p, v in bm.split_parts(n, shared_data).items()} for n in TARGETS}
    assert sizes["gsm8k"] == {"validation": 6973, "dev": 500, "test": 1319}
    # ARC: 2 test and 6 train questions are also in the dev file or the test file
    assert sizes["arc_challenge"] == {"validation": 299, "dev": 1113, "test": 1170}
    assert sizes["commonsenseqa"] == {"validation": 8741, "dev": 1000, "test": 1221}
    test = bm.split_parts("commonsenseqa", shared_data)["test"]
    assert all(s.endswith("dev_rand_split.jsonl") for _, s, _, _ in test)
    # Table 2 sizes of the validation sets are unchanged
    assert [len(load_validation(n, shared_data)) for n in TARGETS] == [256, 299, 280]


def test_overlapping_questions_leave_the_later_parts(tmp_path):
    """A question in the validation file leaves the test set; one in either leaves the dev set."""

    def arc(stem: str, key: str = "A") -> dict:
        choices = [{"label": "A", "text": "one"}, {"label": "B", "text": "two"}]
        return {"id": stem, "question": {"stem": stem, "choices": choices}, "answerKey": key}

    folder = tmp_path / "arc_challenge"
    folder.mkdir()
    files = {
        "ARC-Challenge-Dev.jsonl": [arc("Shared by val and test?"), arc("Only validation?")],
        "ARC-Challenge-Test.jsonl": [arc("shared  by VAL and test?"), arc("Only test?"), arc("Test and train?")],
        "ARC-Challenge-Train.jsonl": [arc("Only validation?"), arc("test and train?"), arc("Only train?", "B")],
    }
    for fname, rows in files.items():
        (folder / fname).write_text("".join(json.dumps(r) + "\n" for r in rows))
    parts = bm.split_parts("arc_challenge", tmp_path)
    stems = {p: [d["question"] for d, *_ in rows] for p, rows in parts.items()}
    assert stems == {
        "validation": ["Shared by val and test?", "Only validation?"],
        "dev": ["Only train?"],
        "test": ["Only test?", "Test and train?"],
    }
    dev = load_validation("arc_challenge:dev", tmp_path)
    assert dev[0].record[bm.CHOICES_FIELD] == ["one", "two"] and dev[0].record[bm.GOLD_FIELD] == 1


def test_set_apart_dev_does_not_move_with_the_seed(shared_data):
    a = load_validation("gsm8k:dev", shared_data, seed=0)
    b = load_validation("gsm8k:dev", shared_data, seed=5)
    assert [e.id for e in a] == [e.id for e in b] and len(a) == 500


def test_choice_fields_on_multiple_choice_examples(shared_data):
    from raise_select.evaluation.choices import item_from_example

    for name in ("arc_challenge", "commonsenseqa", "mmlu", "mathqa"):
        examples = load_validation(name, shared_data, n=20, seed=0)
        for e in examples:
            rec = e.record
            assert rec[bm.CHOICES_FIELD] and 0 <= rec[bm.GOLD_FIELD] < len(rec[bm.CHOICES_FIELD])
            letter = bm.LETTERS[rec[bm.GOLD_FIELD]]
            assert e.response == f"The answer is {letter}."
            assert f"\n{letter}. {rec[bm.CHOICES_FIELD][rec[bm.GOLD_FIELD]]}\n" in e.messages[0][1]
            item = item_from_example(e)
            assert (item.question, list(item.choices), item.gold) == (
                rec[bm.QUESTION_FIELD],
                rec[bm.CHOICES_FIELD],
                rec[bm.GOLD_FIELD],
            )
    assert bm.CHOICES_FIELD not in load_validation("gsm8k", shared_data, n=3)[0].record


def test_unknown_held_out_sets_are_refused(shared_data):
    with pytest.raises(UserError, match="'mathqa' has no held-out sets; held-out sets: mmlu:dev"):
        load_validation("mathqa:dev", shared_data)
    with pytest.raises(UserError, match="unknown held-out set 'gsm8k:valid'.*gsm8k:test"):
        load_validation("gsm8k:valid", shared_data)
    with pytest.raises(UserError, match="gsm8k:dev is a held-out set with no splits of its own"):
        load_validation("gsm8k:dev", shared_data, split="train")
    with pytest.raises(UserError, match="mathqa: no held-out dev/test sets"):
        bm.split_parts("mathqa", shared_data)
