"""The run folder of `train-policy` and `finetune`, and round checkpoints for resuming.

<out>/config.yaml              resolved config
<out>/run.log                  log
<out>/metrics.jsonl            one line per step ("kind": "step") and per round ("kind": "round")
<out>/tensorboard/, <out>/wandb/  the same scalars, with report_to (see `reporting`)
<out>/policy/                  RaisePolicy.save after every finished round
<out>/selections/round_<k>.jsonl  per-step selections of round k (train-policy)
<out>/selections.jsonl         per-step selections (finetune)
<out>/plots/*.png              P over steps per round, return over rounds
<out>/checkpoint/round_<k>/    policy + critic + optimizers + RNG states after round k
<out>/checkpoint/latest.json   the last finished round (written last: the commit point) and the
                               content digests of the inputs it was trained on (`run_inputs`)

A run is resumed only from rounds trained on the same inputs: the same settings
(`check_config`) and the same contents of the model, pool, features, validation set and
prior file (`check_inputs`; paths alone decide nothing: a model rebuilt at the same path is
another M_0). Otherwise the run is refused in one line naming what changed, and the folder is
left as it was: a finished run is never overwritten by one of other inputs.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from ..errors import UserError
from ..io import append_jsonl, atomic_path, fingerprint, path_digest, read_jsonl, write_json_atomic, write_text_atomic
from .reporting import Reporter

log = logging.getLogger(__name__)

# The episodes of uniformly random batches (train-policy's reference episode, finetune's
# --compare-random) draw from their own generator, seeded `seed + RANDOM_EPISODE_SEED_OFFSET`:
# independent of the policy's generator (seeded `seed`), and the same draws in both commands.
RANDOM_EPISODE_SEED_OFFSET = 7919


def random_episode_generator(seed: int) -> torch.Generator:
    """The generator of a random-batch episode of a run seeded `seed`."""
    return torch.Generator().manual_seed(seed + RANDOM_EPISODE_SEED_OFFSET)


def rng_state(generator: torch.Generator) -> dict:
    """Python, NumPy, torch and the selection generator's states (plain types, loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])


# What each entry of `run_inputs` is, as the flag that gives it.
INPUT_FLAGS = {
    "model": "--model",
    "pool": "--pool",
    "features": "--features",
    "validation": "--val",
    "prior_selection": "policy.prior_selection",
}


def _given(config: dict, key: str) -> str:
    """The path the job's settings give for input `key` of `run_inputs`."""
    if key == "prior_selection":
        return str((config.get("policy") or {}).get("prior_selection") or "")
    return str(config.get("val" if key == "validation" else key) or "")


def features_digest(features: str | Path) -> str:
    """The content digest of a featurize output folder: the files a feature table is read from
    (`features.parquet`, `meta.json`, and `rds.npy` where featurize --rds wrote it)."""
    folder = Path(features)
    folder = folder.parent if folder.name == "features.parquet" else folder
    names = ("features.parquet", "meta.json", "rds.npy")
    return fingerprint({name: path_digest(folder / name) for name in names if (folder / name).is_file()})


def run_inputs(model: str, pool, features: str | Path, validation, prior_selection: str | None = None) -> dict:
    """Content digests of what an episode job trains on: the target model's files (or a hub id
    with its cached revision), the pool rows (`Pool.fingerprint`), the feature table, the
    validation examples (their ids hash their text) and the prior's selection file, if any."""
    from ..features.featurize import model_fingerprint

    inputs = {
        "model": model_fingerprint(model),
        "pool": pool.fingerprint,
        "features": features_digest(features),
        "validation": fingerprint([e.id for e in validation]),
    }
    if prior_selection:
        inputs["prior_selection"] = path_digest(prior_selection)
    return inputs


_MISSING = object()


def _differs(saved: dict, now: dict, defaults: dict, key: str) -> bool:
    """Whether setting `key` of a saved config differs from the run's: a value the saved config lacks
    stands for the default (compared inside nested sections too)."""
    default = defaults.get(key, _MISSING) if isinstance(defaults, dict) else _MISSING
    if key not in saved:
        return default is _MISSING or now.get(key) != default
    old, new = saved[key], now.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
        inner = default if isinstance(default, dict) else {}
        return any(_differs(old, new, inner, k) for k in set(old) | set(new))
    return old != new


