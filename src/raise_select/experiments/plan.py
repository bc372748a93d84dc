"""A study's settings and its grid of cells: `StudyConfig`, the settings each job of a cell takes
(`JOB_FIELDS`) and which of them reach a cell's key, the named targets, `plan_cells`, and the
method sections of a config file (`{model}` in them is the study's base model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..baselines import budget_count, matched_steps
from ..config import merge, parse_overrides, read_yaml
from ..data.benchmarks import heldout_names
from ..errors import UserError
from ..evaluation.evaluate import check_tasks
from ..evaluation.loss import default_metric
from ..registry import Registry
from ..reports.tables import BASE_ROW
from ..training.loop import LMConfig
from .methods import METHODS

RAISE = "raise"
PLACEHOLDER = "{model}"  # in a method's options: the study's base model

# Named target tasks. Per target the methods read a validation sample drawn from the target's
# validation rows, and every cell is scored on its held-out `<target>:dev` or `<target>:test` set
# (`heldout_split`); the three parts share no question (`data.benchmarks.split_parts`).
TARGETS: Registry[str] = Registry(
    "target", {"gsm8k": "validation", "arc_challenge": "validation", "commonsenseqa": "validation"}
)
HELDOUT_SPLITS = ("dev", "test")
METRICS = ("auto", "neg_loss", "choice_ce", "choice_acc")

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
    "heldout_size",
    "heldout_split",
    "metric",
)
# Settings outside a cell's training key: evaluation, the grid, reporting, and the paths whose
# contents are keyed instead (model, pool, validation set, data folder).
_NOT_TRAINING = (
    *_EVAL_FIELDS,
    "methods",
    "seeds",
    "raise_seeds",
    "method_seeds",
    "targets",
    "out",
    "pool",
    "format",
    "pool_size",
    "model",
    "build_model",
    "aux_model",
    "val",
    "val_size",  # the validation rows themselves are keyed, for the cells that read them
    "data_dir",
    "report_to",
    "report_only",
)
# Settings that reach only some cells, a change retrains those cells alone: train-policy's own
# (the RAISE cells), and featurize's own (the cells whose method reads the features).
_RAISE_ONLY = tuple(sorted(_study_fields("train_policy") - _study_fields("baseline")))
_FEATURES_ONLY = tuple(sorted(_study_fields("featurize") - _study_fields("train_policy", "baseline")))
_FULL_ONLY = ("full_steps", "full_epochs")  # the 100% row's own


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
    model: str = field(default="", metadata={"help": "base model M_0: short name, hub id or folder"})
    build_model: Optional[str] = field(
        default=None,
        metadata={"help": "with no `model`: build a tiny Llama of this preset (test, 1m, 10m) at <out>/base_model"},
    )
    aux_model: str = field(default="", metadata={"help": "auxiliary LM of featurize; empty: the base model"})
    val: str = field(
        default="mmlu",
        metadata={"help": "without `targets`: the validation set of the targeted methods and RAISE (named or a file)"},
    )
    val_size: Optional[int] = field(
        default=None,
        metadata={"help": "use at most this many validation examples (seeded sample); with `targets`: per target"},
    )
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "original files of the named sets (validation and evaluation); None: the hub"}
    )
    targets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "target tasks (gsm8k, arc_challenge, commonsenseqa): per target a validation sample the "
            "targeted methods read and a held-out sample every cell is scored on per item; empty: `val` alone"
        },
    )
    heldout_size: Union[int, dict[str, int], None] = field(
        default=None,
        metadata={
            "help": "with `targets`: held-out items per target (seeded sample; a number, or per target a mapping "
            "target: number); None: all"
        },
    )
    heldout_split: str = field(
        default="test",
        metadata={
            "help": "with `targets`: the held-out set every cell is scored on, `dev` (for choosing settings) or "
            "`test` (reported once, settings fixed); the validation sample is disjoint from both"
        },
    )
    tasks: list[str] = field(
        default_factory=lambda: ["mmlu", "arc_challenge", "commonsenseqa"],
        metadata={"help": "lm-evaluation-harness tasks (Table 1's columns); may be empty with `targets`"},
    )
    methods: list[str] = field(
        default_factory=lambda: ["random", "ifd", "deita", "alpagasus", "sspl", "less", RAISE],
        metadata={
            "help": "rows besides 0% and 100%, in this order (experiments.methods.METHODS: baselines and RAISE "
            "presets); a method listed twice is one row"
        },
    )
    budget: float = field(default=0.01, metadata={"help": "fraction of the pool (< 1) or number of examples (>= 1)"})
    epochs: int = field(default=3, metadata={"help": "static subsets are trained this many epochs (section 4.2)"})
    full_epochs: Optional[int] = field(
        default=None, metadata={"help": "epochs of the 100% row over the whole pool; None: `epochs`"}
    )
    batch_size: int = field(default=8, metadata={"help": "training batch size B (RAISE: a multiple of `classes`)"})
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        metadata={"help": "seeds of the random baseline (the paper's mean of 5); a seed listed twice is one cell"},
    )
    raise_seeds: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "seeds of the RAISE presets (policy training and fine-tuning), a cell `<preset>-s<seed>` each, "
            "the row their mean; a seed listed twice is one cell; None: one cell per preset at the study's `seed`"
        },
    )
    method_seeds: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "seeds of every other method (the 100% row and the baselines but RAND), a cell "
            "`<method>[@<target>]-s<seed>` each, the row their mean; None: one cell at the study's `seed`"
        },
    )
    full_steps: Optional[int] = field(
        default=None, metadata={"help": "cap on the 100% row's update steps; None: its epochs over the whole pool"}
    )
    classes: int = field(default=8, metadata={"help": "featurize: K-means classes C of the diversity constraint"})
    sem_dim: int = field(default=32, metadata={"help": "featurize: d_sem"})
    rounds: int = field(default=20, metadata={"help": "RAISE: policy-training rounds K"})
    select_every: int = field(default=1, metadata={"help": "RAISE: the policy chooses every M steps (appendix F)"})
    metric: str = field(
        default="auto",
        metadata={
            "help": "with `targets`: the held-out figure per item: auto (choice_ce on multiple-choice targets, "
            "neg_loss on GSM8K), neg_loss (response loss), choice_ce (gold choice's cross-entropy over the "
            "choices), choice_acc; RAISE's reward metric is train-policy's `metric` in the `raise:` section"
        },
    )
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
    report_only: bool = field(
        default=False,
        metadata={"help": "write the tables from the finished cells only: nothing is selected, trained or evaluated"},
    )


@dataclass
class Cell:
    name: str  # folder under <out>/cells
    row: str  # table row it counts towards
    method: str | None  # None: the untrained base model
    seed: int
    target: str | None = None  # a targeted method's target (with `targets`); None: every target


def matched_step_count(cfg: StudyConfig, pool_size: int) -> int:
    """T of every method: `epochs` passes over the budget in batches of `batch_size`."""
    return matched_steps(budget_count(cfg.budget, pool_size), cfg.batch_size, cfg.epochs)


def cell_name(method: str, target: str | None, seed: int | None) -> str:
    """`<method>[@<target>][-s<seed>]` (a seed for the rows that run several)."""
    return f"{method}{f'@{target}' if target else ''}{f'-s{seed}' if seed is not None else ''}"


def plan_cells(cfg: StudyConfig) -> list[Cell]:
    """The grid: 0%, 100%, then the methods in the order given (per target and seed as each says)."""
    METHODS.check((m for m in cfg.methods), "study: methods")
    TARGETS.check(cfg.targets, "study: targets")
    if not cfg.seeds:
        raise UserError("seeds: give at least one seed for the random baseline")
    if cfg.raise_seeds is not None and not cfg.raise_seeds:
        raise UserError("raise_seeds: give at least one seed, or leave it out for one RAISE cell at `seed`")
    if cfg.method_seeds is not None and not cfg.method_seeds:
        raise UserError("method_seeds: give at least one seed, or leave it out for one cell at `seed`")
    if cfg.heldout_split not in HELDOUT_SPLITS:
        raise UserError(f"heldout_split: '{cfg.heldout_split}'; give one of {', '.join(HELDOUT_SPLITS)}")
    if cfg.metric not in METRICS:
        raise UserError(f"metric: '{cfg.metric}'; give one of {', '.join(METRICS)}")
    for t in cfg.targets:
        heldout_size_of(cfg, t)  # a bad size fails before any cell
        if cfg.metric.startswith("choice_") and default_metric(t) != "choice_ce":
            raise UserError(f"metric: {cfg.metric} scores choices; target '{t}' is not multiple choice (use neg_loss)")
    if isinstance(cfg.heldout_size, dict):
        # A size for a target the study leaves out is ignored (a shipped grid cut down with
        # `--set study.targets=[...]` keeps its sizes); a name no target has is a typo.
        known = {n.partition(":")[0] for n in heldout_names()}
        unknown = sorted(set(cfg.heldout_size) - known - set(cfg.targets))
        if unknown:
            raise UserError(
                f"heldout_size: '{unknown[0]}' is not a target with held-out sets ({', '.join(sorted(known))})"
            )
    for name in ("seeds", "raise_seeds", "method_seeds"):
        bad = [s for s in getattr(cfg, name) or () if not 0 <= s < 2**32]
        if bad:
            raise UserError(f"{name}: {bad[0]} is not a seed; give whole numbers in 0 .. 2**32 - 1")
    if cfg.full_steps is not None and cfg.full_steps < 1:
        raise UserError(
            f"full_steps: {cfg.full_steps}; give at least 1, or leave it out for `epochs` over the whole pool"
        )
    if cfg.tasks or not cfg.targets:
        try:  # an unknown or empty task list, before any cell has trained
            check_tasks(cfg.tasks)
        except UserError as e:
            raise UserError(f"tasks: {e}") from None
    cells = [Cell("base", BASE_ROW, None, cfg.seed)]
    for m in dict.fromkeys(["full", *cfg.methods]):
        entry = METHODS[m]
        seeds = [(s, s) for s in seeds_of(cfg, m)] if seeds_of(cfg, m) is not None else [(cfg.seed, None)]
        targets = cfg.targets if entry.reads_validation and cfg.targets else [None]
        cells += [Cell(cell_name(m, t, shown), entry.label, m, s, t) for s, shown in seeds for t in targets]
    return cells


def seeds_of(cfg: StudyConfig, method: str) -> list[int] | None:
    """The seeds `method` runs under, a cell `-s<seed>` each (RAND: `seeds`; RAISE's presets:
    `raise_seeds`; every other method, the 100% row included: `method_seeds`); None: one cell at
    the study's `seed`, named without a seed."""
    kind = METHODS[method].seeds
    seeds = cfg.seeds if kind == "random" else cfg.raise_seeds if kind == "raise" else cfg.method_seeds
    return None if seeds is None else list(dict.fromkeys(seeds))


