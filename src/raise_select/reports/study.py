"""The comparison study of paper section 4 (Table 1): every method at matched update steps.

One config names the pool, the base model, the validation task, the evaluation tasks, the
budget and the methods. The study then fills a grid of *cells*, each a trained model and
its evaluation, under `<out>/cells/<cell>/`:

- `base`: the base model, untrained (the 0% row);
- `full`: the whole pool for `epochs` epochs (the 100% row; `full_steps` caps its update
  steps, for CPU runs: say so when reporting);
- `random-s<seed>`: a random budget-sized subset per seed (the RAND row is their mean);
- one cell per other baseline of `raise_select.baselines` (`raise-select baseline`'s
  `run_baseline`): a static subset of the budget trained `epochs` epochs, or a schedule
  with the same number of steps (the online selectors GREATS and RHO-LOSS choose each
  batch while training, for the same number of steps);
- `raise` (or `raise-s<seed>` per seed of `raise_seeds`): `train_policy` then `finetune`
  for the same number of steps T = ceil(epochs x budget / batch_size).

A cell whose `cell.json` records the same training and evaluation settings is not
recomputed, so an interrupted study resumes where it stopped and a finished one only
rewrites the table. Options of a method go in a section named after it (`deita:`, `less:`,
`raise:` for train-policy settings such as `rounds` or `policy: {per_class: 2, hidden: 32}`); the string
`{base_model}` in them stands for the study's base model (a scorer or judge folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..config import from_dict, merge, parse_overrides, read_yaml
from ..errors import UserError
from ..io import fingerprint, write_json_atomic, write_text_atomic
from ..logs import setup_logging
from ..training.loop import LMConfig
from .plots import plot_study
from .tables import BASE_ROW, FULL_ROW, build_table, write_table

log = logging.getLogger(__name__)

RAISE = "raise"
ROW_LABELS = {
    "random": "RAND",
    "ifd": "IFD",
    "deita": "DEITA",
    "alpagasus": "AlpaGasus",
    "sspl": "SSPL",
    "less": "LESS",
    "rose": "ROSE",
    "rds": "RDS+",
    "embed": "EMBED",
    "tsds": "TSDS",
    "greats": "GREATS",
    "rho": "RHO-LOSS",
    RAISE: "RAISE",
}
_LM_FIELDS = tuple(f.name for f in dataclasses.fields(LMConfig))
# What each job of a cell takes from the study's settings: {job's field: StudyConfig field}.
# The cell's own values (pool, model, features, out, its seed, steps) are added where the job
# is built; a job field not named here keeps the job's default. featurize's `model` is the
# auxiliary model, the base model when `aux_model` is empty.
JOB_FIELDS: dict[str, dict[str, str]] = {
    "featurize": {
        **{k: k for k in ("template", "max_length", "sem_dim", "classes", "seed", "dtype", "device")},
        "model": "aux_model",
    },
    "train_policy": {
        k: k
        for k in (
            *_LM_FIELDS,
            "val",
            "data_dir",
            "val_size",
            "batch_size",
            "select_every",
            "metric",
            "report_to",
            "rounds",
        )
    },
    "baseline": {
        k: k
        for k in (*_LM_FIELDS, "val", "data_dir", "val_size", "budget", "batch_size", "epochs", "device", "report_to")
    },
    "evaluate": {
        **{k: k for k in ("tasks", "data_dir", "num_fewshot", "device", "dtype", "max_length", "max_gen_toks", "seed")},
        "limit": "eval_limit",
        "batch_size": "eval_batch_size",
    },
}


def _study_fields(*jobs: str) -> set[str]:
    return {f for job in jobs for f in JOB_FIELDS[job].values()}


# Settings that change only the evaluation of a cell, not its training.
_EVAL_FIELDS = (
    "tasks",
    "eval_limit",
    "num_fewshot",
    "eval_batch_size",
    "max_gen_toks",
    "device",
    "loss_set",
    "loss_split",
    "loss_size",
)
_NOT_TRAINING = (
    *_EVAL_FIELDS,
    "methods",
    "seeds",
    "raise_seeds",
    "out",
    "pool",
    "format",
    "pool_size",
    "build_model",
    "report_to",
)
# Settings that reach only some cells, a change retrains those cells alone: train-policy's own
# (the RAISE cells), and featurize's own (the cells whose method reads the features).
_RAISE_ONLY = tuple(sorted(_study_fields("train_policy") - _study_fields("baseline")))
_FEATURES_ONLY = tuple(sorted(_study_fields("featurize") - _study_fields("train_policy", "baseline")))
# What `prepare` reads: a cell run without it reads them on first use.
_INPUTS = ("pool", "pool_spec", "model", "steps")


def job_settings(cfg: StudyConfig, job: str) -> dict:
    """The settings `job` (a key of `JOB_FIELDS`) takes from the study, under the job's names."""
    return {name: getattr(cfg, study_name) for name, study_name in JOB_FIELDS[job].items()}


