"""The built-in demo: the whole RAISE pipeline on generated data, nothing from outside.

1. generate the pool (six task families, 30% broken responses) and a validation set of
   the target family (`data.synthetic`);
2. build a tiny Llama M_0 and train its BPE tokenizer on the spot (`models.tiny`);
3. featurize the pool with M_0 as the auxiliary model (`features.featurize`);
4. per seed: train a policy (`training.train_policy`, 16 rounds), fine-tune M_0 with it
   (`training.finetune`), and fine-tune M_0 on uniformly random batches (RAND) for the
   same number of steps; optionally also on batches of clean target-family examples only
   (PERFECT, the oracle the metadata allows: how much selection can gain here);
5. print final validation loss and the share of chosen instructions that are clean and
   on-target, per method (mean and std over seeds), and write `summary.json`.

Run folder::

    <out>/config.yaml  run.log  summary.json
    <out>/data/pool.jsonl  data/validation.jsonl
    <out>/model/                     M_0 and its tokenizer
    <out>/features/                  FeatureTable of the pool
    <out>/seed_<s>/policy/           train-policy run (resumable)
    <out>/seed_<s>/raise/            finetune run (selections.jsonl, metrics.jsonl, model/)
    <out>/seed_<s>/rand/ .../perfect/  selections.jsonl, metrics.jsonl

The LLM learning rate (3e-3) is not the paper's 2e-5: M_0 here is a randomly initialised
~50k-parameter model trained from scratch for 100 steps, where 2e-5 barely moves it
(measured with batches of 16: after 100 steps at 2e-5, random and perfect selection end
0.03 nats apart; at 3e-3, 2.0 nats apart). The paper's rate is for fine-tuning
pretrained 7-8B models.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .config import check_fields, to_dict
from .data.pools import Pool, load_pool
from .data.synthetic import SyntheticConfig, demo_texts, is_clean_on_target, write_demo_data
from .io import append_jsonl, write_json_atomic, write_text_atomic
from .policy.agent import PolicyConfig

log = logging.getLogger(__name__)

METHODS = ("raise", "rand", "perfect")


def demo_policy() -> PolicyConfig:
    """The demo's policy section: b = 8, and 8 PPO epochs of 4 minibatches (the paper's K_2 is 4;
    the README says why)."""
    return PolicyConfig(per_class=8, ppo_epochs=8, minibatches=4)


@dataclass
class DemoConfig:
    """`raise-select demo`: every setting of the built-in demo (the shipped config: `--config demo`)."""

    out: str = field(default="runs/demo", metadata={"help": "run folder; a re-run reuses data, model, features and finished policy rounds"})
    seeds: int = field(default=3, metadata={"help": "seeds per method (policy training, RAND batches)"})
    perfect: bool = field(default=True, metadata={"help": "also train on clean target-family batches only (the oracle)"})
    # data (data.synthetic)
    pool_size: int = field(default=1200, metadata={"help": "generated pool records, split evenly over the families"})
    noise: float = field(default=0.3, metadata={"help": "share of each family with a wrong, truncated or garbage response"})
    target: str = field(default="add", metadata={"help": "family of the validation task"})
    val_size: int = field(default=32, metadata={"help": "validation examples (clean, target family, inputs never in the pool)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the pool and the validation set"})
    # model and features
    preset: str = field(default="test", metadata={"help": "tiny Llama size (models.tiny.PRESETS)"})
    model_seed: int = field(default=0, metadata={"help": "seed of M_0's random weights"})
    classes: int = field(default=1, metadata={"help": "C: K-means classes of the diversity constraint"})
    sem_dim: int = field(default=16, metadata={"help": "d_sem of the semantic state"})
    max_length: int = field(default=96, metadata={"help": "tokens per example (the longest demo example is ~75)"})
    # LLM fine-tuning (same for every method; the batch is B = classes x policy.per_class)
    steps: int = field(default=100, metadata={"help": "T: updates per round and per fine-tuning run"})
    lr: float = field(default=3e-3, metadata={"help": "LLM learning rate (cosine, no warm-up); see the module docstring"})
    # policy training
    rounds: int = field(default=16, metadata={"help": "K: policy-training rounds per seed"})
    policy: PolicyConfig = field(default_factory=demo_policy, metadata={"help": "the selection policy and PPO; its seed: the demo seed"})

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        from .models.tiny import PRESETS

        _data_config(self).check()
        check_fields(self, [
            *((getattr(self, k) >= 1, k, "must be >= 1") for k in ("seeds", "steps", "rounds", "classes", "sem_dim")),
            (self.max_length >= 2, "max_length", "must be >= 2"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.preset in PRESETS, "preset", f"available: {', '.join(PRESETS)}"),
        ], "demo")


# `--quick`: the same pipeline, small enough for a test.
QUICK = {"pool_size": 120, "val_size": 8, "steps": 4, "rounds": 2, "policy": {"per_class": 4}, "seeds": 2}


@dataclass
class MethodRun:
    """One fine-tuning run of one method and seed."""

    method: str
    seed: int
    val_loss: float            # -P(M_T) with P = -mean loss over validation response tokens
    clean_on_target: float     # share of (step, instruction) choices that are clean and of the target family
    seconds: float


def _data_config(cfg: DemoConfig) -> SyntheticConfig:
    return SyntheticConfig(size=cfg.pool_size, target=cfg.target, noise=cfg.noise, val_size=cfg.val_size, seed=cfg.data_seed)


def _selection_share(run_dir: Path, pool: Pool, target: str) -> float:
    """Share of the (step, instruction) choices in `run_dir/selections.jsonl` that are clean and on-target."""
    from .training.export import read_selections

    by_id = {e.id: e.record for e in pool.examples}
    chosen = [by_id[i] for rec in read_selections(run_dir / "selections.jsonl") for i in rec["ids"]]
    return sum(is_clean_on_target(r, target) for r in chosen) / len(chosen)


def _train_on_batches(cfg: DemoConfig, pool: Pool, val, model_dir: Path, out: Path, seed: int,
                      rows: list[int]) -> float:
    """Fine-tune M_0 on uniform batches from `rows` for `cfg.steps` steps; returns -P(M_T)."""
    from .training.loop import LMConfig, LMTrainer
    from .training.reward import Validator

    lm = LMConfig(lr=cfg.lr, max_length=cfg.max_length, seed=seed)
    trainer = LMTrainer(str(model_dir), pool, lm, total_steps=cfg.steps)
    validator = Validator(val, trainer.tokenizer, max_length=cfg.max_length, batch_size=cfg.val_size)
    generator = torch.Generator().manual_seed(seed)
    batch = cfg.classes * cfg.policy.per_class
    selections = out / "selections.jsonl"
    selections.parent.mkdir(parents=True, exist_ok=True)
    selections.write_text("", encoding="utf-8")
    for t in range(1, cfg.steps + 1):
        chosen = [rows[i] for i in torch.randperm(len(rows), generator=generator)[:batch].tolist()]
        loss = trainer.step(chosen)
        append_jsonl(selections, {"step": t, "ids": [pool.examples[i].id for i in chosen], "indices": chosen,
                                  "scores": [None] * len(chosen), "classes": [None] * len(chosen), "random": True})
        append_jsonl(out / "metrics.jsonl", {"kind": "step", "step": t, "loss": loss})
    final_p = validator(trainer.model)
    append_jsonl(out / "metrics.jsonl", {"kind": "final", "final_P": final_p})
    return -final_p


def _raise_run(cfg: DemoConfig, paths: dict[str, Path], seed: int) -> float:
    """Train a policy with `seed`, fine-tune M_0 with it; returns -P(M_T)."""
    from .training.finetune import FinetuneConfig, finetune
    from .training.runs import RunFolder
    from .training.train_policy import TrainPolicyConfig, train_policy

    common = dict(pool=str(paths["pool"]), features=str(paths["features"]), model=str(paths["model"]),
                  val=str(paths["val"]), steps=cfg.steps, lr=cfg.lr, max_length=cfg.max_length, seed=seed,
                  val_batch_size=cfg.val_size)
    run_dir = paths["out"] / f"seed_{seed}"
    policy_dir = train_policy(TrainPolicyConfig(**common, out=str(run_dir / "policy"), rounds=cfg.rounds,
                                                policy=dataclasses.replace(cfg.policy, seed=seed)))
    finetune(FinetuneConfig(**common, out=str(run_dir / "raise"), policy=str(policy_dir)))
    final = [r for r in RunFolder(run_dir / "raise").read_metrics() if r.get("kind") == "finetune"]
    return -final[-1]["final_P"]


def prepare(cfg: DemoConfig) -> dict[str, Path]:
    """Steps 1-3: data, M_0 and its tokenizer, features (each reused when already there)."""
    from .features.featurize import FeaturizeConfig, featurize
    from .models.tiny import build_tiny_model

    out = Path(cfg.out)
    data = _data_config(cfg)
    pool_path, val_path = write_demo_data(out / "data", data)
    model_dir = out / "model"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, demo_texts(data), preset=cfg.preset, seed=cfg.model_seed)
    featurize(FeaturizeConfig(pool=str(pool_path), model=str(model_dir), out=str(out / "features"),
                              max_length=cfg.max_length, sem_dim=cfg.sem_dim, classes=cfg.classes,
                              batch_size=64, seed=cfg.data_seed))
    return {"out": out, "pool": pool_path, "val": val_path, "model": model_dir, "features": out / "features"}


def run_demo(cfg: DemoConfig, progress: Callable[[str], None] = log.info) -> dict:
    """The whole demo; returns (and writes) the summary."""
    # A ~50k-parameter model gains nothing from intra-op threads, and they cost a lot on a
    # busy machine (observed on a shared 2-core box: rounds of 6-7 s with one thread, ~40 s
    # with two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _run_demo(cfg: DemoConfig, progress: Callable[[str], None]) -> dict:
    import yaml

    from .logs import setup_logging

    out = Path(cfg.out)
    setup_logging(out)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    start = time.perf_counter()
    paths = prepare(cfg)
    pool = load_pool(paths["pool"])
    val = load_pool(paths["val"]).examples
    rows_all = list(range(len(pool)))
    rows_perfect = [i for i, e in enumerate(pool.examples) if is_clean_on_target(e.record, cfg.target)]
    progress(f"pool {len(pool)} instructions ({len(rows_perfect)} clean on-target), validation {len(val)}; "
             f"prepared in {time.perf_counter() - start:.0f}s")

    runs: list[MethodRun] = []
    for seed in range(cfg.seeds):
        seed_dir = out / f"seed_{seed}"
        jobs = [("raise", lambda: _raise_run(cfg, paths, seed)),
                ("rand", lambda: _train_on_batches(cfg, pool, val, paths["model"], seed_dir / "rand", seed, rows_all))]
        if cfg.perfect:
            jobs.append(("perfect", lambda: _train_on_batches(cfg, pool, val, paths["model"], seed_dir / "perfect",
                                                              seed, rows_perfect)))
        for method, job in jobs:
            t0 = time.perf_counter()
            loss = job()
            share = _selection_share(seed_dir / method, pool, cfg.target)
            runs.append(MethodRun(method, seed, loss, share, time.perf_counter() - t0))
            progress(f"seed {seed} {method:>7}: validation loss {loss:.4f}, clean on-target {share:.1%} "
                     f"({runs[-1].seconds:.0f}s)")
    summary = summarize(cfg, runs, time.perf_counter() - start, pool_share=len(rows_perfect) / len(pool))
    write_json_atomic(out / "summary.json", summary)
    return summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(cfg: DemoConfig, runs: list[MethodRun], seconds: float, pool_share: float) -> dict:
    methods = {}
    for method in METHODS:
        mine = [r for r in runs if r.method == method]
        if not mine:
            continue
        loss_mean, loss_std = _mean_std([r.val_loss for r in mine])
        share_mean, share_std = _mean_std([r.clean_on_target for r in mine])
        methods[method] = {
            "per_seed": [dataclasses.asdict(r) for r in mine],
            "val_loss_mean": loss_mean, "val_loss_std": loss_std,
            "clean_on_target_mean": share_mean, "clean_on_target_std": share_std,
        }
    return {
        "methods": methods,
        "raise_beats_rand": methods["raise"]["val_loss_mean"] < methods["rand"]["val_loss_mean"],
        "pool_clean_on_target": pool_share,
        "steps": cfg.steps,
        "batch_size": cfg.classes * cfg.policy.per_class,
        "seconds": seconds,
        "config": to_dict(cfg),
    }


def format_table(summary: dict) -> str:
    """The demo's result table (Markdown)."""
    names = {"raise": "RAISE", "rand": "RAND", "perfect": "PERFECT (oracle)"}
    lines = ["| method | final validation loss | clean & on-target chosen |", "|---|---|---|"]
    for method, m in summary["methods"].items():
        lines.append(f"| {names[method]} | {m['val_loss_mean']:.3f} ± {m['val_loss_std']:.3f} | "
                     f"{m['clean_on_target_mean']:.1%} ± {m['clean_on_target_std']:.1%} |")
    return "\n".join(lines)
