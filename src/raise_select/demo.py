"""The built-in demo: the whole RAISE pipeline on generated data, nothing from outside.

1. generate a testbed's pool and its validation set (`data.synthetic.TESTBEDS`; the demo's
   own: six task families, 30% broken responses, validation on addition);
2. build a tiny Llama M_0 and train its BPE tokenizer on the spot (`models.tiny`);
3. build the auxiliary model (M_0 trained for `auxiliary_steps` on a separate clean corpus
   of the pool's families, the stand-in for the paper's strong instruct model; 0: M_0
   itself) and featurize the pool with it (`features.featurize`);
4. per seed: train a policy (`training.train_policy`), fine-tune M_0 with it
   (`training.finetune`), and fine-tune M_0 for the same steps on uniformly random batches
   (RAND), on batches of the clean on-target rows only (PERFECT, the oracle the metadata
   allows: how much selection can gain here) and, with `ifd`, on the top IFD rows
   (`baselines.ifd`); the three are the random-batch episode of `training.episode`
   (`RandomBatches`) on those rows;
5. print the final validation loss, the share of chosen instructions that are clean and
   on-target, and the oracle-gain fraction (RAND - method) / (RAND - PERFECT) per method
   (mean and std over seeds), and write `summary.json`.

Run folder::

    <out>/config.yaml  run.log  summary.json
    <out>/data/pool.jsonl  data/validation.jsonl  data/auxiliary.jsonl
    <out>/model/  <out>/auxiliary/   M_0 and its tokenizer; the auxiliary model
    <out>/features/                  FeatureTable of the pool
    <out>/seed_<s>/policy/           train-policy run (resumable)
    <out>/seed_<s>/raise/            finetune run (selections.jsonl, metrics.jsonl, model/)
    <out>/seed_<s>/rand/ .../perfect/ .../ifd/  selections.jsonl, metrics.jsonl (P after every step)
    <out>/demo_cells/seed_<s>-<method>/cell.json  each run's result, keyed on settings and input contents

The LLM learning rate (3e-3) is not the paper's 2e-5: M_0 here is a randomly initialised
~50k-parameter model trained from scratch for 100 steps, where 2e-5 barely moves it
(measured with batches of 16: after 100 steps at 2e-5, random and perfect selection end
0.03 nats apart; at 3e-3, 2.0 nats apart). The paper's rate is for fine-tuning
pretrained 7-8B models.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

from .baselines.base import SelectionContext
from .baselines.ifd import IFD
from .config import check_fields, to_dict
from .data.pools import Example, Pool, load_pool
from .data.synthetic import (
    TESTBEDS,
    SyntheticConfig,
    auxiliary_corpus,
    demo_texts,
    generate_pool,
    is_clean_on_target,
    write_demo_data,
    write_jsonl,
)
from .experiments.cells import CellStore, content_digest
from .experiments.methods import METHODS as REGISTERED
from .features.featurize import FeaturizeConfig, featurize
from .features.table import FeatureTable
from .io import fingerprint, write_json_atomic, write_text_atomic
from .logs import setup_logging
from .models.tiny import PRESETS, build_tiny_model
from .policy.agent import PolicyConfig
from .policy.state import StaticState
from .registry import unknown_name
from .training.episode import RandomBatches, run_episode, selection_stats
from .training.export import read_selections
from .training.finetune import FinetuneConfig, finetune
from .training.loop import LMConfig, LMTrainer, train_on_schedule
from .training.reward import Validator, check_finite
from .training.runs import RunFolder
from .training.train_policy import TrainPolicyConfig, train_policy

log = logging.getLogger(__name__)

METHODS = ("raise", "rand", "perfect", "ifd")
# The demo's rows: RAISE, RAND and IFD are the registered methods (their labels from the registry);
# PERFECT is the demo's oracle, the clean on-target rows its generated data can name.
REGISTERED_AS = {"raise": "raise", "rand": "random", "ifd": "ifd"}
NAMES = {**{m: REGISTERED[r].label for m, r in REGISTERED_AS.items()}, "perfect": "PERFECT (oracle)"}


def demo_policy() -> PolicyConfig:
    """The demo's policy section: b = 8 (one class), the package defaults otherwise."""
    return PolicyConfig(per_class=8)