@dataclass
class StudyConfig(LMConfig):
    """`raise-select study`: the LLM settings are those of `LMConfig` (appendix A.2)."""

    pool: str = field(default="", metadata={"help": "instruction pool: file, folder or `datasets` name"})
    format: Optional[str] = field(
        default=None, metadata={"help": "pool format (alpaca, sharegpt, messages); None: detected"}
    )
    pool_size: Optional[int] = field(
        default=None, metadata={"help": "use a seeded random subsample of this many pool examples (CPU studies)"}
    )
    model: str = field(default="", metadata={"help": "base model M_0: hub id or folder"})
    build_model: Optional[str] = field(
        default=None,
        metadata={"help": "with no `model`: build a tiny Llama of this preset (test, 1m, 10m) at <out>/base_model"},
    )
    aux_model: str = field(default="", metadata={"help": "auxiliary LM of featurize; empty: the base model"})
    val: str = field(
        default="mmlu", metadata={"help": "validation set of RAISE and LESS: a named set or a pool file/folder"}
    )
    val_size: Optional[int] = field(
        default=None, metadata={"help": "use at most this many validation examples (seeded sample)"}
    )
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "original files of the named sets (validation and evaluation); None: the hub"}
    )
    tasks: list[str] = field(
        default_factory=lambda: ["mmlu", "arc_challenge", "commonsenseqa"], metadata={"help": "evaluation tasks"}
    )
    methods: list[str] = field(
        default_factory=lambda: ["random", "ifd", "deita", "alpagasus", "sspl", "less", RAISE],
        metadata={"help": "rows besides 0% and 100%, in this order; a method listed twice is one row"},
    )
    budget: float = field(default=0.01, metadata={"help": "fraction of the pool (< 1) or number of examples (>= 1)"})
    epochs: int = field(default=3, metadata={"help": "static subsets are trained this many epochs (section 4.2)"})
    batch_size: int = field(default=8, metadata={"help": "training batch size B (RAISE: a multiple of `classes`)"})
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        metadata={"help": "seeds of the random baseline (the paper's mean of 5); a seed listed twice is one cell"},
    )
    raise_seeds: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "seeds of RAISE (policy training and fine-tuning), a cell `raise-s<seed>` each, "
            "the row their mean; a seed listed twice is one cell; None: one cell `raise` at the study's `seed`"
        },
    )
    full_steps: Optional[int] = field(
        default=None, metadata={"help": "cap on the 100% row's update steps; None: `epochs` over the whole pool"}
    )
    classes: int = field(default=8, metadata={"help": "featurize: K-means classes C of the diversity constraint"})
    sem_dim: int = field(default=32, metadata={"help": "featurize: d_sem"})
    rounds: int = field(default=20, metadata={"help": "RAISE: policy-training rounds K"})
    select_every: int = field(default=1, metadata={"help": "RAISE: the policy chooses every M steps (appendix F)"})
    metric: str = field(default="neg_loss", metadata={"help": "RAISE: P(M) on the validation set"})
    eval_limit: Optional[int] = field(default=None, metadata={"help": "evaluate only the first N items of each task"})
    num_fewshot: int = field(default=0, metadata={"help": "evaluation: in-context examples per item"})
    eval_batch_size: int = field(default=8, metadata={"help": "evaluation: lm-eval batch size"})
    max_gen_toks: int = field(default=256, metadata={"help": "evaluation: generation budget of GSM8K"})
    device: Optional[str] = field(default=None, metadata={"help": "torch device; None: cuda when available"})
    loss_set: Optional[str] = field(
        default=None,
        metadata={
            "help": "held-out set (named, e.g. gsm8k, or a file) whose mean response loss each row reports; not in Avg"
        },
    )
    loss_split: str = field(default="test", metadata={"help": "split of a named loss_set"})
    loss_size: Optional[int] = field(
        default=None, metadata={"help": "use at most this many loss_set examples (seeded sample)"}
    )
    out: str = field(default="", metadata={"help": "study folder"})
    report_to: str = field(
        default="none",
        metadata={
            "help": "every cell's training scalars also to: none, tensorboard, wandb, all "
            "(a run per cell, in its folder)"
        },
    )


