"""The comparison study (paper section 4, Table 1): every method at matched update steps, one
cell runner and one cell store for the study, the real-data benchmark and the demo's methods.

One config names the pool, the base model, the target(s), the budget and the methods
(`experiments.methods.METHODS`: the baselines and RAISE's presets). The study fills a grid of
cells under `<out>/cells/<cell>/` (`experiments.cells.CellStore`):

- `base`: the base model, untrained (the 0% row);
- `full`: the whole pool for `full_epochs` (else `epochs`) epochs, `full_steps` capping its
  steps (the 100% row, also Φ's measure);
- one cell per method, target and seed: `<method>[@<target>][-s<seed>]`. A method that reads a
  validation set runs once per target, the others once and are scored on every target; RAND
  runs once per seed of `seeds`, RAISE's presets once per seed of `raise_seeds`.

Targets: with `targets` (named sets, e.g. gsm8k), each target has a seeded validation sample
(`val_size` rows of its validation split, written to `<out>/targets/`, read by the targeted
methods and RAISE's reward) and a held-out sample of another split (`heldout_size` rows) whose
per-item response losses every cell reports; the gain table (`reports.study`) compares them
with 95% intervals. Without `targets`, `val` is the one validation set. With `tasks`, every
cell is also scored with lm-evaluation-harness in the paper's Table 1 layout. Before any cell
trains, when a method reads a validation set (`Study.check_overlap`), its rows that are also
pool rows are warned about, and a held-out set (a target's, the `loss_set`) that shares an item
with it is refused, naming the target.

A cell's key is a digest of what changes its result: its settings and the contents of the
model, pool, validation set and prior files, never their paths. A finished cell is never
recomputed, a killed study resumes, `report_only` writes the tables from the finished cells
alone. Options of a method go in a section named after it (`deita:`, `less:`; `raise:` holds
train-policy settings shared by every RAISE preset, a preset's own section comes on top); the
string `{model}` in them stands for the study's base model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from ..baselines.run import BaselineConfig, run_baseline
from ..config import from_dict
from ..errors import UserError
from ..evaluation.evaluate import EvaluateConfig, evaluate
from ..features.featurize import FeaturizeConfig, featurize
from ..io import fingerprint, write_json_atomic
from ..logs import setup_logging
from ..models.loading import load_model_and_tokenizer
from ..progress import progress_bar
from ..training.finetune import train_and_finetune
from ..training.reporting import parse_report_to
from ..training.train_policy import TrainPolicyConfig
from .cells import CellStore, Unfinished, options_digest
from .costs import PassCounter, flop_parameters, pool_tokens, record_costs
from .heldout import HeldoutSets
from .inputs import StudyInputs
from .methods import METHODS
from .plan import (  # noqa: F401  (re-exported: the study's settings and grid)
    _EVAL_FIELDS,
    _FEATURES_ONLY,
    _FULL_ONLY,
    _NOT_TRAINING,
    _RAISE_ONLY,
    JOB_FIELDS,
    PLACEHOLDER,
    RAISE,
    TARGETS,
    Cell,
    StudyConfig,
    cell_name,
    check_placeholders,
    heldout_size_of,
    job_settings,
    matched_step_count,
    method_sections,
    plan_cells,
    seeds_of,
    substitute_model,
)
from .provenance import provenance
from .report import StudyTables

log = logging.getLogger(__name__)


class Study(StudyInputs, HeldoutSets, StudyTables):
    """Runs the cells of one study folder and writes its tables: its inputs (`experiments.inputs`),
    cells, held-out evaluations (`experiments.heldout`) and tables (`experiments.report`)."""

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
        check_placeholders(self.options, "study")
        self.store = CellStore(self.out / "cells", report_only=cfg.report_only)
        self.computed: list[str] = []
        self.trainings = 0  # cells trained by this process (a resumed study counts only its own)
        self._features: str | None = None
        self._digests: dict[str, str] = {}
        self._heldout_sets: dict[tuple[str, str], list] = {}
        self._basis: tuple[int, int] | None = None

    # ---------------------------------------------------------------- inputs

    def features(self) -> str:
        """The featurized pool (computed once, reused by featurize itself when present), with
        the RDS+ vectors when a method of the study reads them."""
        if self._features is None:
            cfg = self.cfg
            out = self.out / "features"
            rds = False
            for m in dict.fromkeys(cfg.methods):
                try:
                    rds = rds or METHODS[m].needs_rds_vectors(substitute_model(self.method_options(m), self.model))
                except UserError:
                    pass  # bad options of that method: its own cell fails with them, the others run
            if cfg.report_only:
                if not (out / "features.parquet").is_file():
                    raise Unfinished("the featurized pool")
                self._features = str(out)
                return self._features
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
            self._record_features_time(table.meta, time.perf_counter() - start)
            self._features = str(out)
        return self._features

    def _record_features_time(self, meta: dict, seconds: float) -> None:
        """Scoring time of the featurized pool over every resume (featurize's own record), else
        the wall time of the call that computed it; a later reuse costs nothing."""
        path = self.out / "features_time.json"
        fp = meta.get("fingerprint")
        record = _read_json(path)
        if record.get("fingerprint") != fp:
            timed = float((meta.get("timing") or {}).get("seconds") or 0.0)
            write_json_atomic(path, {"fingerprint": fp, "seconds": round(timed or seconds, 1)})

    def features_seconds(self) -> float:
        return float(_read_json(self.out / "features_time.json").get("seconds") or 0.0)

    # ---------------------------------------------------------------- keys

    def cell_key(self, cell: Cell) -> str:
        """A digest of what changes the cell's trained model: the settings that reach it and the
        contents of the model, pool, validation set, features' model and prior."""
        if cell.method is None:
            return fingerprint({"base": self.digest("model")})
        cfg = asdict(self.cfg)
        entry = METHODS[cell.method]
        reads = self.reads_features(cell.method)
        skip = (
            *_NOT_TRAINING,
            *(() if entry.runs == RAISE else _RAISE_ONLY),
            *(() if reads else _FEATURES_ONLY),
            *(() if cell.method == "full" else _FULL_ONLY),
        )
        options = self.method_options(cell.method)
        key = {
            "method": cell.method,
            "seed": cell.seed,
            "target": cell.target,
            "options": options_digest(options),
            "model": self.digest("model"),
            "pool": self.pool.fingerprint,
            "steps": self.steps,
            # a RAISE preset's own value of a study setting (raise_untrained's `rounds: 0`) wins
            # over the study's, so the study's value does not key that cell
            "settings": {k: v for k, v in cfg.items() if k not in skip and not (entry.runs == RAISE and k in options)},
        }
        if entry.reads_validation:
            key["validation"] = self.digest(f"val:{cell.target or ''}")
        if reads:
            key["features_model"] = self.digest("aux_model")
        if entry.prior_from:
            key["prior"] = self.cell_key(self._prior_cell(cell))
        return fingerprint(key)

    # ---------------------------------------------------------------- cells

    def _prior_cell(self, cell: Cell) -> Cell:
        return self._prior_cell_for(cell.method, cell.target, cell.seed)

    def _prior_cell_for(self, method: str, target: str | None, seed: int | None = None) -> Cell:
        """The cell whose pool scores are a RAISE preset's prior: its source method at the same
        target (when that method is targeted) and the same seed when the source runs under it
        (`method_seeds`: LESS's warm-up then varies with the RAISE row's seed), else the study's."""
        source = METHODS[method].prior_from
        entry = METHODS[source]
        target = target if entry.reads_validation and self.cfg.targets else None
        seeds = seeds_of(self.cfg, source)
        if seeds is None:
            return Cell(cell_name(source, target, None), entry.label, source, self.cfg.seed, target)
        seed = seed if seed in seeds else self.cfg.seed if self.cfg.seed in seeds else seeds[0]
        return Cell(cell_name(source, target, seed), entry.label, source, seed, target)

    def _outputs_exist(self, record: dict) -> bool:
        return record.get("method") is None or (self.out / record.get("model", "\0")).is_dir()

    def run_cell(self, cell: Cell) -> dict:
        """Train (unless finished) and evaluate (unless done) one cell; return its record."""
        key = self.cell_key(cell)

        def compute() -> dict:
            log.info("cell %s: training (%s)", cell.name, cell.method or "none: base model")
            entry = METHODS[cell.method] if cell.method else None
            if entry is not None and entry.prior_from:  # the source cell first: its passes are its own
                self.run_cell(self._prior_cell(cell))
            with PassCounter() as counter:
                fields = self._train(cell)
            if entry is not None:
                n, tokens = self.counted_basis()
                seconds = fields["select_seconds"] + fields["train_seconds"]
                record_costs(fields, counter, target_parameters=n, pool_tokens=tokens, seconds=seconds)
            return {**asdict(cell), "runs": entry.runs if entry else None, **fields, **provenance()}

        record, computed = self.store.run(cell.name, key, compute, self._outputs_exist)
        if computed:
            self.computed.append(cell.name)
        self._evaluate_cell(cell, record)
        return record

    def _train(self, cell: Cell) -> dict:
        """Compute the cell; the record's fields of its model (relative to the study folder), steps and seconds."""
        cfg = self.cfg
        cell_dir = self.store.dir(cell.name)
        if cell.method is None:
            return {"model": None, "steps": 0, "select_seconds": 0.0, "train_seconds": 0.0}
        self.trainings += 1
        entry = METHODS[cell.method]
        options = substitute_model(self.method_options(cell.method), self.model)
        features = self.features() if self.reads_features(cell.method) else ""
        val = (self.val_files[cell.target] if cell.target else cfg.val) if entry.reads_validation else ""
        own = {"seed": cell.seed, "pool": self.pool_spec, "features": features, "model": self.model, "val": val}
        if cfg.targets:  # the target's file holds its sample
            own["val_size"] = None
        if entry.runs == RAISE:
            prior_seconds = 0.0
            if entry.prior_from:  # the prior is the source cell's pool scores: that cell first
                source = self._prior_cell(cell)
                source_record = self.run_cell(source)
                options.setdefault("policy", {})["prior_selection"] = str(
                    self.store.dir(source.name) / "selection.json"
                )
                prior_seconds = float(source_record.get("select_seconds") or 0.0)
            tp = from_dict(
                TrainPolicyConfig,
                {**job_settings(cfg, "train_policy"), **own, "steps": self.steps, "out": "", **options},
                f"study: RAISE preset '{cell.method}'",
            )
            model_dir, policy_seconds, finetune_seconds = train_and_finetune(tp, cell_dir)
            setup_logging(self.out, "study.log")  # training stages log into their own run folders
            return {
                "model": _relative(model_dir, self.out),
                "steps": self.steps,
                "select_seconds": round(policy_seconds, 2),
                "train_seconds": round(finetune_seconds, 2),
                "prior_seconds": round(prior_seconds, 2),
            }
        bcfg = BaselineConfig(
            **{
                **job_settings(cfg, "baseline"),
                **own,
                "method": entry.runs_as,
                "format": self.pool.format,
                "out": str(cell_dir),
                "epochs": (cfg.full_epochs or cfg.epochs) if cell.method == "full" else cfg.epochs,
                "steps": cfg.full_steps if cell.method == "full" else None,
                # LESS's and ROSE's gradients of the pool do not depend on the target: one cache
                "cache": str(self.out / "cache") if entry.shared_cache else "",
                "train": False,
            }
        )
        t0 = time.perf_counter()
        sel = run_baseline(bcfg, options)
        t1 = time.perf_counter()
        run_baseline(dataclasses.replace(bcfg, train=True), options)
        t2 = time.perf_counter()
        setup_logging(self.out, "study.log")
        return {
            "model": _relative(cell_dir / "model", self.out),
            "steps": sel["steps"],
            # a selection kept from a killed run: the seconds that run recorded
            # (the 100% row selects nothing: its cost is its training)
            "select_seconds": 0.0
            if cell.method == "full"
            else round(max(t1 - t0, float(sel.get("select_seconds") or 0.0)), 2),
            "train_seconds": round(t2 - t1, 2),
        }

    def counted_basis(self) -> tuple[int, int]:
        """Counted Φ's unit (`experiments.costs`): the base model's matrix parameters and the
        pool's tokens as the trainer encodes them (read once per process)."""
        if self._basis is None:
            model, tokenizer = load_model_and_tokenizer(self.model)
            self._basis = (
                flop_parameters(model),
                pool_tokens(self.pool, tokenizer, self.cfg.template, self.cfg.max_length),
            )
            del model
        return self._basis

    def model_path(self, record: dict) -> str:
        return self.model if record.get("method") is None else str(self.out / record["model"])

    def _evaluate_tasks(self, cell: Cell, model: str) -> dict[str, float]:
        """lm-evaluation-harness's score per task of `tasks` for the cell's model."""
        scores = evaluate(
            EvaluateConfig(
                **job_settings(self.cfg, "evaluate"), model=model, out=str(self.store.dir(cell.name) / "eval")
            )
        )
        return {t: s["score"] for t, s in scores.items()}

    # ---------------------------------------------------------------- run

    def records(self) -> tuple[list[dict], dict[str, str]]:
        """Every cell's record (computed unless finished, or only the finished ones with
        `report_only`), and the cells that failed with why."""
        records, failed = {}, {}
        # The 100% row (an epoch of the pool: the dearest cell) runs after the others unless
        # `methods` names it, so a grid's cheap rows land first; records keep the plan's order.
        last = "full" not in self.cfg.methods
        order = sorted(range(len(self.cells)), key=lambda i: last and self.cells[i].method == "full")
        for i in progress_bar(order, desc="study cells", unit="cell"):
            cell = self.cells[i]
            try:
                records[i] = self.run_cell(cell)
            except Unfinished as e:
                if cell.method is None:
                    raise UserError(
                        f"report_only: {self.out} holds no finished zero-shot cell ({e}); run the study first"
                    ) from None
                log.info("cell %s: not finished (%s); left out (report_only)", cell.name, e)
            except UserError as e:
                # One method that cannot run here (no judge, too small a pool) must not sink the
                # others; the 0% and 100% rows are required, though.
                if cell.method in (None, "full"):
                    raise
                log.error("cell %s failed: %s", cell.name, e)
                failed[cell.name] = str(e)
        return [records[i] for i in sorted(records)], failed

    def run(self) -> dict:
        """Every cell, then the tables (`StudyTables.write_tables`): `study_table.{md,csv,json}`,
        `study_methods.md` and `study_plot.png` with `tasks`; `study_gains.{md,json}` with `targets`
        (and the same as `study_gains_<split>.{md,json}`, so the dev table stays beside the test table)."""
        self.prepare()
        if not self.cfg.report_only:
            write_json_atomic(self.out / "study_config.json", asdict(self.cfg))
        records, failed = self.records()
        tables = self.write_tables(records, failed)
        log.info("cells computed this run: %s", ", ".join(self.computed) or "none (all reused)")
        return {
            "table": tables["table"],
            "gains": tables["gains"],
            "records": records,
            "paths": tables["paths"],
            "computed": list(self.computed),
            "failed": failed,
            "phi": tables["phi"],
            "markdown": tables["markdown"],
            "differences": tables["differences"],
        }


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the study folder (a moved folder keeps its cells)."""
    return Path(path).resolve().relative_to(root.resolve()).as_posix()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_study(cfg: StudyConfig, options: dict[str, dict] | None = None) -> dict:
    """Run (or resume) a study; returns the tables, the written paths and the cells computed."""
    from .provenance import code_version

    parse_report_to(cfg.report_to)  # a typo fails before any cell
    code_version()  # the commit checked out now, when the code is loaded, not when the first cell is written
    return Study(cfg, options).run()