@dataclass
class DemoConfig:
    """`raise-select demo`: every setting of the built-in demo (the shipped config: `--config demo`)."""

    out: str = field(
        default="runs/demo",
        metadata={"help": "run folder; a re-run reuses data, model, features and finished policy rounds"},
    )
    seeds: int = field(default=3, metadata={"help": "seeds per method (policy training, RAND batches)"})
    perfect: bool = field(
        default=True, metadata={"help": "also train on clean target-family batches only (the oracle)"}
    )
    ifd: bool = field(
        default=False, metadata={"help": "also train on the top-IFD rows (baselines.ifd, `ifd_budget` of the pool)"}
    )
    ifd_budget: float = field(default=0.1, metadata={"help": "share of the pool the IFD baseline keeps"})
    # data (data.synthetic)
    testbed: str = field(
        default="demo", metadata={"help": "generated pool and validation task: " + ", ".join(TESTBEDS)}
    )
    pool_size: Optional[int] = field(
        default=None, metadata={"help": "generated pool records; none: the testbed's size"}
    )
    val_size: int = field(
        default=32, metadata={"help": "validation examples (clean, on-target, inputs never in the pool)"}
    )
    data_seed: int = field(default=0, metadata={"help": "seed of the pool and the validation set"})
    # model and features
    preset: str = field(default="test", metadata={"help": "tiny Llama size (models.tiny.PRESETS)"})
    model_seed: int = field(default=0, metadata={"help": "seed of M_0's random weights"})
    classes: int = field(default=1, metadata={"help": "C: K-means classes of the diversity constraint"})
    sem_dim: int = field(default=16, metadata={"help": "d_sem of the semantic state"})
    auxiliary_steps: int = field(
        default=300,
        metadata={
            "help": "updates of M_0 on a separate clean corpus of the pool's families to make the auxiliary "
            "(featurizing) model; 0: featurize with M_0"
        },
    )
    max_length: int = field(default=96, metadata={"help": "tokens per example (the longest demo example is ~75)"})
    # LLM fine-tuning (same for every method; the batch is B = classes x policy.per_class)
    steps: int = field(default=100, metadata={"help": "T: updates per round and per fine-tuning run"})
    lr: float = field(
        default=3e-3, metadata={"help": "LLM learning rate (cosine, no warm-up); see the module docstring"}
    )
    # policy training
    rounds: int = field(
        default=16, metadata={"help": "K: policy-training rounds per seed (0: the initial policy, untrained)"}
    )
    policy: PolicyConfig = field(
        default_factory=demo_policy, metadata={"help": "the selection policy and PPO; its seed: the demo seed"}
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        _data_config(self).check()
        check_fields(
            self,
            [
                *((getattr(self, k) >= 1, k, "must be >= 1") for k in ("seeds", "steps", "classes", "sem_dim")),
                (self.rounds >= 0, "rounds", "must be >= 0 (0: the policy as initialised, untrained)"),
                (self.auxiliary_steps >= 0, "auxiliary_steps", "must be >= 0"),
                (0 < self.ifd_budget <= 1, "ifd_budget", "must lie in (0, 1]"),
                (self.max_length >= 2, "max_length", "must be >= 2"),
                (self.lr > 0, "lr", "must be > 0"),
                (self.preset in PRESETS, "preset", f"available: {', '.join(PRESETS)}"),
            ],
            "demo",
        )

    @property
    def batch_size(self) -> int:
        """B = classes x policy.per_class, the batch of every method."""
        return self.classes * self.policy.per_class

    def lm(self, seed: int) -> LMConfig:
        """LLM settings of the random-batch runs and the auxiliary model (RAISE's runs take the same lr and
        max_length)."""
        return LMConfig(lr=self.lr, max_length=self.max_length, seed=seed)


# `--quick`: the same pipeline, small enough for a test.
QUICK = {
    "pool_size": 120,
    "val_size": 8,
    "steps": 4,
    "rounds": 2,
    "auxiliary_steps": 4,
    "policy": {"per_class": 4},
    "seeds": 2,
}
AUXILIARY_BATCH = 16  # rows per update of the auxiliary model


@dataclass
class MethodRun:
    """One fine-tuning run of one method and seed."""

    method: str
    seed: int
    val_loss: float  # -P(M_T) with P = -mean loss over validation response tokens
    clean_on_target: float  # share of (step, instruction) choices that are clean and of the target family
    distinct: int  # distinct rows trained on
    seconds: float


def _data_config(cfg: DemoConfig) -> SyntheticConfig:
    if cfg.testbed not in TESTBEDS:
        raise unknown_name("testbed", cfg.testbed, TESTBEDS, "demo")
    base = TESTBEDS[cfg.testbed]
    return dataclasses.replace(base, size=cfg.pool_size or base.size, val_size=cfg.val_size, seed=cfg.data_seed)


def _selection_share(run_dir: Path, pool: Pool, target: str) -> tuple[float, int]:
    """Share of the (step, instruction) choices in `run_dir/selections.jsonl` that are clean and
    on-target, and the number of distinct rows chosen."""
    by_id = {e.id: e.record for e in pool.examples}
    ids = [i for rec in read_selections(run_dir / "selections.jsonl") for i in rec["ids"]]
    return sum(is_clean_on_target(by_id[i], target) for i in ids) / len(ids), len(set(ids))


def _train_on_batches(
    cfg: DemoConfig, paths: dict[str, Path], pool: Pool, val: list[Example], out: Path, seed: int, rows: list[int]
) -> float:
    """Fine-tune M_0 for `cfg.steps` steps on uniformly random batches of distinct rows from
    `rows` into the run folder `out`; returns -P(M_T).

    The random-batch episode of train-policy's reference and finetune's `--compare-random`
    (`training.episode.RandomBatches` in `run_episode`) on the sub-pool `rows` (RAND: the
    whole pool), P measured after every step; the logs name rows of the whole pool. Whether a
    finished run is reused is the cell store's decision (`run_method`)."""
    shutil.rmtree(out, ignore_errors=True)  # an unfinished earlier attempt is redone
    run = RunFolder(out)

    sub = dataclasses.replace(pool, examples=[pool.examples[i] for i in rows])
    static = StaticState.from_features(FeatureTable.read(paths["features"]).align(sub.ids))
    trainer = LMTrainer(str(paths["model"]), sub, cfg.lm(seed), total_steps=cfg.steps)
    validator = Validator(val, trainer.tokenizer, max_length=cfg.max_length, batch_size=cfg.val_size)
    where = f"{out.name}, seed {seed}"
    p0 = check_finite(validator(trainer.model), f"{where}, step 0 (the initial model)")
    write_selection = run.selection_writer("selections.jsonl")
    batches: list[list[int]] = []  # rows of the sub-pool

    def on_step(metrics: dict, selection: dict) -> None:
        # The episode takes RandomBatches for a policy; its lines say what the batches were.
        run.metric({**metrics, "policy": False})
        write_selection(
            {
                **selection,
                "indices": [rows[i] for i in selection["indices"]],
                "scores": [None] * len(selection["indices"]),
                "random": True,
            }
        )
        batches.append(selection["indices"])

    result = run_episode(
        trainer,
        validator,
        RandomBatches(static, cfg.batch_size),
        sub,
        cfg.steps,
        select_every=1,
        explore=True,
        generator=torch.Generator().manual_seed(seed),
        p0=p0,
        where=where,
        on_step=on_step,
    )
    run.metric(
        {
            "kind": "final",
            "P0": p0,
            "final_P": result.final_p,
            "mean_loss": result.mean_loss,
            "selection": selection_stats(batches, static.classes, static.num_classes),
            "time": result.time,
        }
    )
    return -result.final_p


def _raise_run(
    cfg: DemoConfig,
    paths: dict[str, Path],
    seed: int,
    run_dir: Path,
    policy_dir: Path | None = None,
    use_rule: str | None = None,
) -> float:
    """Train a policy with `seed` into `run_dir/policy` (train-policy resumes the rounds trained on
    the same contents; or use the trained `policy_dir`), fine-tune M_0 with it into `run_dir/raise`
    (with `use_rule` in place of the policy's own); returns -P(M_T). Whether a finished run is
    reused is the cell store's decision (`run_method`)."""
    common = dict(
        pool=str(paths["pool"]),
        features=str(paths["features"]),
        model=str(paths["model"]),
        val=str(paths["val"]),
        steps=cfg.steps,
        lr=cfg.lr,
        max_length=cfg.max_length,
        seed=seed,
        val_batch_size=cfg.val_size,
    )
    if policy_dir is None:
        policy_dir = train_policy(
            TrainPolicyConfig(
                **common,
                out=str(run_dir / "policy"),
                rounds=cfg.rounds,
                policy=dataclasses.replace(cfg.policy, seed=seed),
            )
        )
    shutil.rmtree(run_dir / "raise", ignore_errors=True)
    finetune(FinetuneConfig(**common, out=str(run_dir / "raise"), policy=str(policy_dir), use_rule=use_rule))
    final = [r for r in RunFolder(run_dir / "raise").read_metrics() if r.get("kind") == "finetune"]
    return -final[-1]["final_P"]


def _auxiliary_model(cfg: DemoConfig, out: Path, model_dir: Path, corpus: SyntheticConfig) -> Path:
    """M_0 trained for `auxiliary_steps` uniformly random batches of the clean corpus
    (`data.synthetic.auxiliary_corpus`) into `out/auxiliary` (reused when there)."""
    auxiliary = out / "auxiliary"
    if (auxiliary / "config.json").is_file():
        return auxiliary
    corpus_pool = load_pool(write_jsonl(out / "data" / "auxiliary.jsonl", generate_pool(corpus)))
    gen = torch.Generator().manual_seed(cfg.model_seed)
    batches = [
        torch.randperm(len(corpus_pool), generator=gen)[:AUXILIARY_BATCH].tolist() for _ in range(cfg.auxiliary_steps)
    ]
    partial = out / "auxiliary.partial"  # renamed when complete: a killed run leaves no half model
    shutil.rmtree(partial, ignore_errors=True)
    train_on_schedule(
        str(model_dir), corpus_pool, batches, cfg.lm(cfg.model_seed), partial, total_steps=cfg.auxiliary_steps
    )
    partial.rename(auxiliary)
    return auxiliary


def prepare(cfg: DemoConfig) -> dict[str, Path]:
    """Steps 1-3: data, M_0 and its tokenizer, the auxiliary model, features (each reused when already there)."""
    out = Path(cfg.out)
    data = _data_config(cfg)
    pool_path, val_path = write_demo_data(out / "data", data)
    model_dir = out / "model"
    corpus = auxiliary_corpus(data)
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, demo_texts(data) + demo_texts(corpus), preset=cfg.preset, seed=cfg.model_seed)
    auxiliary = _auxiliary_model(cfg, out, model_dir, corpus) if cfg.auxiliary_steps else model_dir
    featurize(
        FeaturizeConfig(
            pool=str(pool_path),
            model=str(auxiliary),
            out=str(out / "features"),
            max_length=cfg.max_length,
            sem_dim=cfg.sem_dim,
            classes=cfg.classes,
            batch_size=64,
            seed=cfg.data_seed,
        )
    )
    return {"out": out, "pool": pool_path, "val": val_path, "model": model_dir, "features": out / "features"}