@dataclass
class Cell:
    name: str  # folder under <out>/cells
    row: str  # table row it counts towards
    method: str | None  # None: the untrained base model
    seed: int


def matched_step_count(cfg: StudyConfig, pool_size: int) -> int:
    """T of every method: `epochs` passes over the budget in batches of `batch_size`."""
    from ..baselines import budget_count, matched_steps

    return matched_steps(budget_count(cfg.budget, pool_size), cfg.batch_size, cfg.epochs)


def plan_cells(cfg: StudyConfig) -> list[Cell]:
    """The grid: 0%, 100%, then the methods in the order given (random once per seed)."""
    from ..baselines import BASELINES

    available = [RAISE, *(m for m in BASELINES if m != "full")]
    unknown = [m for m in cfg.methods if m not in available and m != "full"]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(available)}")
    if not cfg.seeds:
        raise UserError("seeds: give at least one seed for the random baseline")
    if cfg.raise_seeds is not None and not cfg.raise_seeds:
        raise UserError("raise_seeds: give at least one seed, or leave it out for one RAISE cell at `seed`")
    for name in ("seeds", "raise_seeds"):
        bad = [s for s in getattr(cfg, name) or () if not 0 <= s < 2**32]
        if bad:
            raise UserError(f"{name}: {bad[0]} is not a seed; give whole numbers in 0 .. 2**32 - 1")
    if cfg.full_steps is not None and cfg.full_steps < 1:
        raise UserError(
            f"full_steps: {cfg.full_steps}; give at least 1, or leave it out for `epochs` over the whole pool"
        )
    from ..evaluation.evaluate import check_tasks

    try:  # an unknown or empty task list, before any cell has trained
        check_tasks(cfg.tasks)
    except UserError as e:
        raise UserError(f"tasks: {e}") from None
    cells = [Cell("base", BASE_ROW, None, cfg.seed), Cell("full", FULL_ROW, "full", cfg.seed)]
    for m in dict.fromkeys(cfg.methods):
        if m == "full":
            continue
        if m == "random":
            cells += [Cell(f"random-s{s}", ROW_LABELS[m], m, s) for s in dict.fromkeys(cfg.seeds)]
        elif m == RAISE and cfg.raise_seeds is not None:
            cells += [Cell(f"raise-s{s}", ROW_LABELS[m], m, s) for s in dict.fromkeys(cfg.raise_seeds)]
        else:
            cells.append(Cell(m, ROW_LABELS.get(m, m), m, cfg.seed))
    return cells


def method_sections(config_path: str | Path | None, overrides: list[str] | None, methods: list[str]) -> dict[str, dict]:
    """Each method's own section of the config file, then `--set <method>.<key>=value`."""
    raw = read_yaml(config_path) if config_path is not None else {}
    ov = parse_overrides(overrides)
    out = {}
    for m in [*methods, "full"]:
        if raw.get(m) is not None and not isinstance(raw[m], dict):
            raise UserError(
                f"{config_path}: section '{m}' holds the method's options as a mapping (option: value), got {raw[m]!r}"
            )
        opts = dict(raw.get(m) or {})
        if isinstance(ov.get(m), dict):
            merge(opts, ov[m])  # nested sections (raise's `policy`) merged key by key
        out[m] = opts
    return out


def substitute_base_model(options: dict, base_model: str) -> dict:
    """`options` with the string `{base_model}` in their values replaced by the study's base model."""
    return {k: (v.replace("{base_model}", base_model) if isinstance(v, str) else v) for k, v in options.items()}


