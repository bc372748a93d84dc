"""One baseline job: select from a pool at a budget, write `selection.json`, and optionally
train the target model on the selection at matched update steps (`raise-select baseline`;
the study calls `run_baseline` for every method but RAISE). Online methods (`greats`, `rho`)
choose each batch with the model being trained, so their selection is a training run: the
model is always trained and saved to `<out>/model`, and `selection.json` records the batches.

A rerun into the same `--out` reuses the selection, and the trained model, only when what
decides them is the same: the settings and the contents of the pool, features, target model
and validation set (digests, not paths), and, for the model, the saved folder as it was written
(`train_done.json` records its digest: a deleted or replaced model is trained again)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..config import check_fields, command_line, parse_overrides, read_yaml
from ..errors import UserError
from ..io import fingerprint, path_digest, write_json_atomic
from ..training.loop import LMConfig
from ..training.publish import PUBLISH_FORMATS
from ..training.reporting import Reporter, parse_report_to
from .base import SelectionContext, budget_count, matched_batches, matched_steps
from .registry import get_baseline_class, make_baseline

log = logging.getLogger(__name__)


@dataclass
class BaselineConfig(LMConfig):
    """A baseline job; the LLM training settings are those of `LMConfig`. Method options
    live in a section named after the method (`deita: {threshold: 0.85}`, `--set deita.threshold=0.85`)."""

    method: str = field(
        default="",
        metadata={
            "help": "selection method: full, random, ifd, deita, alpagasus, sspl, less, rose, rds, embed, tsds, "
            "greats, rho"
        },
    )
    pool: str = field(default="", metadata={"help": "instruction pool: file, folder or `datasets` name"})
    format: Optional[str] = field(
        default=None, metadata={"help": "pool format (alpaca, sharegpt, messages); None: detected"}
    )
    limit: Optional[int] = field(default=None, metadata={"help": "use only the first N pool examples"})
    features: str = field(
        default="",
        metadata={
            "help": "featurize output folder of this pool (ifd, sspl's default loss, rds: featurize --rds, "
            "deita's default embeddings); methods that do not read it ignore it"
        },
    )
    model: str = field(
        default="",
        metadata={
            "help": "target LLM: hub id or folder (trained with --train; less, rose, sspl loss=target; "
            "greats and rho train it while choosing)"
        },
    )
    val: str = field(
        default="",
        metadata={
            "help": "validation set for less, rose, rds, embed, tsds, greats, rho: a named set (gsm8k, ...) or a pool "
            "file/folder; one example is enough, except for rho and rose's stand-in preference set, which need 2; "
            "an empty one is refused"
        },
    )
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "folder of the named validation sets' original files"}
    )
    val_size: Optional[int] = field(default=None, metadata={"help": "use at most this many validation examples"})
    out: str = field(default="", metadata={"help": "output folder: selection.json, cache/, model/, baseline.log"})
    cache: str = field(
        default="",
        metadata={
            "help": "folder of the resumable caches (judgments, scores, LESS/ROSE pool gradients); default "
            "<out>/cache. "
            "Runs on the same pool and model may share one: entries are keyed by what decides them"
        },
    )
    budget: float = field(default=0.01, metadata={"help": "fraction of the pool (< 1) or number of examples (>= 1)"})
    batch_size: int = field(default=8, metadata={"help": "training batch size B"})
    epochs: int = field(default=3, metadata={"help": "static subsets are trained this many epochs (paper section 4.2)"})
    steps: Optional[int] = field(
        default=None, metadata={"help": "update steps (>= 1); None: ceil(epochs x budget / B), matched across methods"}
    )
    train: bool = field(
        default=False,
        metadata={
            "help": "also train the target model on the selection and save it to out/model "
            "(greats, rho: always trained)"
        },
    )
    device: Optional[str] = field(
        default=None, metadata={"help": "torch device of the selection passes; None: cuda when available"}
    )
    export: Optional[str] = field(
        default=None,
        metadata={
            "help": "also write the chosen rows to this folder to publish: a `datasets` folder (save_to_disk) with a "
            "dataset card README.md and scores.parquet (every pool row's score or choice counts)"
        },
    )
    export_format: Optional[str] = field(
        default=None,
        metadata={
            "help": "format of `export`: alpaca, sharegpt, messages (default: the pool's) "
            "or llamafactory (data.json + dataset_info.json)"
        },
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "training's step loss also to: none, tensorboard (<out>/tensorboard), wandb (<out>/wandb), all, "
            "or a comma-separated list"
        },
    )

    def check(self) -> None:
        super().check()
        check_fields(
            self,
            [
                (self.batch_size >= 1, "batch_size", "must be >= 1"),
                (self.epochs >= 1, "epochs", "must be >= 1"),
                (self.steps is None or self.steps >= 1, "steps", "must be >= 1; leave it unset for the matched count"),
                (self.limit is None or self.limit >= 1, "limit", "must be >= 1"),
                (self.val_size is None or self.val_size >= 1, "val_size", "must be >= 1"),
            ],
            "baseline",
        )


def method_options(method: str, config_path: str | Path | None, overrides: list[str] | None) -> dict:
    """The method's own section of the YAML file, then `--set <method>.<key>=value` overrides."""
    options: dict = {}
    for source, section in (
        (config_path, read_yaml(config_path).get(method) if config_path is not None else None),
        ("--set", parse_overrides(overrides).get(method)),
    ):
        if section is not None and not isinstance(section, dict):
            raise UserError(
                f"{source}: section '{method}' holds the method's options as a mapping (option: value), got {section!r}"
            )
        options.update(section or {})
    return options


