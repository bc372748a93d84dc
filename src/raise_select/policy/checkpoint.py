"""Saving and loading a `RaisePolicy` (actor.safetensors, critic.safetensors, policy.json) and its optimizer
state for an exact resume. A mixin of the policy (policy/agent.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Self

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError
from ..io import atomic_path, write_json_atomic
from .acquisition import CRITIC_FEATURES
from .config import PolicyConfig
from .state import Normalizer, StaticState

POLICY_FORMAT = 1


class PolicyCheckpoint:
    """`save` / `load` of a policy folder and `training_state` / `load_training_state` for a resume."""

    def save(self, out_dir: str | Path) -> None:
        """actor.safetensors, critic.safetensors and policy.json (config, normaliser, dimensions)."""
        out_dir = Path(out_dir)
        for name, module in (("actor", self.actor), ("critic", self.critic)):
            check_finite_weights(module.state_dict(), f"the {name} being saved to {out_dir}", after_update=self.updates)
        for name, module in (("actor", self.actor), ("critic", self.critic)):
            with atomic_path(out_dir / f"{name}.safetensors") as tmp:
                save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))
        write_json_atomic(
            out_dir / "policy.json",
            {
                "format": POLICY_FORMAT,
                "config": asdict(self.cfg),
                "normalizer": self.static.normalizer.to_dict(),
                "dims": {
                    "fused_dim": self.static.fused_dim,
                    "sem_dim": self.static.sem_dim,
                    "prior_dim": self.static.prior_dim,
                    "num_classes": self.static.num_classes,
                    "critic_features": list(CRITIC_FEATURES),
                },
                "updates": self.updates,
                "perf_reference": self.perf_reference,
                "step_baseline": self.step_baseline,
                "baseline_episodes": self.baseline_episodes,
            },
        )

    @staticmethod
    def _read_meta(out_dir: str | Path) -> dict:
        path = Path(out_dir) / "policy.json"
        if not path.is_file():
            raise UserError(f"{Path(out_dir)}: no policy.json here; point at the policy folder of a train-policy run")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise UserError(f"{path}: expected a JSON object")
        for key, kind in (("config", dict), ("normalizer", dict), ("dims", dict)):
            if not isinstance(meta.get(key), kind):
                raise UserError(f"{path}, field '{key}': missing or not an object; the policy folder is damaged")
        for key in ("sem_dim", "num_classes"):
            if not isinstance(meta["dims"].get(key), int):
                raise UserError(f"{path}, field 'dims.{key}': missing or not an integer; the policy folder is damaged")
        return meta

    @classmethod
    def read_normalizer(cls, out_dir: str | Path) -> Normalizer:
        """The normaliser a saved policy was trained with: build the `StaticState` with it."""
        return Normalizer.from_dict(cls._read_meta(out_dir)["normalizer"])

    @classmethod
    def read_config(cls, out_dir: str | Path) -> PolicyConfig:
        """The settings a saved policy was trained with (fields this version does not know are left out)."""
        known = {f.name for f in fields(PolicyConfig)}
        return PolicyConfig(**{k: v for k, v in cls._read_meta(out_dir)["config"].items() if k in known})

    @classmethod
    def load(cls, out_dir: str | Path, static: StaticState) -> Self:
        """A saved policy over `static`, which must be built with `read_normalizer(out_dir)`."""
        out_dir = Path(out_dir)
        meta = cls._read_meta(out_dir)
        dims = meta["dims"]
        path = out_dir / "policy.json"
        if dims["sem_dim"] != static.sem_dim:
            raise UserError(
                f"{path}: field 'dims.sem_dim' is {dims['sem_dim']} but the features have sem_dim {static.sem_dim}"
            )
        if int(dims.get("prior_dim", 0)) != static.prior_dim:
            raise UserError(
                f"{path}: field 'dims.prior_dim' is {dims.get('prior_dim', 0)} but the state has "
                f"{static.prior_dim} prior column(s); policy.prior is {meta['config'].get('prior', 'none')}"
            )
        if dims["num_classes"] != static.num_classes:
            raise UserError(
                f"{path}: field 'dims.num_classes' is {dims['num_classes']} but the features have "
                f"{static.num_classes} classes"
            )
        if static.normalizer.to_dict() != meta["normalizer"]:
            raise UserError(
                f"{path}: field 'normalizer' differs from the features given: this policy was trained on "
                "other features; pass the --features it was trained with (or, to resume train-policy, the "
                "same --features; a new --out starts afresh). In Python, build the state with "
                "RaisePolicy.read_normalizer(policy_dir)"
            )
        policy = cls(static, cls.read_config(out_dir))
        for name, module in (("actor", policy.actor), ("critic", policy.critic)):
            module.load_state_dict(_read_weights(out_dir / f"{name}.safetensors", module))
        policy.updates = int(meta.get("updates", 0))
        policy.perf_reference = meta.get("perf_reference")
        policy.step_baseline = meta.get("step_baseline")
        policy.baseline_episodes = int(meta.get("baseline_episodes", 0))
        return policy

    def training_state(self) -> dict:
        """Optimizer states and the update count, for an exact resume (`torch.save` it; RNG is the caller's)."""
        return {
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "updates": self.updates,
            **({"anchor": self.anchor.state_dict()} if self.anchor is not None else {}),
        }

    def load_training_state(self, d: dict) -> None:
        self.actor_opt.load_state_dict(d["actor_opt"])
        self.critic_opt.load_state_dict(d["critic_opt"])
        self.updates = int(d["updates"])
        if "anchor" in d:
            self.set_anchor(d["anchor"])


def check_finite_weights(state: dict, what: str, after_update: int | None = None) -> None:
    """Refuse NaN or infinite policy weights (a diverged update must not be saved or used)."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            when = f" after {after_update} PPO update(s)" if after_update is not None else ""
            raise UserError(
                f"{what}: weight '{key}' has {bad} non-finite value(s){when}; the policy diverged "
                "(lower policy.actor_lr / policy.critic_lr, or check the features for extreme values)"
            )


def _read_weights(path: Path, module: nn.Module) -> dict:
    """A safetensors file of `module`'s weights, refused (file named) when missing, unreadable,
    of other shapes or non-finite."""
    if not path.is_file():
        raise UserError(f"{path}: missing; a policy folder holds actor.safetensors, critic.safetensors and policy.json")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for a truncated or corrupt file
        raise UserError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())[:200]})") from None
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        raise UserError(
            f"{path}: weights do not fit this policy (first difference: '{diff[0]}' "
            f"{got.get(diff[0])} vs {expected.get(diff[0])}); was it saved by another version or for other features?"
        )
    check_finite_weights(state, str(path))
    return state
