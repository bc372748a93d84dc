"""The study's inputs (`experiments.study.Study` inherits `StudyInputs`): the pool, the base model,
the matched step count T, per target its validation sample and held-out items, the options of
each method, and the content digests of those inputs that a cell's key is made of.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import merge
from ..data.pools import load_pool, subsample_to_file, to_format
from ..data.validation import load_validation
from ..io import write_text_atomic
from ..models.tiny import PRESETS, build_tiny_model
from ..registry import unknown_name
from .cells import content_digest, examples_digest, model_digest
from .methods import METHODS
from .plan import RAISE, TARGETS, matched_step_count, substitute_model

log = logging.getLogger(__name__)

_INPUTS = ("pool", "pool_spec", "model", "steps", "val_files", "heldout")


class StudyInputs:
    """What a study reads before its cells. A mixin of `Study`: it reads the study's `cfg`, `out`,
    `options`, `_digests`, `check_overlap`, `heldout_items` and `_loss_examples`."""

    def __getattr__(self, name: str):
        # The pool, the base model, T and the targets are read by `prepare`: a cell run before it
        # (or a method asking for them) reads them on first use instead of failing.
        if name in _INPUTS:
            self.prepare()
            return self.__dict__[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

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
        if entry.runs != RAISE:  # a baseline preset: its method's section, the preset's options, its own section
            opts = {}
            for part in ((self.options.get(entry.baseline, {}) if entry.baseline else {}), entry.options):
                merge(opts, json.loads(json.dumps(part)))
            return merge(opts, json.loads(json.dumps(self.options.get(method, {}))))
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
