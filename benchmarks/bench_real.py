"""Real data, a real model: which selector helps a target task most, with 95% intervals?

    OMP_NUM_THREADS=2 python benchmarks/bench_real.py                  # the full table (hours on 2 CPU cores)
    OMP_NUM_THREADS=2 python benchmarks/bench_real.py --quick          # a subset, about 15 minutes
    python benchmarks/bench_real.py --methods random,rds,embed --targets gsm8k   # a part of it

One pool (a seeded subsample of Alpaca-52K), one base model (SmolLM2-135M-Instruct by
default, LoRA), three target tasks (GSM8K, ARC-Challenge, CommonsenseQA). Per target, a
validation sample that the targeted methods read, and a held-out sample from another split
that no method sees:

| target | validation (methods read it) | held-out (scored) |
|---|---|---|
| gsm8k | `train.jsonl` | `test.jsonl` |
| arc_challenge | `ARC-Challenge-Dev.jsonl` | `ARC-Challenge-Test.jsonl` |
| commonsenseqa | `train_rand_split.jsonl` | `dev_rand_split.jsonl` (the test file has no answers) |

Every method trains the same base model for the same number of update steps (`budget` x 3
epochs / batch; `full` one epoch of the whole pool, which is also Φ). Methods that do not read
a validation set (random, ifd, deita, alpagasus, sspl, full) are trained once and scored on
every target; targeted ones (rds, embed, tsds, less, rose, greats, rho) once per target; less
and rose share one cache of the pool's gradients (`<out>/cache/`), so the long gradient pass
runs once for all their cells. RAISE rows: `raise` (the package defaults + the RDS+ prior),
`raise_noprior`, `raise_paper` (the paper's literal form), `raise_between` (`raise` with
the policy's batches between its choices, `between: policy`) and `raise_less` (the LESS cell's
scores as the prior, `prior: selection`, policy between; its cost includes that LESS cell's
selection), `raise_less_sharp` (the same at `prior_scale` 10, so round 0 samples closer
to LESS's own top rows) and `raise_less_untrained` (that prior alone: 0 policy-training
rounds, so the pair says what PPO adds). The figure
is the held-out loss over the reference answers, reported as the gain over the zero-shot
model (base loss - method loss, so higher is better), with a 95% interval: a t-interval over
seeds for RAND (and any method given several seeds), a paired bootstrap over the held-out items
otherwise (`raise_select.reports.intervals`). `*` marks a row whose interval lies wholly above
RAND's. Each row's cost is its selection plus training seconds, plus the featurize time for
methods that read the features, and the same in Φ.

Every cell is kept under --out (`cells/<method>[@<target>][-s<seed>]/`): a rerun reuses each
finished cell and evaluation, so a killed run resumes where it stopped. Output:
`bench_real.md`, `bench_real.json` and `bench_real.png` in --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from raise_select.baselines import BASELINES, needs_features
from raise_select.baselines.run import BaselineConfig, run_baseline
from raise_select.data.pools import load_pool, subsample_to_file, to_format
from raise_select.data.topics import TOPIC_RULES, on_topic_share, topic_labels
from raise_select.data.validation import load_validation
from raise_select.errors import UserError
from raise_select.io import fingerprint, write_json_atomic, write_text_atomic
from raise_select.logs import package_versions, setup_logging
from raise_select.policy.agent import PAPER
from raise_select.progress import progress_bar
from raise_select.reports.intervals import Interval, gain_interval
from raise_select.reports.method_stats import chosen_ids
from raise_select.reports.study import ROW_LABELS

log = logging.getLogger("bench_real")

# target -> (validation split, held-out split)
TARGETS = {"gsm8k": ("train", "test"), "arc_challenge": ("dev", "test"), "commonsenseqa": ("train", "dev")}
# Methods that read no validation set: trained once, scored on every target.
UNTARGETED = ("full", "random", "ifd", "deita", "alpagasus", "sspl")
SHARED_CACHE = ("less", "rose")  # methods whose costly pass does not depend on the target
# Baseline settings that only report, export or say where caches live: a finished cell stays valid.
NOT_IN_KEY = ("export", "export_format", "report_to", "cache")
# RAISE rows (train-policy, then finetune with the policy, per target and seed of `raise_seeds`):
# the policy settings each row uses on top of PolicyConfig's defaults.
RAISE_VARIANTS = {
    "raise": {"prior": "rds"},  # the package defaults + the RDS+ prior (policy/prior.py)
    "raise_noprior": {},  # the package defaults (the prior's ablation)
    "raise_paper": dict(PAPER),  # the paper's literal form (appendix A.2, eq. 2-12)
    "raise_between": {"prior": "rds"},  # `raise`, with the policy's batches between its choices too
    "raise_less": {"prior": "selection"},  # the LESS cell's pool scores as the prior (policy/prior.py)
    # `raise_less` with a sharper prior: over the whole pool (classes aside), a softmax of
    # prior_scale * tanh(z) of LESS's scores puts 14-17% of its mass on LESS's top 64 rows at 3
    # (about 700 effective rows), about 40% at 10 (about 250)
    "raise_less_sharp": {"prior": "selection", "prior_scale": 10.0},
    # the sharp prior alone: 0 policy-training rounds, the initial actor fine-tunes (what PPO adds)
    "raise_less_untrained": {"prior": "selection", "prior_scale": 10.0},
}
# Episode settings of a variant (the rest come from the benchmark's --raise-* settings).
RAISE_EPISODE = {
    **{m: {"between": "policy"} for m in ("raise_between", "raise_less", "raise_less_sharp")},
    "raise_less_untrained": {"between": "policy", "rounds": 0},
}
# Variants whose prior is another cell's selection (same target; its selection seconds are added to the cost).
PRIOR_FROM = {m: "less" for m in ("raise_less", "raise_less_sharp", "raise_less_untrained")}
LABELS = {
    **ROW_LABELS,  # the study's row names
    "full": "100%",
    "raise": "RAISE (+RDS+ prior)",
    "raise_noprior": "RAISE (defaults)",
    "raise_paper": "RAISE (paper)",
    "raise_between": "RAISE (+RDS+ prior, policy between)",
    "raise_less": "RAISE (+LESS prior, policy between)",
    "raise_less_sharp": "RAISE (+LESS prior x10, policy between)",
    "raise_less_untrained": "RAISE (+LESS prior x10, untrained: 0 rounds)",
}
ORDER = (
    "random",
    "rds",
    "embed",
    "tsds",
    "ifd",
    "full",
    "less",
    "sspl",
    "deita",
    "alpagasus",
    "greats",
    "rho",
    "rose",
    *RAISE_VARIANTS,
)
TABLE_ORDER = ("full", *(m for m in ORDER if m != "full"))  # the tables start with the 100% row


def cell_name(method: str, target: str | None, seed: int) -> str:
    """A cell's folder under <out>/cells: `<method>[@<target>][-s<seed>]` (seeds for the rows that
    run several)."""
    suffix = f"-s{seed}" if method == "random" or method in RAISE_VARIANTS else ""
    return f"{method}{f'@{target}' if target else ''}{suffix}"


@dataclass
class BenchConfig:
    out: str = "runs/bench_real"
    pool: str = "../shared/data/alpaca/alpaca_data.json"
    data_dir: str = "../shared/data"
    model: str = "smollm2-135m-instruct"
    pool_size: int = 2000
    budget: float = 64
    batch_size: int = 8
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    methods: list[str] = field(default_factory=lambda: list(ORDER))
    val_size: int = 64
    heldout_size: int = 128
    lr: float = 1e-3
    max_length: int = 256
    classes: int = 8
    seed: int = 0
    raise_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    raise_rounds: int = 6
    raise_val_size: int = 32
    raise_select_every: int = 1
    report_only: bool = False  # tables from the finished cells only; nothing selected, trained or evaluated
    options: dict = field(default_factory=dict)


QUICK = dict(
    pool_size=300, budget=24, seeds=[0, 1], methods=["random", "rds", "embed", "ifd"], val_size=16, heldout_size=32
)

# Method options for a 135M model on CPU: the judges and scorers are the base model itself
# (the reference scorers and ChatGPT are not reachable offline), LESS at a LoRA rank and
# projection a CPU affords.
DEFAULT_OPTIONS = {
    "alpagasus": {"backend": "local", "scoring": "expectation", "judge_model": "{model}", "max_length": 512},
    "deita": {
        "complexity_scorer": "{model}",
        "quality_scorer": "{model}",
        "embedder": "all-minilm-l6-v2",
        "max_length": 512,
    },
    "less": {"lora_r": 8, "lora_alpha": 32, "proj_dim": 1024, "warmup_epochs": 1, "warmup_batch_size": 8, "lr": 2e-4},
    "rose": {"lora_r": 8, "lora_alpha": 32, "proj_dim": 1024, "warmup_epochs": 1, "warmup_batch_size": 8, "lr": 2e-4},
}


class Unfinished(Exception):
    """A cell or evaluation that `report_only` does not compute."""


class Bench:
    def __init__(self, cfg: BenchConfig):
        unknown = [m for m in cfg.methods if m not in BASELINES and m not in RAISE_VARIANTS]
        if unknown:
            raise UserError(
                f"unknown method(s) {', '.join(unknown)}; available: {', '.join([*BASELINES, *RAISE_VARIANTS])}"
            )
        bad = [t for t in cfg.targets if t not in TARGETS]
        if bad:
            raise UserError(f"unknown target(s) {', '.join(bad)}; available: {', '.join(TARGETS)}")
        if "random" in cfg.methods and len(cfg.seeds) < 2:
            raise UserError("RAND needs at least 2 seeds for its interval")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.options = {
            m: {k: (v.replace("{model}", cfg.model) if isinstance(v, str) else v) for k, v in o.items()}
            for m, o in {**DEFAULT_OPTIONS, **cfg.options}.items()
        }

    # ------------------------------------------------------------ inputs

    def prepare(self) -> None:
        cfg = self.cfg
        self.pool_path = self.out / "pool.jsonl"
        self.pool = subsample_to_file(load_pool(cfg.pool), cfg.pool_size, cfg.seed, self.pool_path)
        self.val_files, self.heldout = {}, {}
        for t in cfg.targets:
            val_split, held_split = TARGETS[t]
            val = load_validation(t, cfg.data_dir, n=cfg.val_size, seed=cfg.seed, split=val_split)
            held = load_validation(t, cfg.data_dir, n=cfg.heldout_size, seed=cfg.seed, split=held_split)
            path = self.out / "targets" / f"{t}_validation.jsonl"
            text = "".join(json.dumps(to_format(e, "messages")) + "\n" for e in val)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_text_atomic(path, text)
            self.val_files[t] = str(path)
            self.heldout[t] = held
        log.info(
            "pool %s: %d rows; targets %s (validation %d, held-out %d each)",
            self.pool_path,
            len(self.pool),
            ", ".join(cfg.targets),
            cfg.val_size,
            cfg.heldout_size,
        )

    def reads_features(self, method: str) -> bool:
        """Whether `method` with its options here reads the featurized pool (the method says so;
        RAISE's state always does)."""
        return method in RAISE_VARIANTS or needs_features(method, self.options.get(method, {}))

    def features(self) -> tuple[str, float]:
        """The featurized pool and its scoring seconds over every resume. The RDS+ vectors come
        from the same forward pass, so they are always kept: a run with other `--methods` then
        asks for the same features and reuses them (asking without them would featurize again
        and drop the stored shards)."""
        from raise_select.features.featurize import FeaturizeConfig, featurize

        out = self.out / "features"
        table = featurize(
            FeaturizeConfig(
                pool=str(self.pool_path),
                model=self.cfg.model,
                out=str(out),
                max_length=self.cfg.max_length,
                classes=self.cfg.classes,
                seed=self.cfg.seed,
                rds=True,
                shard_size=256,
            )
        )
        return str(out), float((table.meta.get("timing") or {}).get("seconds") or 0.0)

    # ------------------------------------------------------------ cells

    def cells(self) -> list[tuple[str, str, str | None, int]]:
        """(cell name, method, target or None, seed) in the order they run."""
        cfg, out = self.cfg, []
        for m in sorted(dict.fromkeys(cfg.methods), key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER)):
            seeds = cfg.seeds if m == "random" else cfg.raise_seeds if m in RAISE_VARIANTS else [cfg.seed]
            for s in seeds:
                targets = [None] if m in UNTARGETED else cfg.targets
                out += [(cell_name(m, t, s), m, t, s) for t in targets]
        return out

    def chosen(self, name: str, method: str, bcfg: BaselineConfig | None = None) -> list[str] | None:
        """The pool ids a finished cell trained on (each time it was in a batch), read from its
        selection file. A baseline cell whose file is gone (a cell copied from a committed run)
        is selected again without training: the same settings and seed give the same rows.
        None when unknown (a RAISE or online cell whose selection log is gone: redoing it means
        training again)."""
        cell_dir = self.out / "cells" / name
        kind = "raise" if method in RAISE_VARIANTS else method
        ids = chosen_ids(cell_dir, kind, self.pool)
        if (
            ids is None
            and bcfg is not None
            and not getattr(BASELINES[method], "online", False)
            and not self.cfg.report_only
        ):
            log.info("cell %s: selecting again (no training) to count its on-topic rows", name)
            run_baseline(replace(bcfg, train=False), self.options.get(method, {}))
            ids = chosen_ids(cell_dir, kind, self.pool)
        return ids

    def run_cell(self, name: str, method: str, target: str | None, seed: int, features: str) -> dict:
        if method in RAISE_VARIANTS:
            return self.run_raise_cell(name, method, target, seed, features)
        cell_dir = self.out / "cells" / name
        bcfg = self.baseline_job(name, method, target, seed, features)
        options = self.options.get(method, {})
        key = self.cell_key(bcfg, NOT_IN_KEY, options)
        path = cell_dir / "cell.json"
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if record.get("key") != key:
            self.unfinished(name)
            log.info("cell %s: selecting and training", name)
            t0 = time.perf_counter()
            bcfg.train = False
            sel = run_baseline(bcfg, options)
            t1 = time.perf_counter()
            bcfg.train = True
            run_baseline(bcfg, options)
            t2 = time.perf_counter()
            record = {
                "key": key,
                "method": method,
                "target": target,
                "seed": seed,
                "steps": sel["steps"],
                # a selection reused from an earlier, killed run: the seconds that run recorded
                "select_seconds": round(max(t1 - t0, float(sel.get("select_seconds") or 0.0)), 2),
                "train_seconds": round(t2 - t1, 2),
                "model": str(cell_dir / "model"),
                "versions": package_versions(),
                "evals": {},
            }
            write_json_atomic(path, record)
        if "chosen" not in record and method != "full":  # the 100% row trains on the whole pool
            record["chosen"] = self.chosen(name, method, bcfg)
            write_json_atomic(path, record)
        for t in [target] if target else self.cfg.targets:
            self.evaluate(record, t, path)
        return record

    def baseline_job(self, name: str, method: str, target: str | None, seed: int, features: str) -> BaselineConfig:
        cfg = self.cfg
        return BaselineConfig(
            method=method,
            pool=str(self.pool_path),
            features=features if self.reads_features(method) else "",
            model=cfg.model,
            val=self.val_files[target] if target else "",
            out=str(self.out / "cells" / name),
            # LESS and ROSE share the pool's gradients across targets (and with each other).
            cache=str(self.out / "cache") if method in SHARED_CACHE else "",
            budget=cfg.budget,
            batch_size=cfg.batch_size,
            epochs=1 if method == "full" else 3,
            seed=seed,
            lr=cfg.lr,
            lora=True,
            lora_r=8,
            lora_alpha=16,
            lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"],
            max_length=cfg.max_length,
            device="cpu",
        )

    def cell_key(self, job, leave_out: tuple[str, ...], options: dict | None = None) -> str:
        """A cell's key: its job settings (less those that only report or export, which leave a
        finished cell valid) and method options, with paths inside --out written relative to it,
        so the cells of a run still match when the run folder is moved or copied elsewhere."""

        def rel(v):
            if isinstance(v, str) and v:
                try:
                    return Path(v).resolve().relative_to(self.out.resolve()).as_posix()
                except ValueError:
                    return v
            return v

        settings = {k: rel(v) for k, v in asdict(job).items() if k not in leave_out}
        policy = settings.get("policy")
        if isinstance(policy, dict) and "prior_selection" in policy:  # came after the first RAISE cells
            if policy["prior_selection"]:
                policy["prior_selection"] = rel(policy["prior_selection"])
            else:
                del policy["prior_selection"]  # at its default it stays out of their keys
        return fingerprint({"config": settings, **({"options": options} if options is not None else {})})

    def run_raise_cell(self, name: str, method: str, target: str, seed: int, features: str) -> dict:
        """train-policy (`raise_rounds` rounds of episodes as long as the matched steps), then
        finetune with the policy for the matched steps; the policy's reward is the validation
        loss on `raise_val_size` examples of the target's validation sample. Cost: policy
        training (reference episode + rounds) + fine-tuning, + featurize; for a variant whose prior
        is another cell's selection (`PRIOR_FROM`), + that cell's selection seconds."""
        from raise_select.policy import PolicyConfig
        from raise_select.training.finetune import policy_training_episodes, train_and_finetune
        from raise_select.training.train_policy import TrainPolicyConfig

        cfg = self.cfg
        cell_dir = self.out / "cells" / name
        steps = self.matched_steps()
        policy = dict(RAISE_VARIANTS[method])
        prior_seconds = 0.0
        if method in PRIOR_FROM:  # the prior is the source cell's selection: run that cell first
            source = PRIOR_FROM[method]
            source_name = cell_name(source, target, cfg.seed)
            source_record = self.run_cell(source_name, source, target, cfg.seed, features)
            selection = self.out / "cells" / source_name / "selection.json"
            if not selection.is_file():  # a finished cell copied without its selection file: select again
                self.unfinished(f"{source_name}'s selection")
                log.info("cell %s: selecting again (no training) for the prior of %s", source_name, name)
                bcfg = self.baseline_job(source_name, source, target, cfg.seed, features)
                run_baseline(replace(bcfg, train=False), self.options.get(source, {}))
            policy["prior_selection"] = str(selection)
            prior_seconds = float(source_record["select_seconds"])
        tp = TrainPolicyConfig(
            pool=str(self.pool_path),
            features=features,
            model=cfg.model,
            val=self.val_files[target],
            out="",
            **{
                "val_size": cfg.raise_val_size,
                "rounds": cfg.raise_rounds,
                "select_every": cfg.raise_select_every,
                **RAISE_EPISODE.get(method, {}),
            },
            steps=steps,
            batch_size=cfg.batch_size,
            seed=seed,
            lr=cfg.lr,
            lora=True,
            lora_r=8,
            lora_alpha=16,
            lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"],
            max_length=cfg.max_length,
            policy=PolicyConfig(**policy),
            **self.options.get(method, {}),
        )
        # `between` came after the first cells; at its old behaviour it stays out of their keys.
        key = self.cell_key(tp, ("out", "report_to", *(("between",) if tp.between == "random" else ())))
        path = cell_dir / "cell.json"
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if record.get("key") != key:
            self.unfinished(name)
            log.info("cell %s: training the policy and fine-tuning with it", name)
            model_dir, policy_seconds, finetune_seconds = train_and_finetune(tp, cell_dir)
            record = {
                "key": key,
                "method": method,
                "target": target,
                "seed": seed,
                "steps": steps,
                "select_seconds": round(policy_seconds, 2),
                "train_seconds": round(finetune_seconds, 2),
                "prior_seconds": round(prior_seconds, 2),
                "model": str(model_dir),
                "versions": package_versions(),
                "evals": {},
            }
            write_json_atomic(path, record)
        if record.get("chosen") is None:
            record["chosen"] = self.chosen(name, method)
            write_json_atomic(path, record)
        if "chosen_by_policy" not in record:  # without the random batches between its choices
            record["chosen_by_policy"] = chosen_ids(cell_dir, "raise", self.pool, policy_only=True)
            write_json_atomic(path, record)
        if not record.get("policy_episodes"):  # seconds of the reference episode and of each round
            record["policy_episodes"] = policy_training_episodes(cell_dir / "train_policy" / "metrics.jsonl") or None
            write_json_atomic(path, record)
        self.evaluate(record, target, path)
        return record

    def unfinished(self, what: str) -> None:
        """With `report_only`, a cell or evaluation not on record is left out of the tables."""
        if self.cfg.report_only:
            raise Unfinished(what)

    def eval_key(self, cell_key: str | None, target: str) -> str:
        cfg = self.cfg
        return fingerprint(
            {"model": cell_key, "target": target, "n": cfg.heldout_size, "seed": cfg.seed, "max_length": cfg.max_length}
        )

    def evaluate(self, record: dict, target: str, path: Path | None) -> list[float]:
        from raise_select.evaluation.loss import example_losses

        cfg = self.cfg
        ekey = self.eval_key(record.get("key"), target)
        done = record.setdefault("evals", {}).get(target)
        if done and done.get("key") == ekey:
            return done["losses"]
        self.unfinished(f"{record.get('method', 'base')} on {target}")
        losses = example_losses(record["model"], self.heldout[target], max_length=cfg.max_length, device="cpu")
        record["evals"][target] = {"key": ekey, "losses": [round(float(x), 6) for x in losses]}
        if path is not None:
            write_json_atomic(path, record)
        return record["evals"][target]["losses"]

    # ------------------------------------------------------------ the run

    def run(self) -> dict:
        setup_logging(self.out, "bench_real.log")
        self.prepare()
        base_path = self.out / "cells" / "base" / "cell.json"
        base = json.loads(base_path.read_text()) if base_path.is_file() else {}
        base.update(key="base", model=self.cfg.model)
        reading = any(self.reads_features(m) for m in self.cfg.methods)
        if reading and self.cfg.report_only and not (self.out / "features" / "features.parquet").is_file():
            log.warning("--report: the pool is not featurized yet; its seconds are left out of the costs")
            reading = False
        features, feat_seconds = self.features() if reading else ("", 0.0)
        try:
            base_losses = {t: self.evaluate(base, t, base_path) for t in self.cfg.targets}  # written when computed
        except Unfinished as e:
            raise UserError(
                f"--report: {self.out} holds no zero-shot evaluation ({e}); run the benchmark first"
            ) from None
        records, result = [], None
        for name, method, target, seed in progress_bar(self.cells(), desc="bench cells", unit="cell"):
            try:
                records.append(self.run_cell(name, method, target, seed, features))
            except Unfinished as e:
                log.info("cell %s: not finished (%s); left out (--report)", name, e)
                continue
            except UserError as e:  # one method that cannot run here must not sink the others
                log.error("cell %s failed: %s", name, e)
                continue
            result = self.write(records, base_losses, feat_seconds)  # the table so far: a kill keeps it
        return result if result is not None else self.write(records, base_losses, feat_seconds)

    def write(self, records: list[dict], base_losses: dict, feat_seconds: float) -> dict:
        result = self.table(records, base_losses, feat_seconds)
        write_json_atomic(self.out / "bench_real.json", result)
        write_text_atomic(self.out / "bench_real.md", result["markdown"])
        if records:
            plot(result, self.out / "bench_real.png")
        return result

    def matched_steps(self) -> int:
        """The steps of every selector's cell: 3 epochs over the budget (`baselines.base`)."""
        from raise_select.baselines.base import budget_count, matched_steps

        return matched_steps(budget_count(self.cfg.budget, len(self.pool)), self.cfg.batch_size, 3)

    def table(self, records: list[dict], base_losses: dict, feat_seconds: float) -> dict:
        cfg = self.cfg
        pool_steps = -(-len(self.pool) // cfg.batch_size)
        full = [r for r in records if r["method"] == "full"]
        rand = [r for r in records if r["method"] == "random"]
        if full:
            phi, phi_from = full[0]["train_seconds"] * pool_steps / full[0]["steps"], "the 100% row (one epoch)"
        elif rand:
            per_step = np.mean([r["train_seconds"] / r["steps"] for r in rand])
            phi, phi_from = float(per_step * pool_steps), "RAND's seconds per step x steps per epoch"
        else:
            phi, phi_from = float("nan"), "no plain training cell"
        rows: dict[str, dict] = {}
        for t in cfg.targets:
            base = base_losses[t]
            groups: dict[str, list[dict]] = {}
            for r in records:
                if (r["target"] in (None, t)) and t in r.get("evals", {}):
                    groups.setdefault(r["method"], []).append(r)
            for m, group in groups.items():
                losses = [g["evals"][t]["losses"] for g in group]
                interval = gain_interval(base, losses, seed=cfg.seed)
                seconds = float(
                    np.mean([g["select_seconds"] + g["train_seconds"] + g.get("prior_seconds", 0.0) for g in group])
                )
                seconds += feat_seconds if self.reads_features(m) else 0.0
                rows.setdefault(m, {})[t] = {
                    "gain": interval.mean,
                    "low": interval.low,
                    "high": interval.high,
                    "rule": interval.rule,
                    "loss": float(np.mean([np.mean(x) for x in losses])),
                    "seconds": round(seconds, 1),
                    "phi": seconds / phi if phi == phi else None,
                    "runs": len(group),
                }
        for t in cfg.targets:
            ref = rows.get("random", {}).get(t)
            for m in rows:
                cell = rows[m].get(t)
                if cell is not None:
                    cell["above_rand"] = bool(
                        ref
                        and m != "random"
                        and Interval(cell["gain"], cell["low"], cell["high"], "").above(
                            Interval(ref["gain"], ref["low"], ref["high"], "")
                        )
                    )
        topics = self.topic_shares(records)
        policy_costs = raise_costs(records, phi)
        md = (
            markdown(
                rows,
                cfg,
                base_losses,
                phi,
                phi_from,
                feat_seconds,
                len(self.pool),
                self.matched_steps(),
                [m for m in rows if self.reads_features(m)],
            )
            + cost_markdown(policy_costs)
            + ablation_markdown(records, base_losses, cfg.targets, phi, feat_seconds)
            + prior_markdown(records, self.prior_sources(records), list(self.pool.ids))
            + topic_markdown(topics, cfg.targets)
        )
        return {
            "config": asdict(cfg),
            "phi_seconds": phi,
            "phi_from": phi_from,
            "featurize_seconds": feat_seconds,
            "base_loss": {t: float(np.mean(v)) for t, v in base_losses.items()},
            "rows": rows,
            "topics": topics,
            "raise_costs": policy_costs,
            "markdown": md,
        }

    def prior_sources(self, records: list[dict]) -> dict:
        """(method, target) -> the selection.json of the cell whose scores are that RAISE row's
        prior (`PRIOR_FROM`), for the finished RAISE cells of such rows."""
        out = {}
        for r in records:
            source = PRIOR_FROM.get(r["method"])
            if source and (source, r["target"]) not in out:
                path = self.out / "cells" / cell_name(source, r["target"], self.cfg.seed) / "selection.json"
                if path.is_file():
                    out[(source, r["target"])] = json.loads(path.read_text(encoding="utf-8"))
        return out

    def topic_shares(self, records: list[dict]) -> dict:
        """Per target: the pool's on-topic base rate (`data.topics`) and, per method, the mean
        on-topic share of the rows its cells trained on, with the number of cells counted. A RAISE
        row also gets `<method>:policy`, the rows of the batches its policy chose (without the
        random batches between its choices under `--raise-select-every`)."""
        out = {}
        for t in self.cfg.targets:
            labels = topic_labels(t, self.pool.examples)
            per: dict[str, list[float]] = {}
            for r in records:
                if r["target"] not in (None, t):
                    continue
                ids = list(self.pool.ids) if r["method"] == "full" else r.get("chosen")
                if ids:
                    per.setdefault(r["method"], []).append(on_topic_share(ids, labels))
                own = r.get("chosen_by_policy")
                if own and len(own) < len(ids or []):
                    per.setdefault(r["method"] + ":policy", []).append(on_topic_share(own, labels))
            out[t] = {
                "rule": TOPIC_RULES[t][0],
                "pool": on_topic_share(self.pool.ids, labels),
                "methods": {m: {"share": float(np.mean(v)), "cells": len(v)} for m, v in per.items()},
            }
        return out


def markdown(rows, cfg, base_losses, phi, phi_from, feat_seconds, pool_size, steps, readers) -> str:
    order = [m for m in TABLE_ORDER if m in rows]
    head = "| method | " + " | ".join(f"{t} gain [95% CI]" for t in cfg.targets) + " | cost (Φ) | seconds |"
    lines = [head, "|" + "---|" * (len(cfg.targets) + 3)]
    lines.append(
        "| zero-shot | " + " | ".join(f"0 (loss {np.mean(base_losses[t]):.4f})" for t in cfg.targets) + " | 0 | 0 |"
    )
    for m in order:
        cells = []
        for t in cfg.targets:
            c = rows[m].get(t)
            cells.append(
                "n/a"
                if c is None
                else f"{'**' if c['above_rand'] else ''}{c['gain']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
                f"{'** *' if c['above_rand'] else ''}"
            )
        any_cell = next(iter(rows[m].values()))
        phi_txt = f"{any_cell['phi']:.2f}" if any_cell["phi"] is not None else "n/a"
        label = LABELS.get(m, m) + (f" ({any_cell['runs']} seeds)" if any_cell["runs"] > 1 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {phi_txt} | {any_cell['seconds']:.0f} |")
    counted = ", ".join(LABELS.get(m, m) for m in readers) or "no method"
    notes = [
        "",
        f"Gain = zero-shot held-out loss - the method's (nats per response token, mean over "
        f"{cfg.heldout_size} held-out "
        f"items per target; higher is better). Intervals: t over seeds for rows with several seeds, else a paired "
        f"bootstrap over items (10,000 resamples). `*`: interval wholly above RAND's.",
        f"Pool {pool_size} rows; budget {cfg.budget} -> {steps} matched steps of {cfg.batch_size}; the 100% row is one "
        f"epoch. Φ = {phi:.0f} s (from {phi_from}); featurize (counted for {counted}) {feat_seconds:.0f} s. "
        "Targeted rows (RDS+, EMBED, TSDS, LESS, ROSE, GREATS, RHO-LOSS) cost one selection per target; "
        "their cost is per target.",
    ]
    return "\n".join(lines + notes) + "\n"


def raise_costs(records: list[dict], phi: float) -> dict:
    """Per RAISE row: mean seconds of its policy training's reference episode, of one round
    (over its rounds and cells) and of its fine-tuning, and the same in Φ; the cells whose
    episode times are on record."""
    out = {}
    for m in RAISE_VARIANTS:
        group = [r for r in records if r["method"] == m and r.get("policy_episodes")]
        if not group:
            continue
        ref = [r["policy_episodes"].get("reference", 0.0) for r in group]
        rounds = [v for r in group for k, v in r["policy_episodes"].items() if k != "reference"]
        cost = {
            "reference": float(np.mean(ref)),
            "round": float(np.mean(rounds)) if rounds else float("nan"),
            "rounds": len(rounds) / len(group),
            "finetune": float(np.mean([r["train_seconds"] for r in group])),
            "prior": float(np.mean([r.get("prior_seconds", 0.0) for r in group])),
            "cells": len(group),
        }
        parts = ("reference", "round", "finetune", "prior")
        cost.update({f"{k}_phi": cost[k] / phi if phi == phi else None for k in parts})
        out[m] = cost
    return out


def ablation_markdown(
    records: list[dict], base_losses: dict, targets: list[str], phi: float, feat_seconds: float
) -> str:
    """The RAISE rows cell by cell: per variant and seed, each target's gain over the zero-shot
    model (base loss - the cell's mean held-out loss) and the cell's cost in Φ (selection,
    policy training, fine-tuning, the featurize time and, for a prior taken from another cell,
    that cell's selection), so a setting's effect can be read seed by seed."""
    cells: dict[tuple[str, int], dict] = {}
    for r in records:
        if r["method"] in RAISE_VARIANTS and r["target"] in targets and r["target"] in r.get("evals", {}):
            cells.setdefault((r["method"], r["seed"]), {})[r["target"]] = r
    if not cells:
        return ""
    head = "| RAISE row | seed | " + " | ".join(f"{t} gain (Φ)" for t in targets) + " |"
    lines = ["", "The RAISE rows cell by cell (gain over zero-shot; the cell's cost in Φ):", "", head]
    lines.append("|" + "---|" * (len(targets) + 2))
    for m in RAISE_VARIANTS:
        for (method, seed), by_target in sorted(cells.items(), key=lambda kv: kv[0][1]):
            if method != m:
                continue
            parts = []
            for t in targets:
                r = by_target.get(t)
                if r is None:
                    parts.append("n/a")
                    continue
                gain = float(np.mean(base_losses[t])) - float(np.mean(r["evals"][t]["losses"]))
                seconds = r["select_seconds"] + r["train_seconds"] + r.get("prior_seconds", 0.0) + feat_seconds
                parts.append(f"{gain:+.4f} ({seconds / phi:.2f})" if phi == phi else f"{gain:+.4f}")
            lines.append(f"| {LABELS[m]} | {seed} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def prior_markdown(records: list[dict], sources: dict, pool_ids: list[str]) -> str:
    """For the RAISE rows whose prior is another method's scores (`PRIOR_FROM`): how close the
    rows a cell trained on stay to that method's own choice. Per cell: the share of its rows
    (with repeats) inside the source's selected rows, its distinct rows, and the mean
    percentile of its rows under the source's pool scores (1 = the top row; unscored rows
    rank lowest)."""
    from scipy.stats import rankdata

    pos = {i: k for k, i in enumerate(pool_ids)}
    lines = []
    for r in sorted(records, key=lambda r: (r["method"], r["target"] or "", r["seed"])):
        sel = sources.get((PRIOR_FROM.get(r["method"]), r["target"]))
        if sel is None or not r.get("chosen"):
            continue
        scores = np.array([-np.inf if v is None else float(v) for v in sel["pool_scores"]], dtype=np.float64)
        pct = rankdata(scores) / len(scores)  # ties (the unscored rows) share their mean rank
        picked = set(sel["ids"])
        ids = r["chosen"]
        inside = sum(i in picked for i in ids) / len(ids)
        mean_pct = float(np.mean([pct[pos[i]] for i in ids]))
        lines.append(
            f"| {LABELS[r['method']]} | {r['target']} | {r['seed']} | {inside:.0%} | {len(set(ids))} | {mean_pct:.2f} |"
        )
    if not lines:
        return ""
    head = [
        "",
        "The rows of the RAISE rows with another method's scores as their prior, against that method's own choice:",
        "",
        "| RAISE row | target | seed | rows inside its selection | distinct rows | mean percentile of its score |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines) + "\n"


def cost_markdown(costs: dict) -> str:
    """One line per RAISE row: what its policy training and fine-tuning cost, per part."""

    def part(m, k):
        c = costs[m]
        return f"{c[k]:.0f} s" + (f" ({c[k + '_phi']:.2f} Φ)" if c[k + "_phi"] is not None else "")

    lines = [
        f"{LABELS[m]}, per seed (mean of {c['cells']} cells): policy training = reference episode "
        f"{part(m, 'reference')} + {c['rounds']:g} round(s) x {part(m, 'round')}; fine-tuning {part(m, 'finetune')}"
        + (f"; its prior (the {PRIOR_FROM[m]} cell's selection) {part(m, 'prior')}." if c.get("prior") else ".")
        for m, c in costs.items()
    ]
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def topic_markdown(topics: dict, targets: list[str]) -> str:
    """The on-topic table: the pool's base rate, then each method's share per target."""
    names = [n for m in TABLE_ORDER for n in (m, m + ":policy")]
    methods = [m for m in names if any(m in topics[t]["methods"] for t in targets)]
    head = "| rows trained on | " + " | ".join(f"{t}: {topics[t]['rule']}" for t in targets) + " |"
    lines = ["", "On-topic share of the rows each method trained on (`raise_select.data.topics`):", "", head]
    lines.append("|" + "---|" * (len(targets) + 1))
    lines.append("| the pool (base rate) | " + " | ".join(f"{100 * topics[t]['pool']:.1f}%" for t in targets) + " |")
    for m in methods:
        cells = []
        for t in targets:
            c = topics[t]["methods"].get(m)
            cells.append(
                "n/a" if c is None else f"{100 * c['share']:.1f}%" + (f" ({c['cells']})" if c["cells"] > 1 else "")
            )
        label = LABELS.get(m.split(":")[0], m) + (", the policy's own batches" if m.endswith(":policy") else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("\n(n): the mean over n cells (seeds). n/a: no cell whose choices are on record.")
    if any(m.endswith(":policy") for m in methods):
        lines.append(
            "The policy's own batches: the steps where it chose, without the uniformly random batches "
            "between its choices (`--raise-select-every`, the paper's appendix F)."
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, targets = result["rows"], result["config"]["targets"]
    methods = [m for m in TABLE_ORDER if m in rows]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 0.45 * len(methods) + 1.5), squeeze=False)
    for ax, t in zip(axes[0], targets):
        ms = [m for m in methods if t in rows[m]]
        g = np.array([rows[m][t]["gain"] for m in ms])
        err = np.array(
            [
                [rows[m][t]["gain"] - rows[m][t]["low"] for m in ms],
                [rows[m][t]["high"] - rows[m][t]["gain"] for m in ms],
            ]
        )
        colors = [
            "tab:green" if rows[m][t]["above_rand"] else ("tab:gray" if m == "random" else "tab:blue") for m in ms
        ]
        ax.barh(range(len(ms)), g, xerr=err, color=colors, capsize=3)
        ax.set_yticks(range(len(ms)), [LABELS.get(m, m) for m in ms])
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        if "random" in rows and t in rows["random"]:
            ax.axvspan(rows["random"][t]["low"], rows["random"][t]["high"], color="tab:gray", alpha=0.15)
        ax.set_title(t)
        ax.set_xlabel("held-out loss gain over zero-shot (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="pool 300, budget 24 rows, RAND 2 seeds, random/rds/embed/ifd, "
        "16 validation and 32 held-out items per target (about 15 minutes with SmolLM2 on 2 cores)",
    )
    p.add_argument(
        "--out", default=None, help="run folder (default runs/bench_real, runs/bench_real_quick with --quick)"
    )
    p.add_argument(
        "--model", default=None, help="base model (default smollm2-135m-instruct): short name, folder or hub id"
    )
    p.add_argument("--pool", default=None, help="instruction pool (default ../shared/data/alpaca/alpaca_data.json)")
    p.add_argument(
        "--data-dir", default=None, help="folder of the target sets' original files (default ../shared/data)"
    )
    p.add_argument("--pool-size", type=int, default=None)
    p.add_argument("--budget", type=float, default=None)
    p.add_argument("--methods", default=None, help="comma-separated; default " + ",".join(ORDER))
    p.add_argument("--targets", default=None, help="comma-separated; default " + ",".join(TARGETS))
    p.add_argument("--seeds", default=None, help="RAND seeds, comma-separated (default 0,1,2,3,4)")
    p.add_argument("--raise-seeds", default=None, help="seeds of the RAISE rows, comma-separated (default 0,1,2)")
    p.add_argument(
        "--raise-rounds", type=int, default=None, help="policy-training rounds of the RAISE rows (default 6)"
    )
    p.add_argument(
        "--raise-select-every",
        type=int,
        default=None,
        help="RAISE chooses every M steps, random batches in between (appendix F; default 1): 1/M of the rewards",
    )
    p.add_argument(
        "--raise-val-size",
        type=int,
        default=None,
        help="validation examples of RAISE's reward, drawn from the target's validation sample (default 32)",
    )
    p.add_argument("--val-size", type=int, default=None)
    p.add_argument("--heldout-size", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--report",
        action="store_true",
        help="write the tables from the finished cells only: nothing is selected, trained or evaluated "
        "(cells still running in another process are left out)",
    )
    a = p.parse_args(argv)
    settings = dict(QUICK) if a.quick else {}
    settings["out"] = a.out or ("runs/bench_real_quick" if a.quick else "runs/bench_real")
    for name in (
        "model",
        "pool",
        "data_dir",
        "pool_size",
        "budget",
        "val_size",
        "heldout_size",
        "max_length",
        "classes",
        "raise_rounds",
        "raise_val_size",
        "raise_select_every",
    ):
        if getattr(a, name) is not None:
            settings[name] = getattr(a, name)
    for name in ("methods", "targets"):
        if getattr(a, name):
            settings[name] = [x for x in getattr(a, name).split(",") if x]
    if a.seeds:
        settings["seeds"] = [int(x) for x in a.seeds.split(",")]
    if a.raise_seeds:
        settings["raise_seeds"] = [int(x) for x in a.raise_seeds.split(",")]
    settings["report_only"] = a.report
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    try:
        result = Bench(BenchConfig(**settings)).run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
