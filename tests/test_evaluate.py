"""`raise-select evaluate`: the project's lm-eval tasks on real rows, checked against a
direct loglikelihood computation and against oracle models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from raise_select.data.benchmarks import BENCHMARKS, LETTERS, format_prompt, load_docs
from raise_select.errors import UserError
from raise_select.evaluation.evaluate import EvaluateConfig, evaluate, write_task_configs

ALL_TASKS = list(BENCHMARKS)
LIMIT = 4


def _reference_accuracy(model_dir: Path, docs: list[dict], max_length: int) -> float:
    """Letter accuracy by plain transformers: sum log P(" X" | prompt) per letter, argmax.

    The continuation tokens are those of `prompt + " X"` past the tokens of `prompt`, and the
    input keeps its last `max_length` tokens, as lm-eval's HFLM does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    correct = 0
    for doc in docs:
        context = format_prompt(doc)
        scores = []
        for letter in LETTERS[: len(doc["choices"])]:
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            whole = tok(context + " " + letter, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx) :]
            tokens = (ctx + cont)[-(max_length + 1) :]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([tokens[:-1]])).logits[0].float(), -1)
            positions = range(len(tokens) - 1 - len(cont), len(tokens) - 1)
            scores.append(sum(logp[p, t].item() for p, t in zip(positions, cont)))
        correct += int(max(range(len(scores)), key=lambda i: (scores[i], -i)) == doc["label"])
    return correct / len(docs)


def test_every_local_task_end_to_end_with_a_tiny_model(shared_data, tiny_model_dir, tmp_path):
    from raise_select.cli.main import app

    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--tasks",
            ",".join(ALL_TASKS),
            "--data-dir",
            str(shared_data),
            "--num-fewshot",
            "0",
            "--limit",
            str(LIMIT),
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--set",
            "max_gen_toks=8",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["tasks"]
    assert list(metrics) == ALL_TASKS
    for name, m in metrics.items():
        assert 0.0 <= m["score"] <= 1.0 and m["n"] == LIMIT
        if BENCHMARKS[name].multiple_choice:
            docs = [d for d, *_ in load_docs(name, shared_data, BENCHMARKS[name].eval_split)[:LIMIT]]
            assert m["score"] == pytest.approx(_reference_accuracy(tiny_model_dir, docs, 512)), name
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in ALL_TASKS)
    assert (out / "tasks" / "gsm8k.yaml").is_file() and (out / "evaluate.log").is_file()


class _OracleLM:
    """An lm-eval `LM` that knows the gold answers: right=True scores 1, right=False scores 0."""

    def __new__(cls, right: bool):
        from lm_eval.api.model import LM

        class Oracle(LM):
            def loglikelihood(self, requests, disable_tqdm=False):
                out = []
                for r in requests:
                    hit = r.args[1].strip() == LETTERS[r.doc["label"]]
                    out.append((0.0 if hit == right else -5.0, False))
                return out

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def generate_until(self, requests, disable_tqdm=False):
                # thousands commas in the generated number must not matter
                return [
                    f"{r.doc['rationale']}\nThe answer is {int(r.doc['answer']) + (0 if right else 1):,}."
                    for r in requests
                ]

        return Oracle()


@pytest.mark.parametrize("right", [True, False])
def test_task_targets_agree_with_gold_answers(shared_data, tmp_path, right):
    cfg = EvaluateConfig(model="oracle", tasks=ALL_TASKS, data_dir=str(shared_data), limit=30, out=str(tmp_path))
    scores = evaluate(cfg, lm=_OracleLM(right))
    for name, s in scores.items():
        assert s["score"] == (1.0 if right else 0.0), name
    assert scores["gsm8k"]["metrics"]["exact_match,strict-match"] == (1.0 if right else 0.0)


def test_resolved_task_files_point_into_the_data_folder(shared_data, tmp_path):
    write_task_configs(["mmlu", "commonsenseqa"], shared_data, tmp_path)
    mmlu = yaml.safe_load((tmp_path / "mmlu.yaml").read_text())
    assert mmlu["task"] == "mmlu" and Path(mmlu["include"]).is_file()
    assert mmlu["dataset_kwargs"]["column_names"] == ["question", "A", "B", "C", "D", "answer"]
    assert set(mmlu["dataset_kwargs"]["data_files"]) == {"test", "dev"}
    csqa = yaml.safe_load((tmp_path / "commonsenseqa.yaml").read_text())
    # the test file without answers is never handed to lm-eval
    assert set(csqa["dataset_kwargs"]["data_files"]) == {"dev", "train"}