class Study:
    """Runs the cells of one study folder and writes its table."""

    def __init__(self, cfg: StudyConfig, options: dict[str, dict] | None = None):
        for name in ("pool", "out"):
            if not getattr(cfg, name):
                raise UserError(f"study needs '{name}' (in the config or --set {name}=...)")
        if not cfg.model and not cfg.build_model:
            raise UserError("study needs 'model' (a hub id or folder) or 'build_model' (a tiny preset)")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.cells = plan_cells(cfg)
        self.options = options or {}
        self.computed: list[str] = []
        self._features: str | None = None

    def __getattr__(self, name: str):
        # The pool, the base model and T are read by `prepare`: a cell run before it (or a
        # method asking for them) reads them on first use instead of failing.
        if name in _INPUTS:
            self.prepare()
            return self.__dict__[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    # ---------------------------------------------------------------- inputs

    def prepare(self) -> None:
        """The pool (a seeded subsample written to <out>/pool.jsonl when asked) and the base model.
        `run` calls it; a cell run alone calls it on first use of what it reads."""
        from ..data.pools import load_pool, subsample_to_file

        cfg = self.cfg
        pool = load_pool(cfg.pool, fmt=cfg.format)
        if cfg.pool_size is not None and cfg.pool_size < len(pool):
            path = self.out / "pool.jsonl"
            pool = subsample_to_file(pool, cfg.pool_size, cfg.seed, path)
            self.pool_spec = str(path)
        else:
            self.pool_spec = cfg.pool
        self.pool = pool
        self.steps = matched_step_count(cfg, len(pool))
        self.model = cfg.model or str(self._build_model())
        log.info(
            "pool %s: %d examples; base model %s; %d matched update steps of %d",
            self.pool_spec,
            len(pool),
            self.model,
            self.steps,
            cfg.batch_size,
        )

    def _build_model(self) -> Path:
        from ..models.tiny import PRESETS, build_tiny_model

        if self.cfg.build_model not in PRESETS:
            raise UserError(f"unknown build_model preset '{self.cfg.build_model}'; available: {', '.join(PRESETS)}")
        path = self.out / "base_model"
        if not (path / "config.json").is_file():
            texts = ["\n".join(c for _, c in e.messages) for e in self.pool.examples[:20000]]
            build_tiny_model(path, texts, preset=self.cfg.build_model, seed=self.cfg.seed)
        return path

    def method_options(self, method: str) -> dict:
        """The method's section of the config, `{base_model}` replaced by the base model."""
        return substitute_base_model(self.options.get(method, {}), self.model)

    def reads_features(self, method: str | None) -> bool:
        """Whether a cell of `method` reads the featurized pool: RAISE's state always, a
        baseline as it says itself (`needs_features`); the untrained base model never."""
        from ..baselines import needs_features

        if method is None:
            return False
        return method == RAISE or needs_features(method, self.method_options(method))

    def features(self) -> str:
        """The featurized pool (computed once, reused by featurize itself when present), with
        the RDS+ vectors when a method of the study reads them."""
        if self._features is None:
            from ..baselines import needs_rds_vectors
            from ..features.featurize import FeaturizeConfig, featurize

            cfg = self.cfg
            out = self.out / "features"
            rds = False
            for m in dict.fromkeys(cfg.methods):
                try:
                    rds = rds or (m != RAISE and needs_rds_vectors(m, self.method_options(m)))
                except UserError:
                    pass  # bad options of that method: its own cell fails with them, the others run
            start = time.perf_counter()
            table = featurize(
                FeaturizeConfig(
                    **{
                        **job_settings(cfg, "featurize"),
                        "model": cfg.aux_model or self.model,
                        "pool": self.pool_spec,
                        "format": self.pool.format,
                        "out": str(out),
                        "rds": rds,
                    }
                ),
                pool=self.pool,
            )
            self._record_features_time(table.meta.get("fingerprint"), time.perf_counter() - start)
            self._features = str(out)
        return self._features

    def _record_features_time(self, fp: str | None, seconds: float) -> None:
        """Wall time of featurizing the pool, kept beside it (a later reuse costs nothing)."""
        path = self.out / "features_time.json"
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if record.get("fingerprint") != fp:
            write_json_atomic(path, {"fingerprint": fp, "seconds": round(seconds, 1)})

    def features_seconds(self) -> float:
        path = self.out / "features_time.json"
        return float(json.loads(path.read_text(encoding="utf-8"))["seconds"]) if path.is_file() else 0.0

    # ---------------------------------------------------------------- cells

    def _fingerprints(self, cell: Cell) -> tuple[str, str]:
        cfg = asdict(self.cfg)
        skip = (
            *_NOT_TRAINING,
            *(() if cell.method == RAISE else _RAISE_ONLY),
            *(() if self.reads_features(cell.method) else _FEATURES_ONLY),
        )
        training = {k: v for k, v in cfg.items() if k not in skip}
        options = self.method_options(cell.method or "")
        train_fp = fingerprint(
            {
                "pool": self.pool.fingerprint,
                "model": self.model,
                "cell": asdict(cell),
                "options": options,
                "steps": self.steps,
                **({} if cell.method is None else training),
            }
        )
        eval_fp = fingerprint(
            {
                "train": train_fp,
                **{k: cfg[k] for k in _EVAL_FIELDS if k != "device"},
                "data_dir": self.cfg.data_dir,
                "max_length": self.cfg.max_length,
            }
        )
        return train_fp, eval_fp

    def _train(self, cell: Cell, cell_dir: Path) -> tuple[Path, float | None]:
        """The cell's model, and its training time when the method counts it itself (RAISE,
        whose policy training resumes from checkpoints: the time of earlier runs counts too);
        None: the wall time of this call."""
        cfg = self.cfg
        if cell.method is None:
            return Path(self.model), None
        options = self.method_options(cell.method)
        features = self.features() if self.reads_features(cell.method) else ""
        own = {
            "seed": cell.seed,
            "pool": self.pool_spec,
            "features": features,
            "model": self.model,
            "out": str(cell_dir),
        }
        if cell.method == RAISE:
            from ..training.finetune import train_and_finetune
            from ..training.train_policy import TrainPolicyConfig

            tp = from_dict(
                TrainPolicyConfig,
                {
                    **job_settings(cfg, "train_policy"),
                    **own,
                    "steps": self.steps,
                    "out": str(cell_dir / "train_policy"),
                    **options,
                },
                "study: section 'raise'",
            )
            model_dir, policy_seconds, finetune_seconds = train_and_finetune(tp, cell_dir)
            return model_dir, policy_seconds + finetune_seconds
        from ..baselines.run import BaselineConfig, run_baseline

        bcfg = BaselineConfig(
            **{
                **job_settings(cfg, "baseline"),
                **own,
                "method": cell.method,
                "format": self.pool.format,
                "steps": cfg.full_steps if cell.method == "full" else None,
                "train": True,
            }
        )
        run_baseline(bcfg, options)
        return cell_dir / "model", None

    def _evaluate(self, model_dir: Path, cell_dir: Path) -> dict[str, float]:
        from ..evaluation.evaluate import EvaluateConfig, evaluate

        scores = evaluate(
            EvaluateConfig(**job_settings(self.cfg, "evaluate"), model=str(model_dir), out=str(cell_dir / "eval"))
        )
        return {t: s["score"] for t, s in scores.items()}

    def _loss(self, model_dir: Path) -> float | None:
        """Mean response loss on `loss_set` (e.g. GSM8K test solutions); None without one."""
        cfg = self.cfg
        if not cfg.loss_set:
            return None
        from ..data.validation import load_validation
        from ..evaluation.loss import response_loss

        examples = load_validation(cfg.loss_set, cfg.data_dir, n=cfg.loss_size, seed=cfg.seed, split=cfg.loss_split)
        return response_loss(
            str(model_dir),
            examples,
            template=cfg.template,
            max_length=cfg.max_length,
            batch_size=cfg.eval_batch_size,
            dtype=cfg.dtype,
            device=cfg.device,
        )

    def run_cell(self, cell: Cell) -> dict:
        """Train (unless done) and evaluate (unless done) one cell; return its record."""
        cell_dir = self.out / "cells" / cell.name
        record_path = cell_dir / "cell.json"
        train_fp, eval_fp = self._fingerprints(cell)
        record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
        # The base cell's model is the study's model (a short name or hub id need not be a path).
        trained = record.get("train") == train_fp and (cell.method is None or Path(record.get("model", "")).exists())
        if trained and record.get("eval") == eval_fp:
            return record
        start = time.perf_counter()
        train_seconds = None
        if trained:
            model_dir = Path(record["model"])
            train_seconds = record.get("train_seconds")
        else:
            log.info("cell %s: training (%s)", cell.name, cell.method or "none: base model")
            model_dir, counted = self._train(cell, cell_dir)
            train_seconds = (
                None
                if cell.method is None
                else round(counted if counted is not None else time.perf_counter() - start, 3)
            )
            setup_logging(self.out, "study.log")  # training stages log into their own run folders
            write_json_atomic(
                record_path,
                {**asdict(cell), "train": train_fp, "model": str(model_dir), "train_seconds": train_seconds},
            )
        log.info("cell %s: evaluating %s", cell.name, model_dir)
        scores = self._evaluate(model_dir, cell_dir)
        record = {
            **asdict(cell),
            "train": train_fp,
            "eval": eval_fp,
            "model": str(model_dir),
            "scores": scores,
            "loss": self._loss(model_dir),
            "train_seconds": train_seconds,
            "steps": self.steps if cell.method not in (None, "full") else None,
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json_atomic(record_path, record)
        self.computed.append(cell.name)
        return record

    # ---------------------------------------------------------------- table

    def rows(self, records: list[dict]) -> list[tuple[str, dict[str, float]]]:
        """Per row label the task scores; rows with several cells (RAND's seeds) are averaged."""
        grouped: dict[str, list[dict[str, float]]] = {}
        for r in records:
            grouped.setdefault(r["row"], []).append(r["scores"])
        return [
            (label, {t: sum(s[t] for s in group) / len(group) for t in self.cfg.tasks})
            for label, group in grouped.items()
        ]

    def run(self) -> dict:
        """Every cell, then `study_table.{md,csv,json}` and `study_plot.png` in the study folder."""
        from ..progress import progress_bar

        self.prepare()
        write_json_atomic(self.out / "study_config.json", asdict(self.cfg))
        records, failed = [], {}
        for cell in progress_bar(self.cells, desc="study cells", unit="cell"):
            try:
                records.append(self.run_cell(cell))
            except UserError as e:
                # One method that cannot run here (no judge, too small a pool) must not sink the
                # others; the 0% and 100% rows are required, though.
                if cell.method in (None, "full"):
                    raise
                log.error("cell %s failed: %s", cell.name, e)
                failed[cell.name] = str(e)
        table = build_table(self.rows(records), self.cfg.tasks)
        extra = {
            "pool": self.pool_spec,
            "pool_size": len(self.pool),
            "model": self.model,
            "val": self.cfg.val,
            "budget": self.cfg.budget,
            "steps": self.steps,
            "full_steps": self.cfg.full_steps,
            "batch_size": self.cfg.batch_size,
            "seeds": self.cfg.seeds,
            "raise_seeds": self.cfg.raise_seeds,
            "eval_limit": self.cfg.eval_limit,
            "cells": {
                r["name"]: {k: r[k] for k in ("row", "method", "seed", "scores", "model", "steps")} for r in records
            },
            "failed": failed,
        }
        from .method_stats import method_stats, stats_markdown

        readers = {r["method"] for r in records if self.reads_features(r["method"])}
        stats = method_stats(
            records, self.out / "cells", self.pool, self.cfg.batch_size, self.features_seconds(), readers
        )
        extra["method_stats"] = stats
        loss_name = f"{self.cfg.loss_set} {self.cfg.loss_split}" if self.cfg.loss_set else None
        notes = [f"{n} failed: {e}" for n, e in failed.items()]
        paths = write_table(self.out, table, self.cfg.tasks, extra, notes=notes)
        paths["methods_md"] = self.out / "study_methods.md"
        write_text_atomic(paths["methods_md"], stats_markdown(stats, loss_name))
        paths["png"] = plot_study(
            table,
            self.cfg.tasks,
            self.out / "study_plot.png",
            title=f"{Path(self.model).name}, budget {self.cfg.budget}, {self.steps} steps",
        )
        log.info("cells computed this run: %s", ", ".join(self.computed) or "none (all reused)")
        return {
            "table": table,
            "paths": paths,
            "computed": list(self.computed),
            "failed": failed,
            "markdown": paths["md"].read_text(encoding="utf-8")
            + "\n"
            + paths["methods_md"].read_text(encoding="utf-8"),
        }


def run_study(cfg: StudyConfig, options: dict[str, dict] | None = None) -> dict:
    """Run (or resume) a study; returns the table rows, the written paths and the cells computed."""
    from ..training.reporting import parse_report_to

    parse_report_to(cfg.report_to)  # a typo fails before any cell
    return Study(cfg, options).run()