def ifd_rows(cfg: DemoConfig, paths: dict[str, Path], pool: Pool) -> list[int]:
    """The IFD baseline's rows: `baselines.ifd` on the features, `ifd_budget` of the pool (at least one batch)."""
    ctx = SelectionContext(features=FeatureTable.read(paths["features"]).align(pool.ids))
    return IFD().select(pool, max(math.ceil(cfg.ifd_budget * len(pool)), cfg.batch_size), ctx).indices


def run_method(
    cfg: DemoConfig,
    paths: dict[str, Path],
    pool: Pool,
    val: list[Example],
    method: str,
    seed: int,
    seed_dir: Path,
    rows: list[int] | None = None,
    **raise_options,
) -> MethodRun:
    """One method and seed into `seed_dir/<method>`: raise (train a policy, fine-tune with it;
    `raise_options` go to `_raise_run`) or uniform batches from `rows` (rand, perfect, ifd).

    A cell of the experiments layer's store (`<out>/demo_cells/<seed dir>-<method>/cell.json`, the seed
    folder's path under `<out>` joined by `__`),
    keyed on the demo's settings and the contents of M_0, the pool, the validation set and the
    features: a finished cell whose selection log and final metrics are still there is reused,
    not repeated."""
    store = CellStore(Path(cfg.out) / "demo_cells")
    try:  # the seed folder's path under the run folder: one cell per folder (seed_0, seed_0/ablation/<tag>, ...)
        parts = seed_dir.relative_to(cfg.out).parts
    except ValueError:
        parts = (seed_dir.name,)
    name = f"{'__'.join(parts)}-{method}"
    key = fingerprint(
        {
            "method": method,
            "seed": seed,
            "rows": rows if method != "raise" else None,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in raise_options.items()},
            "config": {k: v for k, v in to_dict(cfg).items() if k not in ("out", "seeds")},
            **{k: content_digest(paths[k]) for k in ("model", "pool", "val", "features")},
        }
    )
    run_dir = seed_dir / method

    def outputs(record: dict) -> bool:  # its selection log and its final metrics line are still there
        final = "finetune" if method == "raise" else "final"
        done = any(r.get("kind") == final for r in RunFolder(run_dir).read_metrics())
        return (run_dir / "selections.jsonl").is_file() and done

    def compute() -> dict:
        t0 = time.perf_counter()
        if method == "raise":
            loss = _raise_run(cfg, paths, seed, seed_dir, **raise_options)
        else:
            loss = _train_on_batches(cfg, paths, pool, val, seed_dir / method, seed, rows)
        share, distinct = _selection_share(seed_dir / method, pool, _data_config(cfg).target)
        return dataclasses.asdict(MethodRun(method, seed, loss, share, distinct, time.perf_counter() - t0))

    record, _ = store.run(name, key, compute, outputs)
    return MethodRun(**{f.name: record[f.name] for f in dataclasses.fields(MethodRun)})


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
    out = Path(cfg.out)
    setup_logging(out)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    start = time.perf_counter()
    paths = prepare(cfg)
    pool = load_pool(paths["pool"])
    val = load_pool(paths["val"]).examples
    rows_all = list(range(len(pool)))
    rows_perfect = [i for i, e in enumerate(pool.examples) if is_clean_on_target(e.record, _data_config(cfg).target)]
    progress(
        f"pool {len(pool)} instructions ({len(rows_perfect)} clean on-target), validation {len(val)}; "
        f"prepared in {time.perf_counter() - start:.0f}s"
    )

    rows = {"rand": rows_all, "perfect": rows_perfect, "ifd": ifd_rows(cfg, paths, pool) if cfg.ifd else []}
    methods = ["raise", "rand", *(["perfect"] if cfg.perfect else []), *(["ifd"] if cfg.ifd else [])]
    runs: list[MethodRun] = []
    for seed in range(cfg.seeds):
        for method in methods:
            runs.append(run_method(cfg, paths, pool, val, method, seed, out / f"seed_{seed}", rows.get(method)))
            r = runs[-1]
            progress(
                f"seed {seed} {method:>7}: validation loss {r.val_loss:.4f}, clean on-target "
                f"{r.clean_on_target:.1%}, {r.distinct} distinct rows ({r.seconds:.0f}s)"
            )
    summary = summarize(cfg, runs, time.perf_counter() - start, pool_share=len(rows_perfect) / len(pool))
    write_json_atomic(out / "summary.json", summary)
    return summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values (an oracle gain is NaN where the oracle gains
    nothing over random); NaN when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def oracle_gain(method_loss: float, rand_loss: float, perfect_loss: float) -> float:
    """Share of the perfect selection's gain over random batches that a method recovers:
    (RAND - method) / (RAND - PERFECT) on the final validation loss (1: as good as the
    oracle, 0: as random, < 0: worse than random). NaN when the oracle gains nothing."""
    gap = rand_loss - perfect_loss
    return (rand_loss - method_loss) / gap if gap > 0 else float("nan")