def test_unknown_tasks_and_missing_files(shared_data, tmp_path):
    with pytest.raises(UserError, match="unknown task.*hellaswag.*available: mmlu, arc_challenge"):
        evaluate(EvaluateConfig(model="x", tasks=["mmlu", "hellaswag"], data_dir=str(shared_data), out=str(tmp_path)))
    with pytest.raises(UserError, match="no such file"):
        write_task_configs(["gsm8k"], tmp_path, tmp_path / "t")
    from raise_select.cli.main import app

    result = CliRunner().invoke(app, ["evaluate", "--model", "x", "--tasks", "piqa", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "available: mmlu" in result.output


def test_hub_task_names_exist_in_lm_eval():
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    root = Path(lm_eval.tasks.__file__).parent  # index only the folders of these tasks (the full index is slow)
    folders = [root / f for f in ("mmlu/default", "arc", "commonsense_qa", "gsm8k", "mathqa")]
    known = set(TaskManager(include_path=[str(f) for f in folders], include_defaults=False).all_tasks)
    assert all(spec.lm_eval_task in known for spec in BENCHMARKS.values())


def test_per_item_metrics_on_the_held_out_splits(shared_data, tiny_model_dir, tmp_path):
    """`--metric main`: the choice cross-entropy per item on ARC-Challenge's test set, the
    response loss on GSM8K's, each line the figure `heldout_values` gives that item."""
    import numpy as np

    from raise_select.cli.main import app
    from raise_select.data.validation import load_validation
    from raise_select.evaluation.choices import score_choices
    from raise_select.evaluation.loss import heldout_values

    out = tmp_path / "items"
    args = ["evaluate", "--model", str(tiny_model_dir), "--tasks", "arc_challenge,gsm8k", "--data-dir"]
    args += [str(shared_data), "--limit", "3", "--batch-size", "4", "--device", "cpu", "--metric", "main"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--set", "max_length=64"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["tasks"]
    assert {t: (m["metric"], m["split"], m["n"]) for t, m in metrics.items()} == {
        "arc_challenge": ("choice_ce", "test", 3),
        "gsm8k": ("neg_loss", "test", 3),
    }
    arc = [json.loads(line) for line in (out / "items" / "arc_challenge.jsonl").read_text().splitlines()]
    examples = load_validation("arc_challenge:test", shared_data)[:3]
    assert [(r["source"], r["row"], r["id"]) for r in arc] == [(e.source, e.row, e.id) for e in examples]
    s = score_choices(str(tiny_model_dir), examples, max_length=64, device="cpu")
    np.testing.assert_allclose([r["value"] for r in arc], s.ce, rtol=1e-6)
    np.testing.assert_allclose([r["loglik"] for r in arc[:1]], [s.loglik[0]], rtol=1e-6)
    assert [r["gold"] for r in arc] == [e.record["mc_gold"] for e in examples]
    assert metrics["arc_challenge"]["score"] == pytest.approx(float(np.mean(s.ce)), rel=1e-6)
    gsm = [json.loads(line)["value"] for line in (out / "items" / "gsm8k.jsonl").read_text().splitlines()]
    held = load_validation("gsm8k:test", shared_data)[:3]
    np.testing.assert_allclose(gsm, heldout_values(str(tiny_model_dir), held, max_length=64, device="cpu"), rtol=1e-6)
    assert "| arc_challenge | choice_ce | test |" in (out / "results.md").read_text()
    # the dev split, and a choice metric where there are no choices
    dev_args = [*args[:-1], "choice_acc", "--split", "dev", "--tasks", "commonsenseqa", "--out", str(tmp_path / "d")]
    assert CliRunner().invoke(app, dev_args).exit_code == 0
    dev = [json.loads(line) for line in (tmp_path / "d" / "items" / "commonsenseqa.jsonl").read_text().splitlines()]
    assert len(dev) == 3 and all(r["source"].endswith("train_rand_split.jsonl") for r in dev)
    assert all(r["value"] == r["choice_acc"] in (0.0, 1.0) for r in dev)
    with pytest.raises(UserError, match="task 'gsm8k' has no choices; use neg_loss, accuracy or main"):
        evaluate(EvaluateConfig(model=str(tiny_model_dir), tasks=["gsm8k"], metric="choice_ce", out=str(tmp_path)))
    with pytest.raises(UserError, match="invalid evaluate settings.*metric.*must be one of harness, main"):
        EvaluateConfig(metric="f1")
