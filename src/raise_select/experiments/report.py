"""The study's tables, written from its cells' records once they are computed (`experiments.study.Study`
inherits `StudyTables`).

With `tasks`: the Table 1 layout (`reports.tables`), the per-method costs (`reports.method_stats`)
and the plot. With `targets`: the gain table on the held-out split (`reports.study`: gains with
95% intervals, Φ, the paired differences of RAISE's rows against the best static selector chosen
on the DEV split and against their untrained initialisation), what each row's seeds vary, the
cells' provenance, as `study_gains.{md,json}` and the split's own copy `study_gains_<split>.*`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..io import write_json_atomic, write_text_atomic
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
from .cells import evaluation
from .costs import phi_from_runs
from .methods import METHODS
from .plan import RAISE, seeds_of
from .provenance import code_versions, provenance_markdown


class StudyTables:
    """What a study writes after its cells are computed. A mixin of `Study`: it reads the study's
    `cfg`, `out`, `pool`, `model`, `steps`, `heldout`, `store`, `features_seconds`, `reads_features`,
    `model_path`, `eval_name`, `eval_key` and `heldout_items`."""

    def write_tables(self, records: list[dict], failed: dict[str, str]) -> dict:
        """The tables of the finished cells' `records` (`failed`: the cells that failed, with why):
        `study_table.{md,csv,json}`, `study_methods.md` and `study_plot.png` with `tasks`;
        `study_gains.{md,json}` and `study_gains_<split>.{md,json}` with `targets`. Returns the
        table, the gain rows, the written paths, Φ, the markdown and the paired differences."""
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
            notes = [*notes, self.seed_note(list(gains)), *self.cache_note(list(gains)), provenance_markdown(records)]
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
        return {
            "table": table,
            "gains": gains,
            "paths": paths,
            "phi": phi,
            "markdown": "\n".join(parts),
            "differences": diffs if self.cfg.targets else None,
        }

    # ---------------------------------------------------------------- the gain table's parts

    def rows(self, records: list[dict]) -> list[tuple[str, dict[str, float]]]:
        """Per row label the task scores; rows with several cells (RAND's seeds) are averaged."""
        grouped: dict[str, list[dict[str, float]]] = {}
        for r in records:
            grouped.setdefault(r["row"], []).append(r["scores"])
        return [
            (label, {t: sum(s[t] for s in group) / len(group) for t in self.cfg.tasks})
            for label, group in grouped.items()
        ]

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
        return [
            m
            for m in methods
            if METHODS[m].runs != RAISE
            and not METHODS[m].online
            and not METHODS[m].dynamic
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

    @staticmethod
    def cache_note(methods: list[str]) -> list[str]:
        """What the counted Φ of rows sharing a pool-gradient cache leaves out (none: no such row)."""
        shared = [METHODS[m].label for m in methods if METHODS[m].shared_cache]
        if not shared:
            return []
        return [
            f"{', '.join(shared)}: one pool-gradient pass per seed (a forward and backward pass over the pool at "
            "each warm-up checkpoint, about 1 Φ) is shared by every target and by these rows; its passes are "
            "counted in the cell that computed it (the first target's column of the row that ran first), and a "
            "cell that read it from the cache counts only its own: add about 1 Φ to a row whose cells all read it."
        ]

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
            elif entry.runs_as in ("less", "rose"):
                what = "the LoRA warm-up (its initialisation, rows and order; the projection is fixed) and the training"
            elif entry.online:
                what = "the training's initialisation and order, which the online choice follows"
            else:
                what = "the training's initialisation and order only (the selection is deterministic given its inputs)"
            groups.setdefault(what, []).append(f"{entry.label} {len(seeds) if seeds is not None else 1}")
        return "Seeds per row and what they vary: " + "; ".join(f"{', '.join(g)}: {w}" for w, g in groups.items()) + "."
