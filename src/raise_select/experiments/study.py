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

import numpy as np

from ..baselines.run import BaselineConfig, run_baseline
from ..config import from_dict, merge
from ..data.benchmarks import NAMED_SETS
from ..data.overlap import shared_items, warn_shared_rows
from ..data.pools import load_pool, subsample_to_file, to_format
from ..data.validation import load_validation
from ..errors import UserError
from ..evaluation.evaluate import EvaluateConfig, evaluate
from ..evaluation.loss import default_metric, heldout_values, response_loss
from ..features.featurize import FeaturizeConfig, featurize
from ..io import fingerprint, write_json_atomic, write_text_atomic
from ..logs import setup_logging
from ..models.loading import load_model_and_tokenizer
from ..models.tiny import PRESETS, build_tiny_model
from ..progress import progress_bar
from ..registry import unknown_name
from ..reports.method_stats import chosen_ids, method_stats, stats_markdown
from ..reports.plots import plot_study
from ..reports.study import (
    differences_markdown,
    figures,
    gain_markdown,
    gain_rows,
    item_gains,
    paired_differences,
)
from ..reports.tables import build_table, write_table
from ..training.finetune import train_and_finetune
from ..training.reporting import parse_report_to
from ..training.train_policy import TrainPolicyConfig
from .cells import CellStore, Unfinished, content_digest, evaluation, examples_digest, model_digest, options_digest
from .costs import PassCounter, flop_parameters, phi_from_runs, pool_tokens, record_costs
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
from .provenance import code_version, code_versions, provenance, provenance_markdown

log = logging.getLogger(__name__)

_INPUTS = ("pool", "pool_spec", "model", "steps", "val_files", "heldout")


