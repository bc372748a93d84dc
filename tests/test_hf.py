"""RAISE choosing the batches of a TRL SFTTrainer run (tiny model, CPU)."""

import json

import numpy as np
import pytest
import torch

from raise_select.data.pools import load_pool
from raise_select.errors import UserError
from raise_select.features.table import FEATURE_COLUMNS, FeatureTable
from raise_select.policy import PolicyConfig, RaisePolicy, StaticState
from raise_select.training.export import export_chosen
from raise_select.training.hf import pool_dataset, with_raise
from raise_select.training.reward import Validator

STEPS = 4


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    rows = [
        {"instruction": f"What is {i} plus 7?", "input": "", "output": f"The answer is {i + 7}."} for i in range(16)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_pool(path)


@pytest.fixture(scope="module")
def policy(pool):
    """Two classes, b = 2 (B = 4), features drawn at random: the test is about the plumbing."""
    rng = np.random.default_rng(0)
    n = len(pool)
    table = FeatureTable(
        ids=pool.ids,
        columns={c: rng.uniform(1, 20, n) if c.startswith("len") else rng.normal(-3, 1, n) for c in FEATURE_COLUMNS},
        sem=rng.normal(size=(n, 4)).astype(np.float32),
        cluster=np.arange(n) % 2,
        meta={"classes": 2},
    )
    return RaisePolicy(StaticState.from_features(table), PolicyConfig(per_class=2, seed=0, use_rule="topk"))


def _trainer(cls, tiny_model_dir, pool, policy, out, validator=None, **overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = dict(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_length=128,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    args.update(overrides)
    return cls(
        model=model,
        processing_class=tok,
        args=SFTConfig(**args),
        train_dataset=pool_dataset(pool),
        raise_policy=policy,
        raise_validator=validator,
        raise_eval_every=1,
        raise_ids=pool.ids,
    )


def test_sft_trainer_trains_on_the_batches_the_policy_chose(tiny_model_dir, pool, policy, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    trained_on: list[list[list[int]]] = []  # per forward pass, the unpadded input ids of each row

    class Recording(with_raise(SFTTrainer)):
        def compute_loss(self, model, inputs, *args, **kwargs):
            mask = inputs["attention_mask"].bool()
            trained_on.append([row[m].tolist() for row, m in zip(inputs["input_ids"], mask)])
            return super().compute_loss(model, inputs, *args, **kwargs)

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    val = pool.examples[:4]
    p0 = Validator(val, tok, max_length=128)(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    trainer = _trainer(Recording, tiny_model_dir, pool, policy, tmp_path, validator=Validator(val, tok, max_length=128))
    trainer.train()
    sampler, callback = trainer.raise_sampler, trainer.raise_callback

    # The rows behind every forward pass, two micro-batches of 2 per optimizer step.
    row_of = {tuple(ids): r for r, ids in enumerate(trainer.train_dataset["input_ids"])}
    assert len(row_of) == len(pool)
    rows = [row_of[tuple(ids)] for batch in trained_on for ids in batch]
    steps_trained = [rows[k : k + 4] for k in range(0, len(rows), 4)]
    assert len(steps_trained) == STEPS == trainer.state.global_step
    assert steps_trained == [h["indices"] for h in sampler.history[:STEPS]]

    # Each choice is Algorithm 1 at the recorded state, with counts rebuilt by a plain loop.
    counts = torch.zeros(len(pool), dtype=torch.int64)
    for t, h in enumerate(sampler.history, start=1):
        assert h["step"] == t and h["progress"] == pytest.approx(t / STEPS if t <= STEPS else 1.0)
        expected = policy.act(h["perf"], h["progress"], counts, explore=False).indices.tolist()
        assert h["indices"] == expected
        for i in expected:
            counts[i] += 1
        assert sorted(policy.static.classes[expected].tolist()) == [0, 0, 1, 1]

    # P: measured at the start (= P(M_0)) and after every step; step t sees P of step t-2.
    measured = dict(callback.perf_log)
    assert sorted(measured) == list(range(STEPS + 1))
    assert measured[0] == pytest.approx(p0, abs=1e-4)  # same weights; SFTTrainer may switch the attention kernel
    assert measured[STEPS] != measured[0]
    for t, h in enumerate(sampler.history[:STEPS], start=1):
        assert h["perf"] == measured[max(t - 2, 0)]

    # The log is the one `raise-select select` exports.
    summary = export_chosen(pool, tmp_path, tmp_path / "chosen.jsonl")
    assert summary.steps == len(sampler.history) and summary.selections == 4 * len(sampler.history)


def test_mismatched_batch_and_dataset_are_refused(tiny_model_dir, pool, policy, tmp_path):
    from trl import SFTTrainer

    cls = with_raise(SFTTrainer)
    with pytest.raises(UserError, match=r"B = 4 .* per_device_train_batch_size 3 x gradient_accumulation_steps 2"):
        _trainer(cls, tiny_model_dir, pool, policy, tmp_path, per_device_train_batch_size=3)
    trainer = _trainer(cls, tiny_model_dir, pool, policy, tmp_path)
    trainer.train_dataset = trainer.train_dataset.select(range(10))
    with pytest.raises(UserError, match="the training dataset has 10 rows but the policy's pool has 16"):
        trainer.train()
