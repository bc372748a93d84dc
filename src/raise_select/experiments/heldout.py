"""The study's held-out sets and their evaluation (`experiments.study.Study` inherits `HeldoutSets`).

Per target a seeded sample of its `heldout_split` (`<target>:dev` or `:test`, `heldout_size`
items) whose per-item figures every cell reports (the target's metric, `evaluation.loss`), and
the `loss_set`'s mean response loss; each evaluation of a cell is kept in its record under its
own key (`eval_key`), so a finished evaluation is never recomputed. Before any cell trains,
`check_overlap` refuses a held-out set that shares items with a validation set a method reads.
"""

from __future__ import annotations

import logging

from ..data.benchmarks import NAMED_SETS
from ..data.overlap import shared_items, warn_shared_rows
from ..data.validation import load_validation
from ..errors import UserError
from ..evaluation.loss import default_metric, heldout_values, response_loss
from ..io import fingerprint
from .cells import Unfinished, evaluation
from .methods import METHODS
from .plan import Cell, heldout_size_of
from .provenance import code_version

log = logging.getLogger(__name__)


class HeldoutSets:
    """The held-out sets of a study and every evaluation of a cell. A mixin of `Study`: it reads
    the study's `cfg`, `pool`, `heldout`, `store`, `digest`, `model_path` and `_evaluate_tasks`."""

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
                done = {"key": key, "scores": self._evaluate_tasks(cell, model)}
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