class Study:
    """Runs the cells of one study folder and writes its tables."""

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

    def __getattr__(self, name: str):
        # The pool, the base model, T and the targets are read by `prepare`: a cell run before it
        # (or a method asking for them) reads them on first use instead of failing.
        if name in _INPUTS:
            self.prepare()
            return self.__dict__[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    # ---------------------------------------------------------------- inputs

    def prepare(self) -> None:
        """The pool (a seeded subsample written to <out>/pool.jsonl when asked), the base model,
        and per target its validation file and held-out rows."""
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
        self.val_files, self.heldout = {}, {}
        validations: dict[str, list] = {}
        for t in cfg.targets:
            val = load_validation(t, cfg.data_dir, n=cfg.val_size, seed=cfg.seed, split=TARGETS[t])
            path = self.out / "targets" / f"{t}_validation.jsonl"
            text = "".join(json.dumps(to_format(e, "messages")) + "\n" for e in val)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_text_atomic(path, text)
            self.val_files[t] = str(path)
            self.heldout[t] = self.heldout_items(t, cfg.heldout_split)
            validations[t] = val
        self.check_overlap(validations)
        log.info(
            "pool %s: %d examples; base model %s; %d matched update steps of %d%s",
            self.pool_spec,
            len(pool),
            self.model,
            self.steps,
            cfg.batch_size,
            f"; targets {', '.join(cfg.targets)}" if cfg.targets else "",
        )

    def check_overlap(self, validations: dict[str, list]) -> None:
        """Before any cell trains, when a method of the study reads a validation set (per target
        its sample in `validations`, else `val`): warn when its rows are also pool rows
        (`data.overlap.warn_shared_rows`), and refuse a held-out set (the target's `heldout_split`
        items, the `loss_set`) that shares items with it, naming the target: a figure measured on
        the rows the targeted methods were steered towards is not held-out."""
        cfg = self.cfg
        if not any(METHODS[m].reads_validation for m in cfg.methods):
            return  # no cell reads a validation set: nothing was steered towards it
        if not cfg.targets:
            validations = {"": load_validation(cfg.val, cfg.data_dir, n=cfg.val_size, seed=cfg.seed)}
        loss = self._loss_examples() if cfg.loss_set else None
        loss_name = f"loss_set {cfg.loss_set}" + (f" ({cfg.loss_split} split)" if cfg.loss_set in NAMED_SETS else "")
        for t, val in validations.items():
            what = f"target {t}'s validation sample" if t else f"the validation set val={cfg.val}"
            warn_shared_rows(self.pool, val, f"study: {what}")
            held = [(loss_name, loss)] if loss is not None else []
            if t:
                held.insert(0, (f"held-out set {self.eval_name(t)}", self.heldout[t]))
            for name, items in held:
                shared = shared_items(val, items)
                if shared:
                    raise UserError(
                        f"study: target {t or cfg.val}: the {name} shares {len(shared)} of its {len(items)} items "
                        f"with {what} (first id {shared[0].id}), so its figure would not be held-out; "
                        "give held-out items apart from the validation rows"
                    )

    def metric_of(self, target: str) -> str:
        """The held-out metric of `target`: `metric`, `auto` resolved by `evaluation.loss.default_metric`."""
        return default_metric(target) if self.cfg.metric == "auto" else self.cfg.metric

    def heldout_items(self, target: str, split: str) -> list:
        """The held-out items of `target` on `split` (`<target>:dev` or `:test`, `heldout_size` of
        them, a seeded sample), read once per process."""
        if (target, split) not in self._heldout_sets:
            cfg = self.cfg
            n = heldout_size_of(cfg, target)
            self._heldout_sets[target, split] = load_validation(f"{target}:{split}", cfg.data_dir, n=n, seed=cfg.seed)
        return self._heldout_sets[target, split]

    def eval_name(self, target: str, split: str | None = None) -> str:
        """The name of a target's held-out evaluation in a cell record: `<target>:<split>`."""
        return f"{target}:{split or self.cfg.heldout_split}"

    def _build_model(self) -> Path:
        if self.cfg.build_model not in PRESETS:
            raise unknown_name("build_model preset", self.cfg.build_model, PRESETS, "study")
        path = self.out / "base_model"
        if not (path / "config.json").is_file():
            texts = ["\n".join(c for _, c in e.messages) for e in self.pool.examples[:20000]]
            build_tiny_model(path, texts, preset=self.cfg.build_model, seed=self.cfg.seed)
        return path

    def digest(self, what: str) -> str:
        """Content digests of the study's inputs, computed once per process: `model`, `aux_model`,
        `val:<target or ''>`, `heldout:<target>`, `loss_set`."""
        if what not in self._digests:
            cfg = self.cfg
            if what == "model":
                value = model_digest(self.model)
            elif what == "aux_model":
                value = model_digest(cfg.aux_model) if cfg.aux_model else self.digest("model")
            elif what.startswith("val:"):
                target = what[4:]
                if target:
                    value = content_digest(self.val_files[target])
                else:
                    examples = load_validation(cfg.val, cfg.data_dir, n=cfg.val_size, seed=cfg.seed)
                    value = examples_digest(examples)
            elif what.startswith("heldout:"):
                target, _, split = what[8:].partition(":")
                value = examples_digest(self.heldout_items(target, split or self.cfg.heldout_split))
            elif what == "loss_set":
                value = examples_digest(self._loss_examples())
            else:
                raise KeyError(what)
            self._digests[what] = value
        return self._digests[what]

    def method_options(self, method: str) -> dict:
        """The method's options as configured (for a RAISE preset: the `raise:` section, the
        preset's settings, then its own section), `{model}` not yet replaced."""
        entry = METHODS[method]
        if entry.runs != RAISE:
            return dict(self.options.get(method, {}))
        opts: dict = merge({}, self.options.get(RAISE, {}))
        preset = {**entry.episode, **({"policy": dict(entry.policy)} if entry.policy else {})}
        merge(opts, json.loads(json.dumps(preset)))
        if method != RAISE:
            merge(opts, json.loads(json.dumps(self.options.get(method, {}))))
        return opts

    def reads_features(self, method: str | None) -> bool:
        """Whether a cell of `method` reads the featurized pool (the method's entry says)."""
        if method is None:
            return False
        return METHODS[method].needs_features(substitute_model(self.method_options(method), self.model))

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
            "settings": {k: v for k, v in cfg.items() if k not in skip},
        }
        if entry.reads_validation:
            key["validation"] = self.digest(f"val:{cell.target or ''}")
        if reads:
            key["features_model"] = self.digest("aux_model")
        if entry.prior_from:
            key["prior"] = self.cell_key(self._prior_cell(cell))
        return fingerprint(key)

    def eval_key(self, cell_key: str, what: str) -> str:
        """The key of one evaluation of a cell: lm-eval's `tasks`, the `loss_set`, or a target's held-out losses."""
        cfg = self.cfg
        if what == "tasks":
            settings = {
                k: getattr(cfg, k) for k in ("tasks", "eval_limit", "num_fewshot", "max_gen_toks", "max_length")
            }
        elif what == "loss_set":
            settings = {"loss": self.digest("loss_set"), "max_length": cfg.max_length, "template": cfg.template}
        else:  # `<target>:<split>`: the held-out items' contents, the split, the metric
            target, _, split = what.partition(":")
            settings = {
                "heldout": self.digest(f"heldout:{target}:{split}"),
                "split": split,
                "metric": self.metric_of(target),
                "max_length": cfg.max_length,
                "template": cfg.template,
            }
        return fingerprint({"cell": cell_key, **settings})

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
                "method": cell.method,
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

    def _evaluate_cell(self, cell: Cell, record: dict) -> None:
        """Every evaluation the study asks of the cell, each kept under its own key."""
        cfg = self.cfg
        targets = {self.eval_name(t): t for t in cfg.targets if cell.target in (None, t)}
        wanted = list(targets)
        if cfg.tasks:
            wanted.append("tasks")
        if cfg.loss_set:
            wanted.append("loss_set")
        for what in wanted:
            key = self.eval_key(record["key"], what)
            size = len(self.heldout[targets[what]]) if what in targets else None
            done = evaluation(record, what, key, size)
            if done is not None and (what != "tasks" or set(cfg.tasks) <= set(done.get("scores") or {})):
                continue
            if self.store.report_only:
                raise Unfinished(f"{cell.name} on {what}")
            log.info("cell %s: evaluating on %s", cell.name, what)
            model = self.model_path(record)
            if what == "tasks":
                scores = evaluate(
                    EvaluateConfig(
                        **job_settings(cfg, "evaluate"), model=model, out=str(self.store.dir(cell.name) / "eval")
                    )
                )
                done = {"key": key, "scores": {t: s["score"] for t, s in scores.items()}}
            elif what == "loss_set":
                done = {"key": key, "loss": self._loss(model)}
            else:
                done = {"key": key, **self._heldout_figures(model, targets[what])}
            done["code"] = code_version()
            record.setdefault("evals", {})[what] = done
            self.store.save(cell.name, record)
        derived = {
            "scores": record["evals"]["tasks"]["scores"] if cfg.tasks else record.get("scores"),
            "loss": record["evals"]["loss_set"]["loss"] if cfg.loss_set else None,
        }
        if any(record.get(k) != v for k, v in derived.items()) and not self.store.report_only:
            record.update(derived)
            self.store.save(cell.name, record)
        record.update(derived)

    def _heldout_figures(self, model: str, target: str) -> dict:
        """Per held-out item the target's metric (`values`); with a choice metric the item's
        accuracy too (`acc`, from the same choice scoring)."""
        cfg = self.cfg
        metric, items = self.metric_of(target), self.heldout[target]
        out = {"split": cfg.heldout_split, "metric": metric, "items": len(items)}
        if metric.startswith("choice_"):
            from ..evaluation.choices import score_choices

            scores = score_choices(
                model,
                items,
                batch_size=cfg.eval_batch_size,
                max_length=cfg.max_length,
                dtype=cfg.dtype,
                device=cfg.device,
            )
            values = scores.ce if metric == "choice_ce" else scores.acc
            out["acc"] = [float(x) for x in scores.acc]
        else:
            values = heldout_values(
                model,
                items,
                metric,
                template=cfg.template,
                max_length=cfg.max_length,
                batch_size=cfg.eval_batch_size,
                dtype=cfg.dtype,
                device=cfg.device,
            )
        out["values"] = [round(float(x), 6) for x in values]
        return out

    def _loss_examples(self):
        cfg = self.cfg
        return load_validation(cfg.loss_set, cfg.data_dir, n=cfg.loss_size, seed=cfg.seed, split=cfg.loss_split)

    def _loss(self, model: str) -> float:
        """Mean response loss on `loss_set` (e.g. GSM8K test solutions)."""
        cfg = self.cfg
        return response_loss(
            model,
            self._loss_examples(),
            template=cfg.template,
            max_length=cfg.max_length,
            batch_size=cfg.eval_batch_size,
            dtype=cfg.dtype,
            device=cfg.device,
        )

    # ---------------------------------------------------------------- tables

    def rows(self, records: list[dict]) -> list[tuple[str, dict[str, float]]]:
        """Per row label the task scores; rows with several cells (RAND's seeds) are averaged."""
        grouped: dict[str, list[dict[str, float]]] = {}
        for r in records:
            grouped.setdefault(r["row"], []).append(r["scores"])
        return [
            (label, {t: sum(s[t] for s in group) / len(group) for t in self.cfg.tasks})
            for label, group in grouped.items()
        ]

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
        """Every cell, then the tables: `study_table.{md,csv,json}`, `study_methods.md` and
        `study_plot.png` with `tasks`; `study_gains.{md,json}` with `targets` (and the same as
        `study_gains_<split>.{md,json}`, so the dev table stays beside the test table)."""
        self.prepare()
        if not self.cfg.report_only:
            write_json_atomic(self.out / "study_config.json", asdict(self.cfg))
        records, failed = self.records()
        feat_seconds = self.features_seconds()
        readers = {r["method"] for r in records if self.reads_features(r["method"])}
        full = [r for r in records if r["method"] == "full"]
        rand = [r for r in records if r["method"] == "random"]
        phi, phi_from = phi_from_runs(full, rand, len(self.pool), self.cfg.batch_size)
        paths, parts, extra = {}, [], {}
        notes = [f"{n} failed: {e}" for n, e in failed.items()]
        if self.cfg.tasks:
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
                    r["name"]: {
                        **{k: r.get(k) for k in ("row", "method", "seed", "target", "scores", "steps")},
                        "model": self.model_path(r),
                    }
                    for r in records
                },
                "failed": failed,
            }
            stats = method_stats(records, self.out / "cells", self.pool, self.cfg.batch_size, feat_seconds, readers)
            extra["method_stats"] = stats
            loss_name = f"{self.cfg.loss_set} {self.cfg.loss_split}" if self.cfg.loss_set else None
            paths = write_table(self.out, table, self.cfg.tasks, extra, notes=notes)
            paths["methods_md"] = self.out / "study_methods.md"
            write_text_atomic(paths["methods_md"], stats_markdown(stats, loss_name))
            paths["png"] = plot_study(
                table,
                self.cfg.tasks,
                self.out / "study_plot.png",
                title=f"{Path(self.model).name}, budget {self.cfg.budget}, {self.steps} steps",
            )
            parts += [paths["md"].read_text(encoding="utf-8"), paths["methods_md"].read_text(encoding="utf-8")]
        else:
            table = None
        gains = None
        if self.cfg.targets:
            for r in records:
                self._attach_heldout(r)
            base = next((r for r in records if r["method"] is None), None)
            base_losses = {t: base["heldout"][t] for t in self.cfg.targets}
            labels = {r["method"]: r["row"] for r in records if r["method"]}
            gains = gain_rows(records, base_losses, self.cfg.targets, self.cfg.seed, phi, feat_seconds, readers, labels)
            best, static_note = self.best_static(records, list(gains))
            raise_rows = [m for m in gains if METHODS[m].runs == RAISE]
            inits = {m: METHODS[m].initialisation for m in raise_rows if METHODS[m].initialisation}
            diffs = paired_differences(records, base_losses, self.cfg.targets, raise_rows, best, labels, inits)
            notes = [*notes, self.seed_note(list(gains)), provenance_markdown(records)]
            md = gain_markdown(
                gains,
                base_losses,
                self.cfg.targets,
                phi=phi,
                phi_from=phi_from,
                feat_seconds=feat_seconds,
                pool_size=len(self.pool),
                steps=self.steps,
                budget=self.cfg.budget,
                batch_size=self.cfg.batch_size,
                heldout={t: len(self.heldout[t]) for t in self.cfg.targets},
                readers=[labels.get(m, m) for m in gains if m in readers],
                notes=notes,
                split=self.cfg.heldout_split,
            )
            md += differences_markdown(diffs, self.cfg.targets, labels, static_note)
            paths["gains_md"] = self.out / "study_gains.md"
            paths["gains_json"] = self.out / "study_gains.json"
            write_text_atomic(paths["gains_md"], md)
            write_json_atomic(
                paths["gains_json"],
                {
                    "config": asdict(self.cfg),
                    "phi_seconds": phi,
                    "phi_from": phi_from,
                    "featurize_seconds": feat_seconds,
                    "heldout_split": self.cfg.heldout_split,
                    "metrics": {t: base_losses[t]["metric"] for t in self.cfg.targets},
                    "base": {t: float(sum(v["values"]) / len(v["values"])) for t, v in base_losses.items()},
                    "rows": gains,
                    "differences": diffs,
                    "best_static": best,
                    "best_static_note": static_note,
                    "code_versions": code_versions(records),
                    "failed": failed,
                },
            )
            # the split's own copy: a test run keeps the dev table it was chosen on
            split = self.cfg.heldout_split
            paths["gains_split_md"] = self.out / f"study_gains_{split}.md"
            paths["gains_split_json"] = self.out / f"study_gains_{split}.json"
            write_text_atomic(paths["gains_split_md"], md)
            write_text_atomic(paths["gains_split_json"], paths["gains_json"].read_text(encoding="utf-8"))
            parts.insert(0, md)
        log.info("cells computed this run: %s", ", ".join(self.computed) or "none (all reused)")
        return {
            "table": table,
            "gains": gains,
            "records": records,
            "paths": paths,
            "computed": list(self.computed),
            "failed": failed,
            "phi": phi,
            "markdown": "\n".join(parts),
            "differences": diffs if self.cfg.targets else None,
        }

    # ---------------------------------------------------------------- the gain table's parts

    def _attach_heldout(self, record: dict) -> None:
        """`record["heldout"][t]`: the evaluation of the reported split per target; and
        `distinct_rows`, the pool rows the cell trained on at least once."""
        record["heldout"] = {
            t: record["evals"][self.eval_name(t)]
            for t in self.cfg.targets
            if self.eval_name(t) in record.get("evals", {})
        }
        record["distinct_rows"] = self.distinct_rows(record)

    def distinct_rows(self, record: dict) -> int | None:
        """Distinct pool rows a cell trained on (its selection, or every batch of an online
        method); the 100% row: the pool, or the rows its capped steps reach; None if unknown."""
        method = record.get("method")
        if method is None:
            return 0
        if method == "full":
            n = len(self.pool)
            return min(n, self.cfg.full_steps * self.cfg.batch_size) if self.cfg.full_steps else n
        kind = "raise" if record.get("runs") == RAISE else method
        ids = chosen_ids(self.store.dir(record["name"]), kind, self.pool)
        return None if ids is None else len(set(ids))

    def static_methods(self, methods: list[str]) -> list[str]:
        """The static selectors among `methods`: baselines that choose one subset before training
        (RAND and the 100% row aside; SSPL's schedule, GREATS and RHO-LOSS are dynamic)."""
        from ..baselines import BASELINES

        return [
            m
            for m in methods
            if METHODS[m].runs != RAISE
            and not METHODS[m].online
            and not getattr(BASELINES.get(m), "dynamic", False)
            and m not in ("random", "full")
        ]

    def best_static(self, records: list[dict], methods: list[str]) -> tuple[dict[str, str | None], str]:
        """Per target the static selector with the highest mean gain on the DEV split, and a
        sentence saying so. Reporting the test split, the dev evaluations are read from the
        cells (made by an earlier run with `heldout_split: dev` and the same settings); when
        any is missing no row is chosen (never on the test items)."""
        static = self.static_methods(methods)
        if not static:
            return {t: None for t in self.cfg.targets}, "Best static selector: no static selector in the study."
        best, parts = {}, []
        for t in self.cfg.targets:
            gains, missing = {}, []
            base = next(r for r in records if r["method"] is None)
            base_dev = self._dev_figures(base, t)
            for m in static:
                cells = [r for r in records if r["method"] == m and r.get("target") in (None, t)]
                dev = [self._dev_figures(r, t) for r in cells]
                if base_dev is None or not cells or any(d is None for d in dev):
                    missing.append(m)
                    continue
                gains[m] = float(np.mean([np.mean(item_gains(base_dev, d)) for d in dev]))
            label = lambda m: METHODS[m].label  # noqa: E731
            if missing:
                best[t] = None
                parts.append(
                    f"{t}: dev results missing for {', '.join(label(m) for m in missing)}"
                    f"{' and the zero-shot cell' if base_dev is None else ''}; no best static selector chosen "
                    "(run the study with heldout_split: dev first)"
                )
            else:
                best[t] = max(gains, key=gains.get)
                parts.append(f"{t}: {label(best[t])} (dev gain {gains[best[t]]:+.4f})")
        return best, "Best static selector per target, chosen on the dev split: " + "; ".join(parts) + "."

    def _dev_figures(self, record: dict, target: str) -> dict | None:
        """The record's evaluation on `<target>:dev` under the current settings, else None."""
        name = self.eval_name(target, "dev")
        if self.cfg.heldout_split == "dev":
            return figures(record, target)
        key = self.eval_key(record["key"], name)
        done = evaluation(record, name, key, len(self.heldout_items(target, "dev")))
        if done is None:
            return None
        return {"metric": done.get("metric"), "values": done["values"], "acc": done.get("acc")}

    def seed_note(self, methods: list[str]) -> str:
        """What a row's seeds vary, per kind of method."""
        groups: dict[str, list[str]] = {}
        for m in methods:
            seeds = seeds_of(self.cfg, m)
            entry = METHODS[m]
            if m == "random":
                what = "the random subset and the training order"
            elif entry.runs == RAISE:
                what = "the policy's initialisation and PPO, the fine-tuning's sampling and order"
                if entry.prior_from:
                    what += f", and the prior (the {METHODS[entry.prior_from].label} cell of the same seed)"
            elif m in ("less", "rose"):
                what = "the LoRA warm-up (its initialisation, rows and order; the projection is fixed) and the training"
            elif entry.online:
                what = "the training's initialisation and order, which the online choice follows"
            else:
                what = "the training's initialisation and order only (the selection is deterministic given its inputs)"
            groups.setdefault(what, []).append(f"{entry.label} {len(seeds) if seeds is not None else 1}")
        return "Seeds per row and what they vary: " + "; ".join(f"{', '.join(g)}: {w}" for w, g in groups.items()) + "."


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
    parse_report_to(cfg.report_to)  # a typo fails before any cell
    return Study(cfg, options).run()
