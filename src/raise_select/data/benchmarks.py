"""Named validation and evaluation sets (MMLU, ARC-Challenge, CommonsenseQA, GSM8K,
MathQA, MMLU college_mathematics) read from the original files in a data folder, or from
the hub (`datasets.load_dataset`) when no folder is given.

`NAMED_SETS` maps a name to a loader `(data_dir, split, n, seed) -> list[Example]`, so a
name works wherever a validation set is asked for (`--val gsm8k`).

Every row is first normalised to a *doc*, the one shape shared by the validation
examples here and the lm-evaluation-harness tasks in `raise_select.evaluation.tasks`:

- multiple choice: `{"question": str, "choices": [str, ...], "label": int}`; the choices
  are always relabelled A, B, C, ... in file order (ARC's digit labels "1".."4" are
  mapped through `question.choices[*].label`, never read as letters or indices);
- GSM8K: `{"question": str, "rationale": str, "answer": str}`; the rationale without
  the `<<expr=result>>` calculator annotations, the answer the number after `####` with
  thousands commas removed.

An `Example` is then one user turn and one assistant turn:

- prompt: ``Question: <question>\\nA. <choice>\\nB. <choice>...\\nAnswer:`` (GSM8K:
  ``Question: <question>\\nAnswer:``), the text the evaluation tasks score;
- response: ``The answer is B.`` for multiple choice; for GSM8K the rationale, a
  newline, then ``The answer is 72.``.

Validation sets follow the paper's Table 2 (appendix A.1) in size:

| name | `validation` drawn from | size |
|---|---|---|
| mmlu | all of `dev/` (5 per subject x 57) | 285 |
| arc_challenge | all of `ARC-Challenge-Dev.jsonl` | 299 |
| commonsenseqa | seeded sample of `train_rand_split.jsonl` less its dev part (8,741) | 280 |
| gsm8k | seeded sample of `train.jsonl` less its dev part (6,973) | 256 |
| mathqa | all of `dev.json` (not in the paper) | 4,475 |
| mmlu_college_mathematics | `dev/college_mathematics_dev.csv` (not in the paper) | 5 |

MMLU's 285 in Table 2 is exactly the size of its `dev/` split, so that is the split used
(`val/`, 1,531 rows, is there as split `val`). CommonsenseQA's validation rows come from its
train file: its test file has no answers, so its dev file is what is evaluated (as in
lm-evaluation-harness), and validation and evaluation must not share it (the paper draws both
from dev). The evaluation split of the harness (`BenchmarkSpec.eval_split`) is `test`
everywhere except CommonsenseQA (`dev`).

Held-out sets (`split_parts`, named `<name>:dev` and `<name>:test`): three disjoint parts per
target, no question in two of them (compared lower-cased, whitespace collapsed): the rows
validation samples are drawn from, a dev set for choosing settings and a test set reported
once.

| target | validation rows | `:dev` | `:test` |
|---|---|---|---|
| gsm8k | train less the dev part | 500 rows of train set apart (fixed) | `test.jsonl` (1,319) |
| arc_challenge | `Dev` (299) | `Train` (1,113 of 1,119) | `Test` (1,170 of 1,172) |
| commonsenseqa | train less the dev part | 1,000 rows of train set apart (fixed) | `dev_rand_split` (1,221) |
| mmlu | `dev/` (285) | `val/` (1,492 of 1,531) | `test/` (14,037 of 14,042) |

A dev part set apart from a shared split is a fixed seeded sample (`SPLIT_SEED`), whatever
`seed` the validation sample uses, so no validation sample overlaps it. Samples are seeded
(`seed`, default 0) and keep the file order. Multiple-choice examples carry their item in
the record fields `mc_question`, `mc_choices` and `mc_gold` (read by
`evaluation.choices`).
"""

from __future__ import annotations

import ast
import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError, where
from .pools import Example, decode_utf8, example_id, rows_from_path, sample_indices

Loader = Callable[[Path | None, str, int | None, int], list[Example]]

LETTERS = "ABCDEFGHIJ"
VALIDATION = "validation"
MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")

