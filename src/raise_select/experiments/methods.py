"""Every selection method a study can run, RAISE and its named presets included, in one registry.

An entry says how a cell of the method is run (`runs`: `baseline` through
`baselines.run.run_baseline`, `raise` through train-policy then finetune) and what it reads, so
the cell runner needs no list of its own:

- `needs_features(options)`: the method's own answer (RAISE's state always reads them);
- `reads_validation`: a targeted method, run once per target; the others once, scored on every
  target;
- `shared_cache`: its costly pass does not depend on the target (LESS's and ROSE's gradients of
  the pool), so its cells share one cache folder;
- the seeds it runs under (`seeds`: the RAND seeds, the RAISE seeds or the study's one seed);
- for a RAISE preset, the policy and train-policy settings it sets on top of the defaults, and
  `prior_from`, the method whose cell's pool scores are its prior.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..baselines import BASELINES, needs_features, needs_rds_vectors
from ..policy.agent import CREDIT, PAPER
from ..registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # the table's row name
    runs: str = "baseline"  # "baseline" (run_baseline) or "raise" (train-policy, then finetune)
    reads_validation: bool = False  # targeted: one cell per target
    shared_cache: bool = False  # the target-independent pass is cached once for all its cells
    seeds: str = "one"  # "random": the RAND seeds; "raise": the RAISE seeds; "one": the study's seed
    policy: dict = field(default_factory=dict)  # RAISE presets: PolicyConfig settings over the defaults
    episode: dict = field(default_factory=dict)  # RAISE presets: train-policy settings over the study's
    prior_from: str | None = None  # RAISE presets: the method whose cell's pool scores are the prior
    initialisation: str | None = None  # a trained RAISE preset: the 0-round row it starts from (paired by seed)
    baseline: str | None = None  # a baseline preset: the selection method it runs (None: its own name)
    options: dict = field(default_factory=dict)  # a baseline preset: options over that method's section
    about: str = ""

    @property
    def runs_as(self) -> str:
        """The selection method (`baselines.BASELINES`) a baseline cell of this entry runs."""
        return self.baseline or self.name

    @property
    def online(self) -> bool:
        """Chooses its batches while training (GREATS, RHO-LOSS, RAISE's fine-tuning)."""
        return self.runs == "raise" or bool(getattr(BASELINES.get(self.runs_as), "online", False))

    @property
    def dynamic(self) -> bool:
        """A baseline whose selection is a schedule of batches, not one subset (SSPL, GREATS, RHO-LOSS)."""
        return self.runs != "raise" and bool(getattr(BASELINES.get(self.runs_as), "dynamic", False))

    def needs_features(self, options: dict | None = None) -> bool:
        """Whether a cell of this method reads the featurized pool (RAISE's state always does)."""
        return self.runs == "raise" or needs_features(self.runs_as, options)

    def needs_rds_vectors(self, options: dict | None = None) -> bool:
        """Whether it reads the features' RDS+ vectors (`featurize --rds`)."""
        if self.runs == "raise":
            return self.policy.get("prior") == "rds" or (options or {}).get("policy", {}).get("prior") == "rds"
        return needs_rds_vectors(self.runs_as, options)


METHODS: Registry[Method] = Registry("method")

_BASELINE_ROWS = {
    # name: (label, reads a validation set, shares a target-independent cache)
    "full": ("100%", False, False),
    "random": ("RAND", False, False),
    "ifd": ("IFD", False, False),
    "deita": ("DEITA", False, False),
    "alpagasus": ("AlpaGasus", False, False),
    "sspl": ("SSPL", False, False),
    "less": ("LESS", True, True),
    "rose": ("ROSE", True, True),
    "rds": ("RDS+", True, False),
    "embed": ("EMBED", True, False),
    "tsds": ("TSDS", True, False),
    "greats": ("GREATS", True, False),
    "rho": ("RHO-LOSS", True, False),
}


def _seeds(name: str) -> str:
    return "random" if name == "random" else "one"


for _name, (_label, _val, _cache) in _BASELINE_ROWS.items():
    METHODS.register(
        _name,
        Method(_name, _label, reads_validation=_val, shared_cache=_cache, seeds=_seeds(_name)),
    )
# LESS with each validation item's gradient taken of the benchmark's metric (less.target auto): the gold
# choice's cross-entropy on a multiple-choice target, the response loss otherwise (where it is LESS itself).
# It shares LESS's cache of the pool's gradients: only the validation gradients differ.
METHODS.register(
    "less_metric",
    Method(
        "less_metric",
        "LESS (metric target)",
        reads_validation=True,
        shared_cache=True,
        baseline="less",
        options={"target": "auto"},
        about="LESS whose target gradient is the benchmark's metric: choice cross-entropy on multiple-choice targets",
    ),
)
_missing = [m for m in BASELINES if m not in METHODS]
if _missing:  # a new baseline must say here what it reads
    raise ValueError(f"selection methods without an experiments entry: {', '.join(_missing)}")


def _raise(name: str, label: str, about: str, policy=None, episode=None, prior_from=None, initialisation=None) -> None:
    METHODS.register(
        name,
        Method(
            name,
            label,
            runs="raise",
            reads_validation=True,
            seeds="raise",
            policy=dict(policy or {}),
            episode=dict(episode or {}),
            prior_from=prior_from,
            initialisation=initialisation,
            about=about,
        ),
    )


_raise("raise", "RAISE", "the package defaults (and the study's `raise:` section)", initialisation="raise_untrained")
_raise("raise_rds", "RAISE (+RDS+ prior)", "the defaults + the RDS+ prior (policy/prior.py)", {"prior": "rds"})
_raise("raise_paper", "RAISE (paper)", "the paper's literal form (appendix A.2, eq. 2-12)", PAPER)
_raise(
    "raise_untrained",
    "RAISE (untrained: 0 rounds)",
    "the defaults' initial policy, 0 policy-training rounds: the initialisation raise and raise_credit start from",
    episode={"rounds": 0},
)
_raise(
    "raise_credit",
    "RAISE (dense per-row credit)",
    "the defaults + dense per-row credit (policy.config.CREDIT, configs/policy_credit.yaml)",
    CREDIT,
    initialisation="raise_untrained",
)
# Labels before round 1 (docs/policy.md): 200 rows (a tenth of the benchmark's pool) labelled with their
# credit on M_0 and the target's own metric; F_theta fitted to them scores the whole pool from its features.
# At use time no row is taken more than 3 times (the study's epochs over a static selector's rows): the fit
# never sees the availability column, and uncapped it took the same 8 rows at every step (gsm8k dev, -0.118).
LABELS = {"label_budget": 200, "use_max_repeats": 3}
_raise(
    "raise_labels_untrained",
    "RAISE (labels: 200 rows' credit, untrained: 0 rounds)",
    "F_theta fitted to 200 rows' credit on M_0 (policy.label_budget), 0 policy-training rounds",
    LABELS,
    {"rounds": 0},
)
_raise(
    "raise_labels",
    "RAISE (labels: 200 rows' credit, dense per-row credit)",
    "raise_labels_untrained, then trained with dense per-row credit (policy.config.CREDIT)",
    {**CREDIT, **LABELS},
    initialisation="raise_labels_untrained",
)
_raise(
    "raise_labels_anchor",
    "RAISE (labels: 200 rows' credit, dense per-row credit, anchored)",
    "raise_labels with a KL penalty to its fitted initialisation in every actor step (policy.anchor_kl 1)",
    {**CREDIT, **LABELS, "anchor_kl": 1.0},
    initialisation="raise_labels_untrained",
)
_raise(
    "raise_between",
    "RAISE (+RDS+ prior, policy between)",
    "raise_rds with the policy's batches between its choices too",
    {"prior": "rds"},
    {"between": "policy"},
)
_raise(
    "raise_less",
    "RAISE (+LESS prior, policy between)",
    "the LESS cell's pool scores as the prior; its cost includes that cell's selection",
    {"prior": "selection"},
    {"between": "policy"},
    prior_from="less",
)
# Over the whole pool (classes aside), a softmax of prior_scale * tanh(z) of LESS's scores puts
# 14-17% of its mass on LESS's top 64 rows at 3 (about 700 effective rows), about 40% at 10 (about 250).
_raise(
    "raise_less_sharp",
    "RAISE (+LESS prior x10, policy between)",
    "raise_less at prior_scale 10: round 0 samples closer to LESS's own top rows",
    {"prior": "selection", "prior_scale": 10.0},
    {"between": "policy"},
    prior_from="less",
    initialisation="raise_less_untrained",
)
_raise(
    "raise_less_credit",
    "RAISE (+LESS prior x10, policy between, dense per-row credit)",
    "raise_less_sharp trained with dense per-row credit; raise_less_untrained is its initialisation",
    {"prior": "selection", "prior_scale": 10.0, **CREDIT},
    {"between": "policy"},
    prior_from="less",
    initialisation="raise_less_untrained",
)
_raise(
    "raise_less_untrained",
    "RAISE (+LESS prior x10, untrained: 0 rounds)",
    "that prior alone, 0 policy-training rounds: what PPO adds",
    {"prior": "selection", "prior_scale": 10.0},
    {"between": "policy", "rounds": 0},
    prior_from="less",
)


def method_names(runs: str | None = None, online: bool | None = None) -> list[str]:
    """The registered names, optionally only those run as `runs` or (not) online: help texts list these."""
    return [
        n for n, m in METHODS.items() if (runs is None or m.runs == runs) and (online is None or m.online == online)
    ]


ROW_LABELS = {name: m.label for name, m in METHODS.items()}