def _features_key(features: str) -> str:
    """The features folder by its contents (table and meta.json), so a re-featurized folder, or a
    table rewritten in place, invalidates an earlier selection."""
    from ..training.runs import features_digest

    return f"{features}:{features_digest(features)}" if features else ""


def _model_key(model: str) -> str:
    """What a selection or a training run depends on of the target model: its files' contents
    (or a hub id with its cached revision), not its path: a model rebuilt at the same path is
    another model."""
    from ..features.featurize import model_fingerprint

    return model_fingerprint(model) if model else ""


def _model_digest(model_dir: Path) -> str | None:
    """The content digest of a saved model folder, or None when there is none (deleted, emptied)."""
    if not model_dir.is_dir() or not any(p.is_file() for p in model_dir.iterdir()):
        return None
    return path_digest(model_dir)


def run_baseline(cfg: BaselineConfig, options: dict | None = None) -> dict:
    """Select (or reuse an identical earlier selection), write `selection.json`, train if asked.
    Returns the written selection record."""
    from ..data.overlap import warn_shared_rows
    from ..data.pools import load_pool
    from ..data.validation import load_validation
    from ..training.episode import lm_config

    missing = [f"--{n}" for n in ("method", "pool", "out") if not getattr(cfg, n)]
    if missing:
        raise UserError(f"missing required setting(s): {', '.join(missing)}")
    cls = get_baseline_class(cfg.method)
    method = make_baseline(cfg.method, options)
    if cfg.train and not cfg.model:
        raise UserError("--train needs the target model: pass --model")
    # Online methods choose each batch with the model being trained: selecting is training.
    online = getattr(cls, "online", False)
    if online and not cfg.model:
        raise UserError(f"method '{cfg.method}' chooses every batch with the model being trained: pass --model")
    targets = parse_report_to(cfg.report_to)
    if cfg.export_format is not None and cfg.export_format not in PUBLISH_FORMATS:
        raise UserError(f"--export-format {cfg.export_format}: unknown; available: {', '.join(PUBLISH_FORMATS)}")
    out = Path(cfg.out)
    pool = load_pool(cfg.pool, fmt=cfg.format, limit=cfg.limit)
    k = budget_count(cfg.budget, len(pool))
    # A method that does not read the features is handed none, and a re-featurized pool keeps its selection.
    features = cfg.features if method.needs_features() else ""
    if cfg.features and not features:
        log.info("method '%s' with these options does not read the features; %s is not used", cfg.method, cfg.features)
    # The validation set and the model by what they hold (a file rewritten at the same path, a model
    # rebuilt there, select and train again); the paths stay in for what the record says.
    validation = load_validation(cfg.val, cfg.data_dir, n=cfg.val_size, seed=cfg.seed) if cfg.val else None
    if validation is not None:
        warn_shared_rows(pool, validation, f"--val {cfg.val}")
    key = fingerprint(
        {
            "method": cfg.method,
            "options": asdict(method),
            "pool": pool.fingerprint,
            "budget": k,
            "features": _features_key(features),
            "model": cfg.model,
            "model_contents": _model_key(cfg.model),
            "val": cfg.val,
            "val_contents": None if validation is None else [e.id for e in validation],
            "val_size": cfg.val_size,
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "epochs": cfg.epochs,
            "steps": cfg.steps,
            "template": cfg.template,
            "max_length": cfg.max_length,
            **({"lm": asdict(lm_config(cfg)), "data_dir": cfg.data_dir} if online else {}),
        }
    )
    sel_path = out / "selection.json"
    record = _earlier_selection(sel_path)
    report = Reporter(out, targets, asdict(cfg)) if targets else None  # the training steps' loss
    try:
        record = _select_and_train(
            cfg, method, cls, online, pool, k, key, sel_path, record, report, features, validation
        )
    finally:
        if report is not None:
            report.close()
    if cfg.export:
        from ..training.publish import from_baseline, publish

        given = options or {}  # the method's options as given (`--set`); its defaults are in the card's settings
        publish(
            pool,
            from_baseline(pool, record, str(sel_path)),
            cfg.export,
            command_line("baseline", cfg, {cfg.method: given} if given else None),
            cfg.export_format,
            cfg.features,
        )
        log.info("%s: the selection, its card and scores.parquet", cfg.export)
    return record