# ---------------------------------------------------------------- answer parsing

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\(?\$?(" + _NUMBER + r")", re.IGNORECASE)
_HASHES = re.compile(r"####\s*\$?(" + _NUMBER + r")")
_ANY_NUMBER = re.compile(_NUMBER)


def normalize_number(text: str) -> str:
    """Canonical form of a numeric answer: no thousands commas, no `$`, no trailing period."""
    out = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return out


def gsm8k_gold_answer(answer_field: str, source: str = "", row: int | None = None) -> str:
    """The number after GSM8K's `####` line, thousands commas stripped (`1,000` -> `1000`)."""
    if "####" not in answer_field:
        raise UserError(f"{where(source, row, 'answer')}: GSM8K answer has no '#### <number>' line")
    final = answer_field.rsplit("####", 1)[1].strip()
    if not re.fullmatch(_NUMBER, final):
        raise UserError(f"{where(source, row, 'answer')}: GSM8K final answer {final!r} is not a number")
    return normalize_number(final)


def extract_final_number(text: str) -> str | None:
    """The final numeric answer of a generation: after 'The answer is', else after '####',
    else the last number in the text; normalised with `normalize_number`."""
    for pattern in (_ANSWER_IS, _HASHES):
        found = pattern.findall(text)
        if found:
            return normalize_number(found[-1])
    numbers = _ANY_NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def extract_letter(text: str, num_choices: int) -> str | None:
    """The chosen option letter in a generation: 'The answer is (B)', 'B.', 'B) ...'."""
    valid = LETTERS[:num_choices]
    found = re.findall(r"answer is\s*:?\s*\(?([A-J])\b", text, re.IGNORECASE)
    if found and found[-1].upper() in valid:
        return found[-1].upper()
    m = re.match(r"\s*\(?([A-J])(?:[).:]|\s|$)", text)
    if m and m.group(1) in valid:
        return m.group(1)
    return None


def parse_mathqa_options(options: str, source: str = "", row: int | None = None) -> list[str]:
    """MathQA's `options` string into its five choices, in order a..e.

    Two spellings occur: ``"a ) 190 , b ) 191 , ..."`` and, in some rows, the Python
    list repr ``"['a ) 190', 'b ) 191', ...]"``.
    """
    text = options.strip()
    if text.startswith("["):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise UserError(f"{where(source, row, 'options')}: unreadable options list {options!r}") from None
        pairs = [re.match(r"\s*([a-e])\s*\)\s*(.*)", str(item), re.S) for item in items]
        letters = [p.group(1) if p else "?" for p in pairs]
        choices = [p.group(2).strip() if p else "" for p in pairs]
    else:
        parts = re.split(r"(?:^|\s*,\s*)([a-e])\s*\)\s*", text)
        letters, choices = parts[1::2], [p.strip().rstrip(",").strip() for p in parts[2::2]]
    if letters != list("abcde"[: len(letters)]) or len(letters) < 2 or not all(choices):
        raise UserError(f"{where(source, row, 'options')}: expected options 'a ) ... , b ) ...', got {options!r}")
    return choices


# ---------------------------------------------------------------- rows -> docs


def _field(rec: dict, name: str, source: str, row: int | None) -> Any:
    if not isinstance(rec, Mapping) or name not in rec or rec[name] is None:
        raise UserError(f"{where(source, row, name)}: missing field")
    return rec[name]


def _labelled_choice_doc(rec: dict, source: str = "", row: int | None = None) -> dict:
    """ARC and CommonsenseQA, in the original file shape (`question.stem`,
    `question.choices[*].{label,text}`) or the hub shape (`question`, `choices.{label,text}`)."""
    question = _field(rec, "question", source, row)
    if isinstance(question, Mapping):
        stem = _field(question, "stem", source, row)
        raw = _field(question, "choices", source, row)
        if not isinstance(raw, list) or not all(isinstance(c, Mapping) and "label" in c and "text" in c for c in raw):
            raise UserError(
                f"{where(source, row, 'question.choices')}: expected a list of {{'label', 'text'}} objects, "
                f"got {type(raw).__name__}"
            )
        labels = [str(c.get("label")) for c in raw]
        texts = [str(c.get("text")) for c in raw]
    else:
        stem = question
        raw = _field(rec, "choices", source, row)
        if not (
            isinstance(raw, Mapping)
            and isinstance(raw.get("label"), list)
            and isinstance(raw.get("text"), list)
            and len(raw["label"]) == len(raw["text"])
        ):
            raise UserError(
                f"{where(source, row, 'choices')}: expected {{'label': [...], 'text': [...]}} of equal length, "
                f"got {type(raw).__name__}"
            )
        labels, texts = [str(x) for x in raw["label"]], [str(x) for x in raw["text"]]
    key = str(_field(rec, "answerKey", source, row)).strip()
    if not key:
        raise UserError(f"{where(source, row, 'answerKey')}: no answer (CommonsenseQA's test file has none; use dev)")
    if key not in labels:
        raise UserError(f"{where(source, row, 'answerKey')}: {key!r} is not one of the choice labels {labels}")
    if len(texts) > len(LETTERS):
        raise UserError(f"{where(source, row, 'choices')}: more than {len(LETTERS)} choices")
    return {"question": str(stem).strip(), "choices": texts, "label": labels.index(key)}


def _mmlu_doc(rec: dict, source: str = "", row: int | None = None) -> dict:
    """MMLU: a header-less CSV row `question,A,B,C,D,answer` (answer a letter), or the hub
    shape `question`, `choices` (4), `answer` (an index)."""
    question = _field(rec, "question", source, row)
    if "choices" in rec:
        if not isinstance(rec["choices"], (list, tuple)):
            raise UserError(
                f"{where(source, row, 'choices')}: expected a list of choices, got {type(rec['choices']).__name__}"
            )
        choices = [str(c) for c in rec["choices"]]
        answer = _field(rec, "answer", source, row)
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise UserError(f"{where(source, row, 'answer')}: expected the index of the right choice, got {answer!r}")
        label = answer
    else:
        choices = [str(_field(rec, c, source, row)) for c in "ABCD"]
        answer = str(_field(rec, "answer", source, row)).strip()
        if answer not in "ABCD" or len(answer) != 1:
            raise UserError(f"{where(source, row, 'answer')}: expected a letter A-D, got {answer!r}")
        label = "ABCD".index(answer)
    if not 0 <= label < len(choices):
        raise UserError(f"{where(source, row, 'answer')}: answer index {label} out of range")
    return {"question": str(question).strip(), "choices": choices, "label": label}


def _mathqa_doc(rec: dict, source: str = "", row: int | None = None) -> dict:
    choices = parse_mathqa_options(str(_field(rec, "options", source, row)), source, row)
    correct = str(_field(rec, "correct", source, row)).strip().lower()
    if correct not in "abcde"[: len(choices)] or len(correct) != 1:
        raise UserError(
            f"{where(source, row, 'correct')}: expected a letter a-{'abcde'[len(choices) - 1]}, got {correct!r}"
        )
    return {
        "question": str(_field(rec, "Problem", source, row)).strip(),
        "choices": choices,
        "label": "abcde".index(correct),
    }


def _gsm8k_doc(rec: dict, source: str = "", row: int | None = None) -> dict:
    answer_field = str(_field(rec, "answer", source, row))
    rationale = _CALCULATOR.sub("", answer_field.rsplit("####", 1)[0]).strip()
    return {
        "question": str(_field(rec, "question", source, row)).strip(),
        "rationale": rationale,
        "answer": gsm8k_gold_answer(answer_field, source, row),
    }


# ---------------------------------------------------------------- docs -> text


def format_prompt(doc: dict) -> str:
    """The question with lettered choices and the answer cue (also lm-eval's `doc_to_text`)."""
    lines = [f"Question: {doc['question']}"]
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(doc.get("choices") or [])]
    return "\n".join(lines) + "\nAnswer:"