def heldout_size_of(cfg: StudyConfig, target: str) -> int | None:
    """Held-out items of `target`: `heldout_size`, or its entry when it is a mapping per target."""
    size = cfg.heldout_size
    if isinstance(size, dict):
        size = size.get(target)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise UserError(f"heldout_size: {size!r} for {target}; give a whole number of items >= 1")
    return size


def method_sections(config_path: str | Path | None, overrides: list[str] | None, methods: list[str]) -> dict[str, dict]:
    """Each method's own section of the config file, then `--set <method>.<key>=value`; also the
    sections a method reads besides its own: a baseline preset's method (`less_metric` reads `less:`),
    a RAISE preset's prior source (`raise_less` runs a LESS cell) and `raise:` under every preset."""
    raw = read_yaml(config_path) if config_path is not None else {}
    ov = parse_overrides(overrides)
    out = {}
    known = [METHODS[x] for x in methods if x in METHODS]
    presets = [e for e in known if e.runs == RAISE]
    read_too = [e.baseline for e in known if e.baseline] + [e.prior_from for e in known if e.prior_from]
    for m in dict.fromkeys([*methods, *read_too, "full", *((RAISE,) if presets else ())]):
        if raw.get(m) is not None and not isinstance(raw[m], dict):
            raise UserError(
                f"{config_path}: section '{m}' holds the method's options as a mapping (option: value), got {raw[m]!r}"
            )
        opts = dict(raw.get(m) or {})
        if isinstance(ov.get(m), dict):
            merge(opts, ov[m])  # nested sections (raise's `policy`) merged key by key
        out[m] = opts
    return out


def substitute_model(options: dict, model: str) -> dict:
    """`options` with `{model}` in their string values (nested too) replaced by the base model."""

    def one(v):
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        return v.replace(PLACEHOLDER, model) if isinstance(v, str) else v

    return {k: one(v) for k, v in options.items()}


def check_placeholders(options: dict[str, dict], source: str) -> None:
    """`{base_model}` was a second name of `{model}`; one placeholder is left, the old one is named."""
    for m, opts in options.items():
        for k, v in opts.items():
            if isinstance(v, str) and "{base_model}" in v:
                raise UserError(f"{source}: section '{m}', option '{k}': write {PLACEHOLDER} for the study's model")
