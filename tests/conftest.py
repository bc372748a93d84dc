"""Shared fixtures: a tiny Llama + locally trained tokenizer, a six-row pool on its vocabulary, and
the real data folder. Shared helpers, imported by the tests that use them, write or build small test
inputs: random features of a pool, arithmetic Alpaca rows, a multi-turn ShareGPT file, an in-memory
messages pool, a finetune run folder."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("RAISE_SELECT_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
).resolve()

TOKENIZER_TEXTS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "What is 12 plus 7? The answer is 19.",
    "Translate to French: good morning. Bonjour.",
    "Name three colors: red, green and blue.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
] * 20

TINY_ROWS = [
    {"instruction": "What is 12 plus 7?", "input": "", "output": "The answer is 19."},
    {"instruction": "Translate to French.", "input": "good morning", "output": "Bonjour."},
    {"instruction": "Name three colors.", "input": "", "output": "red, green and blue"},
    {"instruction": "What is 3 plus 4?", "input": "", "output": "The answer is 7."},
    {"instruction": "Say hi.", "input": "", "output": "Hi! The quick brown fox."},
    {"instruction": "Count to three.", "input": "", "output": "1 2 3"},
]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one intra-op thread (and tests stay repeatable)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA} (set RAISE_SELECT_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A ~20k-parameter Llama with a BPE tokenizer trained on the spot, saved to a folder."""
    from raise_select.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), TOKENIZER_TEXTS, preset="test", seed=0)


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory):
    """TINY_ROWS as a loaded Alpaca pool (one per test module)."""
    from raise_select.data.pools import load_pool

    path = tmp_path_factory.mktemp("pool") / "pool.json"
    path.write_text(json.dumps(TINY_ROWS))
    return load_pool(path)


@pytest.fixture(scope="module")
def tiny_model_tok(tiny_model_dir):
    """(model, tokenizer) of the tiny Llama, loaded once per test module."""
    from raise_select.models import load_model_and_tokenizer

    return load_model_and_tokenizer(str(tiny_model_dir))


def random_features(
    ids, classes: int, *, seed: int = 0, len_response: float = 5.0, more_columns=None, meta=None, rds=None
):
    """A FeatureTable of random features for the rows `ids` (not written: call `.write(path)`).

    Drawn from default_rng(seed) in this order, so tests can pin values: one N(0, 1) column per
    FEATURE_COLUMNS entry, then `more_columns(rng, n)` (extra or replaced columns, when given), then
    a 4-dim `sem`. len_prompt is 8 tokens a row, len_response `len_response`; row i is in class
    i % classes; `meta` adds fields after `classes`; `rds` is passed through.
    """
    import numpy as np

    from raise_select.features.table import FEATURE_COLUMNS, FeatureTable

    rng = np.random.default_rng(seed)
    n = len(ids)
    columns = {c: rng.normal(size=n) for c in FEATURE_COLUMNS}
    columns.update(len_prompt=np.full(n, 8.0), len_response=np.full(n, len_response))
    if more_columns is not None:
        columns.update(more_columns(rng, n))
    return FeatureTable(
        ids=ids,
        columns=columns,
        sem=rng.normal(size=(n, 4)).astype(np.float32),
        cluster=np.arange(n) % classes,
        meta={"classes": classes, **(meta or {})},
        rds=rds,
    )


def plus_rows(n: int) -> list[dict]:
    """n Alpaca rows "What is i plus i + 1?" -> "The answer is 2i + 1."."""
    return [
        {"instruction": f"What is {i} plus {i + 1}?", "input": "", "output": f"The answer is {2 * i + 1}."}
        for i in range(n)
    ]


CHOICE_DOCS = [
    {"question": "What is 3 plus 4?", "choices": ["7", "8", "the lazy dog"], "label": 0},
    {"question": "Name a color.", "choices": ["bonjour", "red"], "label": 1},
    {"question": "What is 10 plus 1?", "choices": ["9", "12", "11", "0"], "label": 2},
    {"question": "Which one is an animal?", "choices": ["a cat", "a spoon"], "label": 0},
]


def write_choice_items(path, docs: list[dict]) -> None:
    """Multiple-choice items as a messages JSONL file in the project's lettered prompt format
    ("Question: ...", "A. ...", ..., "Answer:" -> "The answer is X.")."""
    from raise_select.data.benchmarks import format_prompt, format_response

    rows = [
        {
            "messages": [
                {"role": "user", "content": format_prompt(d)},
                {"role": "assistant", "content": format_response(d)},
            ]
        }
        for d in docs
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def multi_turn_sharegpt(path, n: int = 12):
    """Row i: a system turn on even rows; rows 0, 3, 6, 9 hold two earlier exchanges, rows 1, 4,
    7, 10 one, the others none."""
    rows = []
    for i in range(n):
        turns = [{"from": "system", "value": f"sys {i}"}] if i % 2 == 0 else []
        for k in range(2 - i % 3):
            turns += [{"from": "human", "value": f"q{i}.{k}"}, {"from": "gpt", "value": f"a{i}.{k}"}]
        turns += [{"from": "human", "value": f"last question {i}"}, {"from": "gpt", "value": f"last answer {i}"}]
        rows.append({"conversations": turns})
    path.write_text(json.dumps(rows), encoding="utf-8")
    return rows


def messages_pool(n: int):
    """An in-memory messages Pool of n arithmetic rows, some answers padded with " red"."""
    from raise_select.data.pools import Example, Pool, example_id

    examples = []
    for i in range(n):
        msgs = (("user", f"What is {i} plus {i % 7}?"), ("assistant", f"The answer is {i + i % 7}." + " red" * (i % 3)))
        examples.append(Example(id=example_id(msgs), messages=msgs, record={}, row=i))
    return Pool(examples=examples, format="messages", sources=["test"])


def finetune_run(root, pool_path, chosen: list[list[int]]):
    """A finetune run folder (root / "run") whose step t chose the pool rows chosen[t - 1]; returns (run, pool)."""
    import yaml

    from raise_select.data.pools import load_pool

    pool = load_pool(pool_path)
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"pool": str(pool_path), "steps": len(chosen)}))
    lines = [
        {"step": t, "ids": [pool.examples[i].id for i in rows], "indices": rows} for t, rows in enumerate(chosen, 1)
    ]
    (run / "selections.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run, pool


def benchmark_module(name: str):
    """A script of `benchmarks/` (`name`, without .py) loaded as a module, for testing its functions."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