def _select_and_train(
    cfg: BaselineConfig,
    method,
    cls,
    online: bool,
    pool,
    k: int,
    key: str,
    sel_path: Path,
    record: dict | None,
    report: Reporter | None,
    features: str,
    validation,
) -> dict:
    from ..features.table import FeatureTable
    from ..training.episode import lm_config

    out = sel_path.parent
    model_dir = out / "model"
    # An online selection is a training run: reused only with the model it trained, as it was saved.
    if (
        record is not None
        and record.get("fingerprint") == key
        and (
            not online
            or (record.get("model_digest") is not None and _model_digest(model_dir) == record["model_digest"])
        )
    ):
        log.info("%s: same settings as before; reusing the selection", sel_path)
    else:
        ctx = SelectionContext(
            features=FeatureTable.read(features).align(pool.ids) if features else None,
            model=cfg.model or None,
            validation=validation,
            seed=cfg.seed,
            out_dir=out,
            cache_dir=Path(cfg.cache) if cfg.cache else None,
            template=cfg.template,
            max_length=cfg.max_length,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            steps=cfg.steps,
            device=cfg.device,
            data_dir=cfg.data_dir,
            lm=lm_config(cfg) if online else None,
            report=report,
        )
        started = time.perf_counter()
        sel = method.select(pool, k, ctx)
        select_seconds = time.perf_counter() - started
        # Static subsets train `epochs` passes over the budget (the whole pool for `full`);
        # schedules say their own step count.
        steps = (
            sel.info.get("steps")
            if cls.dynamic
            else cfg.steps or matched_steps(max(k, len(sel.indices)), cfg.batch_size, cfg.epochs)
        )
        record = {
            "method": cfg.method,
            "options": asdict(method),
            "dynamic": cls.dynamic,
            "budget": cfg.budget,
            "budget_count": k,
            "pool_size": len(pool),
            "batch_size": cfg.batch_size,
            "steps": steps,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "indices": sel.indices,
            "ids": [pool.examples[i].id for i in sel.indices],
            "scores": sel.scores,
            "info": sel.info,
            "pool_scores": sel.pool_scores,
            "pool": cfg.pool,
            "pool_format": pool.format,
            "limit": cfg.limit,
            "features": cfg.features,
            "fingerprint": key,
            "pool_fingerprint": pool.fingerprint,
            "select_seconds": round(select_seconds, 2),  # this run's (a pass resumed from a cache: its rest)
            **({"model_digest": _model_digest(model_dir)} if online else {}),  # the model it trained
        }
        write_json_atomic(sel_path, record)
        log.info("%s: %d rows selected (%s)", sel_path, len(sel.indices), json.dumps(sel.info, default=str)[:500])
    if cfg.train:
        from ..training.loop import train_on_schedule
        from .base import Selection

        done = out / "train_done.json"
        # Reused only when the model it records is there as it was saved (not deleted, not replaced).
        if _trained(done, key, model_dir):
            log.info("%s: already trained with these settings", model_dir)
        else:
            if not online:  # an online method trained it while selecting
                batches = matched_batches(
                    Selection(record["indices"]), cfg.batch_size, record["steps"], cfg.seed, cls.dynamic
                )
                train_on_schedule(cfg.model, pool, batches, lm_config(cfg), model_dir, record["steps"], report)
            write_json_atomic(
                done,
                {
                    "fingerprint": key,
                    "steps": record["steps"],
                    "model": str(model_dir),
                    "model_digest": _model_digest(model_dir),
                },
            )
    return record


def _earlier_selection(sel_path: Path) -> dict | None:
    """The selection record an earlier run wrote, or None (none, or damaged: selected again)."""
    if not sel_path.is_file():
        return None
    try:
        record = json.loads(sel_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict):
        log.warning("%s: damaged; selecting again", sel_path)
        return None
    return record


def _trained(done: Path, key: str, model_dir: Path) -> bool:
    """`train_done.json` records a training run of these settings (`key`) whose model is in
    `model_dir` with the contents it was saved with."""
    try:
        record = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: damaged; training again", done)
        return False
    if not isinstance(record, dict) or record.get("fingerprint") != key or not record.get("model_digest"):
        return False
    if _model_digest(model_dir) != record["model_digest"]:
        log.info("%s: not the model trained with these settings (deleted or changed since); training again", model_dir)
        return False
    return True