class RunFolder:
    """Writes a run's files; only the main process writes (the others get `enabled=False`)."""

    def __init__(
        self, out: str | Path, enabled: bool = True, report_to: list[str] | None = None, config: dict | None = None
    ):
        self.out = Path(out)
        self.enabled = enabled
        self.inputs: dict | None = None  # `run_inputs` of this run, recorded with every checkpoint
        self._report = None
        if enabled:
            self.out.mkdir(parents=True, exist_ok=True)
            if report_to:
                self._report = Reporter(self.out, report_to, config)

    # ------------------------------------------------------------ config

    def check_config(self, config: dict, may_differ: tuple[str, ...], defaults: dict | None = None) -> None:
        """Refuse to resume into a folder whose saved config differs in a field that changes results.

        A setting the saved config lacks (at any depth) was written by a version without it, which
        behaved as its default: with `defaults` (the job's config at its defaults) it differs only
        when the run now sets it to something else."""
        path = self.out / "config.yaml"
        if not (path.is_file() and self.latest_round() > 0):
            return
        try:
            saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: damaged ({' '.join(str(e).split())[:150]}); use a new --out") from None
        if not isinstance(saved, dict):
            raise UserError(f"{path}: damaged (not a mapping of settings); use a new --out")
        changed = sorted(
            k for k in set(saved) | set(config) if k not in may_differ and _differs(saved, config, defaults or {}, k)
        )
        if changed:
            raise UserError(
                f"{path}: this run folder holds a run with different settings ({', '.join(changed)}); "
                "use a new --out, or the same settings to resume"
            )

    def check_inputs(self, inputs: dict, config: dict) -> None:
        """Refuse to resume rounds trained on other contents of the same paths (`run_inputs`);
        `config` (the job's settings) names the paths in the message. Remembers `inputs` for the
        checkpoints this run commits."""
        self.inputs = inputs
        if self.latest_round() == 0:
            return
        latest = self._latest()
        saved = latest.get("inputs")
        path = self.out / "checkpoint" / "latest.json"
        if not isinstance(saved, dict):  # a checkpoint of an older version: nothing to compare
            log.warning("%s: records no digests of its inputs; resuming without checking them", path)
            return
        changed = [k for k in sorted(set(saved) | set(inputs)) if saved.get(k) != inputs.get(k)]
        if changed:
            names = ", ".join(f"{INPUT_FLAGS.get(k, k)} {_given(config, k)}".strip() for k in changed)
            raise UserError(
                f"{self.out}: holds {latest['rounds_done']} round(s) trained on other inputs: the contents of "
                f"{names} changed since (same path, other files); resuming would mix rounds of both; use a new "
                f"--out (or delete {self.out} to train on these inputs there)"
            )

    def write_config(self, config: dict) -> None:
        if self.enabled:
            write_text_atomic(self.out / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    # ------------------------------------------------------------ metrics and selections

    def metric(self, record: dict) -> None:
        if not self.enabled:
            return
        append_jsonl(self.out / "metrics.jsonl", record)
        if self._report is not None:
            if record["kind"] == "step":
                x = record["round"] * record["steps"] + record["step"]
                self._report.log(
                    "step", {k: record[k] for k in ("P", "reward", "loss") if record.get(k) is not None}, x
                )
            else:  # a round, or a record of its own kind (the reference episode, finetune's summary) at 0
                family = "round" if "round" in record else record["kind"]
                self._report.log(
                    family,
                    {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("round", "kind")},
                    record.get("round", 0),
                )

    def read_metrics(self) -> list[dict]:
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return []
        # a last line cut short by a crash mid-write is dropped: its round is redone anyway
        return read_jsonl(path, what="metrics log", advice=", use a new --out")

    def truncate_metrics(self, rounds_done: int) -> None:
        """Drop lines of a round that did not finish (a crash mid-round), keeping finished rounds."""
        if not self.enabled:
            return
        kept = [r for r in self.read_metrics() if r.get("round", 0) < rounds_done]
        write_text_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    def start_over(self) -> None:
        """A run with no finished round starts over: metrics and round logs left by an attempt killed
        before its first checkpoint are dropped (its reference episode and round 0 are done again)."""
        if not self.enabled:
            return
        if (self.out / "metrics.jsonl").exists():
            self.truncate_metrics(0)
        shutil.rmtree(self.out / "selections", ignore_errors=True)

    def selection_writer(self, name: str) -> Callable[[dict], None]:
        """A fresh selections file (an unfinished earlier attempt is replaced); returns the line writer."""
        path = self.out / name
        if self.enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("", encoding="utf-8")
        return lambda record: append_jsonl(path, record) if self.enabled else None

    # ------------------------------------------------------------ checkpoints

    def latest_round(self) -> int:
        path = self.out / "checkpoint" / "latest.json"
        return int(self._latest()["rounds_done"]) if path.is_file() else 0

    def _latest(self) -> dict:
        """`checkpoint/latest.json`, refused in one line when damaged."""
        path = self.out / "checkpoint" / "latest.json"
        try:
            latest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            latest = None
        if not (
            isinstance(latest, dict)
            and isinstance(latest.get("rounds_done"), int)
            and isinstance(latest.get("folder"), str)
        ):
            raise UserError(
                f"{path}: damaged checkpoint pointer; use a new --out (or delete {path.parent} to start this run over)"
            )
        return latest

    def save_checkpoint(self, rounds_done: int, save_policy: Callable[[Path], None], state: dict) -> None:
        """Policy files + `state.pt` in a new folder, then `latest.json` points at it (atomic commit)."""
        if not self.enabled:
            return
        root = self.out / "checkpoint"
        folder = root / f"round_{rounds_done:04d}"
        shutil.rmtree(folder, ignore_errors=True)
        save_policy(folder / "policy")
        with atomic_path(folder / "state.pt") as tmp:
            torch.save(state, tmp)
        write_json_atomic(
            root / "latest.json",
            {"rounds_done": rounds_done, "folder": folder.name, **({"inputs": self.inputs} if self.inputs else {})},
        )
        for old in root.glob("round_*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> tuple[Path, dict] | None:
        """(policy folder, state) of the last finished round, or None for a fresh run."""
        latest = self.out / "checkpoint" / "latest.json"
        if not latest.is_file():
            return None
        folder = self.out / "checkpoint" / self._latest()["folder"]
        try:
            state = torch.load(folder / "state.pt", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise UserError(f"{folder / 'state.pt'}: cannot read the checkpoint ({e}); use a new --out") from None
        return folder / "policy", state

    def save_policy(self, save_policy: Callable[[Path], None]) -> None:
        """`<out>/policy/` replaced as a whole: written beside it, then swapped in."""
        if not self.enabled:
            return
        target = self.out / "policy"
        tmp = self.out / ".policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_policy(tmp)
        old = self.out / ".policy.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------ plots

    def plot(self, rounds: list[dict[str, Any]], reference_return: float | None = None) -> None:
        """`plots/performance.png` (P over steps, one line per round) and `plots/return.png`
        (with the return of the random-batch reference episode as a dashed line)."""
        if not self.enabled or not rounds:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        (self.out / "plots").mkdir(exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 4))
        cmap = plt.get_cmap("viridis")
        for k, r in enumerate(rounds):
            ax.plot(r["steps"], r["P"], color=cmap(k / max(len(rounds) - 1, 1)), label=f"round {r['round']}")
        ax.set_xlabel("step t")
        ax.set_ylabel("P(M_t)")
        ax.set_title("validation performance per round")
        if len(rounds) <= 10:
            ax.legend(fontsize=7)
        self._save_fig(fig, "performance.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["round"] for r in rounds], [r["return"] for r in rounds], marker="o", label="policy rollouts")
        if reference_return is not None:
            ax.axhline(reference_return, color="grey", linestyle="--", label="uniformly random batches")
            ax.legend(fontsize=8)
        ax.set_xlabel("round")
        ax.set_ylabel("return = P(M_T) - P(M_0)")
        ax.set_title("return over rounds")
        self._save_fig(fig, "return.png")

    def _save_fig(self, fig, name: str) -> None:
        import matplotlib.pyplot as plt

        with atomic_path(self.out / "plots" / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    def close(self) -> None:
        if self._report is not None:
            self._report.close()