def summarize(cfg: DemoConfig, runs: list[MethodRun], seconds: float, pool_share: float) -> dict:
    by = {(r.method, r.seed): r for r in runs}
    methods = {}
    for method in METHODS:
        mine = [r for r in runs if r.method == method]
        if not mine:
            continue
        loss_mean, loss_std = _mean_std([r.val_loss for r in mine])
        share_mean, share_std = _mean_std([r.clean_on_target for r in mine])
        entry = {
            "per_seed": [dataclasses.asdict(r) for r in mine],
            "val_loss_mean": loss_mean,
            "val_loss_std": loss_std,
            "clean_on_target_mean": share_mean,
            "clean_on_target_std": share_std,
            "distinct_mean": statistics.fmean(r.distinct for r in mine),
        }
        if all(("rand", r.seed) in by and ("perfect", r.seed) in by for r in mine):
            gains = [oracle_gain(r.val_loss, by["rand", r.seed].val_loss, by["perfect", r.seed].val_loss) for r in mine]
            entry["oracle_gain_per_seed"] = gains
            entry["oracle_gain_mean"], entry["oracle_gain_std"] = _mean_std(gains)
        methods[method] = entry
    raise_seeds = [r for r in runs if r.method == "raise"]
    return {
        "methods": methods,
        "raise_beats_rand": methods["raise"]["val_loss_mean"] < methods["rand"]["val_loss_mean"],
        "raise_beats_rand_seeds": sum(r.val_loss < by["rand", r.seed].val_loss for r in raise_seeds),
        "testbed": cfg.testbed,
        "pool_clean_on_target": pool_share,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "seconds": seconds,
        "config": to_dict(cfg),
    }


def format_table(summary: dict) -> str:
    """The demo's result table (Markdown): mean ± std over seeds."""
    lines = [
        "| method | final validation loss | oracle gain | clean & on-target chosen | distinct rows |",
        "|---|---|---|---|---|",
    ]
    for method, m in summary["methods"].items():
        gain = ""
        if "oracle_gain_mean" in m:
            gain = (
                f"{m['oracle_gain_mean']:.0%} ± {m['oracle_gain_std']:.0%}"
                if math.isfinite(m["oracle_gain_mean"])
                else "n/a (the oracle gains nothing)"
            )
        lines.append(
            f"| {NAMES[method]} | {m['val_loss_mean']:.3f} ± {m['val_loss_std']:.3f} | {gain} | "
            f"{m['clean_on_target_mean']:.1%} ± {m['clean_on_target_std']:.1%} | {m['distinct_mean']:.0f} |"
        )
    return "\n".join(lines)