def format_response(doc: dict) -> str:
    """The gold answer text: 'The answer is B.', or GSM8K's rationale then its final number."""
    if "choices" in doc:
        return f"The answer is {LETTERS[doc['label']]}."
    return f"{doc['rationale']}\nThe answer is {doc['answer']}."


# ---------------------------------------------------------------- the sets


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a named set lives (files or hub) and how its rows become docs."""

    name: str
    to_doc: Callable[..., dict]
    files: dict[str, str]  # split -> glob relative to the data folder
    hub: tuple[str, str | None]  # `datasets.load_dataset(path, name)`
    hub_splits: dict[str, str]  # split -> hub split name
    validation_split: str  # the split the validation set is drawn from
    validation_size: int | None  # Table 2 sample size; None = the whole split
    eval_split: str  # the split evaluation scores
    lm_eval_task: str  # lm-evaluation-harness's own (hub) task
    multiple_choice: bool = True
    csv_columns: tuple[str, ...] = field(default=())  # header-less CSV files
    # Held-out sets `<name>:dev` and `<name>:test` (see `HELDOUT`): the file split each is
    # drawn from; a dev drawn from the validation split is a fixed sample of `dev_size` rows
    # set apart from it. None: no held-out sets.
    dev_split: str | None = None
    dev_size: int | None = None
    test_split: str | None = None


BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in (
        BenchmarkSpec(
            "mmlu",
            _mmlu_doc,
            files={"dev": "mmlu/dev/*_dev.csv", "val": "mmlu/val/*_val.csv", "test": "mmlu/test/*_test.csv"},
            hub=("cais/mmlu", "all"),
            hub_splits={"dev": "dev", "val": "validation", "test": "test"},
            validation_split="dev",
            validation_size=None,
            eval_split="test",
            lm_eval_task="mmlu",
            csv_columns=MMLU_COLUMNS,
            dev_split="val",
            test_split="test",
        ),
        BenchmarkSpec(
            "arc_challenge",
            _labelled_choice_doc,
            files={
                "train": "arc_challenge/ARC-Challenge-Train.jsonl",
                "dev": "arc_challenge/ARC-Challenge-Dev.jsonl",
                "test": "arc_challenge/ARC-Challenge-Test.jsonl",
            },
            hub=("allenai/ai2_arc", "ARC-Challenge"),
            hub_splits={"train": "train", "dev": "validation", "test": "test"},
            validation_split="dev",
            validation_size=None,
            eval_split="test",
            lm_eval_task="arc_challenge",
            dev_split="train",
            test_split="test",
        ),
        BenchmarkSpec(
            "commonsenseqa",
            _labelled_choice_doc,
            files={
                "train": "commonsenseqa/train_rand_split.jsonl",
                "dev": "commonsenseqa/dev_rand_split.jsonl",
                "test": "commonsenseqa/test_rand_split_no_answers.jsonl",
            },
            hub=("tau/commonsense_qa", None),
            hub_splits={"train": "train", "dev": "validation", "test": "test"},
            validation_split="train",
            validation_size=280,
            eval_split="dev",
            lm_eval_task="commonsense_qa",
            dev_split="train",
            dev_size=1000,
            test_split="dev",
        ),
        BenchmarkSpec(
            "gsm8k",
            _gsm8k_doc,
            files={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
            hub=("openai/gsm8k", "main"),
            hub_splits={"train": "train", "test": "test"},
            validation_split="train",
            validation_size=256,
            eval_split="test",
            lm_eval_task="gsm8k",
            multiple_choice=False,
            dev_split="train",
            dev_size=500,
            test_split="test",
        ),
        BenchmarkSpec(
            "mathqa",
            _mathqa_doc,
            files={
                "dev": "mathqa/dev.json",
                "test": "mathqa/test.json",
                "challenge_test": "mathqa/challenge_test.json",
            },
            hub=("allenai/math_qa", None),
            hub_splits={"train": "train", "dev": "validation", "test": "test"},
            validation_split="dev",
            validation_size=None,
            eval_split="test",
            lm_eval_task="mathqa",
        ),
        BenchmarkSpec(
            "mmlu_college_mathematics",
            _mmlu_doc,
            files={
                "dev": "mmlu/dev/college_mathematics_dev.csv",
                "val": "mmlu/val/college_mathematics_val.csv",
                "test": "mmlu/test/college_mathematics_test.csv",
            },
            hub=("cais/mmlu", "college_mathematics"),
            hub_splits={"dev": "dev", "val": "validation", "test": "test"},
            validation_split="dev",
            validation_size=None,
            eval_split="test",
            lm_eval_task="mmlu_college_mathematics",
            csv_columns=MMLU_COLUMNS,
            dev_split="val",
            test_split="test",
        ),
    )
}


def get_benchmark(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise UserError(f"unknown task '{name}'; available: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _read_header_less_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[str, int, dict]]:
    text = decode_utf8(path.read_bytes(), path)
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        numbered = list(enumerate(reader))
    except csv.Error as e:
        raise UserError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    rows = []
    for i, values in numbered:
        if len(values) != len(columns):
            raise UserError(
                f"{where(str(path), i)}: expected {len(columns)} columns ({','.join(columns)}), got {len(values)}"
            )
        rec = dict(zip(columns, values))
        rec["subject"] = path.stem.rsplit("_", 1)[0]
        rows.append((str(path), i, rec))
    return rows


def read_rows(spec: BenchmarkSpec, data_dir: Path | None, split: str) -> list[tuple[str, int, dict]]:
    """`(source, row, record)` of one split, from the data folder or the hub."""
    available = sorted(set(spec.files) | set(spec.hub_splits))
    if data_dir is None:
        if split not in spec.hub_splits:
            raise UserError(f"{spec.name}: unknown split '{split}'; available: {', '.join(available)}, {VALIDATION}")
        import datasets

        path, name = spec.hub
        hub_split = spec.hub_splits[split]
        try:
            ds = datasets.load_dataset(path, name, split=hub_split)
        except Exception as e:  # network, missing dataset, bad split
            raise UserError(
                f"{spec.name}: no --data-dir given and loading '{path}' ({name}, {hub_split}) from the hub failed: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        return [(f"{path}:{hub_split}", i, rec) for i, rec in enumerate(ds)]
    if split not in spec.files:
        raise UserError(
            f"{spec.name}: unknown split '{split}' in a data folder; available: {', '.join(spec.files)}, {VALIDATION}"
        )
    files = sorted(Path(data_dir).glob(spec.files[split]))
    if not files:
        raise UserError(
            f"{Path(data_dir) / spec.files[split]}: no such file (expected the {spec.name} {split} split there)"
        )
    rows: list[tuple[str, int, dict]] = []
    for fp in files:
        if spec.csv_columns:
            rows += _read_header_less_csv(fp, spec.csv_columns)
        else:
            rows += list(rows_from_path(fp))
    return rows


def load_docs(name: str, data_dir: str | Path | None, split: str) -> list[tuple[dict, str, int, dict]]:
    """`(doc, source, row, record)` for every row of a split (`validation` not resolved here)."""
    spec = get_benchmark(name)
    rows = read_rows(spec, Path(data_dir) if data_dir is not None else None, split)
    return [(spec.to_doc(rec, source, row), source, row, rec) for source, row, rec in rows]


# Record fields that carry a multiple-choice item on its `Example` (read by
# `evaluation.choices`): the bare question, the choice texts in order, the gold index.
QUESTION_FIELD, CHOICES_FIELD, GOLD_FIELD = "mc_question", "mc_choices", "mc_gold"
DEV, TEST = "dev", "test"
HELDOUT = (DEV, TEST)
# The dev part set apart from a split that validation samples are also drawn from is a fixed
# sample: it does not move with `seed`, so no validation sample of any seed or size overlaps it.
SPLIT_SEED = 0

DocRow = tuple[dict, str, int, dict]


def question_key(doc: dict) -> str:
    """What two items must not share across validation, dev and test: the question text,
    lower-cased, whitespace collapsed."""
    return " ".join(str(doc["question"]).lower().split())


def _set_apart(spec: BenchmarkSpec, docs: list[DocRow]) -> tuple[list[DocRow], list[DocRow]]:
    """(dev part, the rest) of the validation split when the dev set is drawn from it; the rest
    loses every row whose question is also in the dev part."""
    size = spec.dev_size
    if size is None or size >= len(docs):
        raise UserError(
            f"{spec.name}: the {spec.validation_split} split has {len(docs)} rows, too few to set {size} apart "
            "as the dev set"
        )
    chosen = set(sample_indices(len(docs), size, SPLIT_SEED))
    dev = [d for i, d in enumerate(docs) if i in chosen]
    dev_keys = {question_key(d[0]) for d in dev}
    rest = [d for i, d in enumerate(docs) if i not in chosen and question_key(d[0]) not in dev_keys]
    return dev, rest


def _validation_docs(spec: BenchmarkSpec, data_dir: str | Path | None) -> list[DocRow]:
    """The rows validation samples are drawn from: the validation split, less the dev part
    set apart from it (when the dev set shares it)."""
    docs = load_docs(spec.name, data_dir, spec.validation_split)
    if spec.dev_split is not None and spec.dev_split == spec.validation_split:
        docs = _set_apart(spec, docs)[1]
    return docs


def split_parts(name: str, data_dir: str | Path | None = None) -> dict[str, list[DocRow]]:
    """The three disjoint parts of a target: `validation` (the rows validation samples are
    drawn from), `dev` and `test` (the held-out sets), as `(doc, source, row, record)` rows in
    file order. No question is in two parts: the validation rows are kept whole, the test set
    loses rows whose question is among them, the dev set rows whose question is in either."""
    spec = get_benchmark(name)
    if spec.dev_split is None or spec.test_split is None:
        have = ", ".join(n for n, s in BENCHMARKS.items() if s.dev_split is not None)
        raise UserError(f"{name}: no held-out dev/test sets; targets with them: {have}")
    if spec.test_split in (spec.validation_split, spec.dev_split):
        raise UserError(f"{name}: the test split '{spec.test_split}' must be a split of its own")
    if spec.dev_split == spec.validation_split:
        dev, validation = _set_apart(spec, load_docs(name, data_dir, spec.validation_split))
    else:
        validation = load_docs(name, data_dir, spec.validation_split)
        dev = load_docs(name, data_dir, spec.dev_split)
        if spec.dev_size is not None and spec.dev_size < len(dev):
            dev = [dev[i] for i in sample_indices(len(dev), spec.dev_size, SPLIT_SEED)]
    taken = {question_key(d[0]) for d in validation}
    test = [d for d in load_docs(name, data_dir, spec.test_split) if question_key(d[0]) not in taken]
    taken |= {question_key(d[0]) for d in test}
    dev = [d for d in dev if question_key(d[0]) not in taken]
    return {VALIDATION: validation, DEV: dev, TEST: test}


def _examples(docs: list[DocRow]) -> list[Example]:
    examples = []
    for doc, source, row, rec in docs:
        messages = (("user", format_prompt(doc)), ("assistant", format_response(doc)))
        record = dict(rec)
        if "choices" in doc:
            record.update(
                {QUESTION_FIELD: doc["question"], CHOICES_FIELD: list(doc["choices"]), GOLD_FIELD: doc["label"]}
            )
        examples.append(Example(id=example_id(messages), messages=messages, record=record, source=source, row=row))
    return examples


def _sample(name: str, docs: list[DocRow], size: int | None, seed: int) -> list[DocRow]:
    if size is not None:
        if size <= 0:
            raise UserError(f"{name}: the number of examples must be positive, got {size}")
        if size < len(docs):
            docs = [docs[i] for i in sample_indices(len(docs), size, seed)]
    return docs


def load_named_set(
    name: str, data_dir: Path | None = None, split: str = VALIDATION, n: int | None = None, seed: int = 0
) -> list[Example]:
    """The examples of a named set's split; `validation` is the paper's Table 2 set, drawn
    from the target's validation rows (never from its held-out dev or test set).

    `n` caps the size with a seeded sample (for `validation` it replaces the Table 2 size).
    Multiple-choice examples carry their item in the record fields `mc_question`,
    `mc_choices` and `mc_gold`.
    """
    spec = get_benchmark(name)
    if split == VALIDATION:
        docs = _sample(name, _validation_docs(spec, data_dir), n if n is not None else spec.validation_size, seed)
    else:
        docs = _sample(name, load_docs(name, data_dir, split), n, seed)
    return _examples(docs)


def load_heldout(
    name: str, part: str, data_dir: Path | None = None, split: str = VALIDATION, n: int | None = None, seed: int = 0
) -> list[Example]:
    """The held-out `part` (`dev` or `test`) of a target, named `<name>:<part>`; `n` caps it
    with a seeded sample. `split` is there for the named-set signature: only its default
    (the set itself) or `part` is accepted."""
    if split not in (VALIDATION, part):
        raise UserError(f"{name}:{part} is a held-out set with no splits of its own; got split '{split}'")
    return _examples(_sample(f"{name}:{part}", split_parts(name, data_dir)[part], n, seed))


def heldout_names() -> list[str]:
    """`<name>:dev` and `<name>:test` of every target that has held-out sets."""
    return [f"{n}:{p}" for n, s in BENCHMARKS.items() if s.dev_split is not None for p in HELDOUT]


NAMED_SETS: dict[str, Loader] = {
    **{name: partial(load_named_set, name) for name in BENCHMARKS},
    **{key: partial(load_heldout, *key.split(":")) for key in heldout_names()},
}
