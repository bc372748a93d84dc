"""Job configs: nested sections, precedence, help text from the fields, validation per config,
the shipped configs and the generated settings reference."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from raise_select.config import (
    SHIPPED_CONFIGS,
    field_help,
    find_config,
    from_dict,
    read_yaml,
    resolve,
    settings_rows,
    shipped_configs,
)
from raise_select.demo import DemoConfig
from raise_select.errors import UserError
from raise_select.policy import PolicyConfig
from raise_select.training import EpisodeConfig, FinetuneConfig, LMConfig, TrainPolicyConfig

REPO = Path(__file__).resolve().parents[1]


def test_policy_section_from_yaml_overrides_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {"train_policy": {"rounds": 3, "policy": {"gamma": 0.5, "hidden": 16}}, "finetune": {"steps": 9}}
        )
    )
    cfg = resolve(
        TrainPolicyConfig,
        "train_policy",
        path,
        ["train_policy.policy.gamma=0.25", "policy.lam=0.5", "finetune.steps=7", "select_every=2"],
        {"policy": {"per_class": 2, "clip": None}, "steps": None, "lr": 1e-3},
    )
    assert cfg.rounds == 3 and cfg.select_every == 2 and cfg.lr == 1e-3
    assert cfg.steps == 100  # the finetune section and override are another command's
    # YAML < section override < flat override < flags, key by key inside the policy section
    assert cfg.policy == PolicyConfig(gamma=0.25, hidden=16, lam=0.5, per_class=2)


@dataclass
class _Inner:
    a: int = 1
    b: int = 2


@dataclass
class _Job:
    inner: _Inner = field(default_factory=lambda: _Inner(a=10))  # the job changes a default of its section


def test_a_nested_section_keeps_the_jobs_own_defaults(tmp_path):
    assert resolve(_Job, "job", None, ["job.inner.b=5"]).inner == _Inner(a=10, b=5)
    path = tmp_path / "job.yaml"
    path.write_text("job:\n  inner:\n    b: 7\n")
    assert resolve(_Job, "job", path).inner == _Inner(a=10, b=7)
    cfg = resolve(DemoConfig, "demo", None, ["demo.policy.gamma=0.5"])
    assert cfg.policy == replace(DemoConfig().policy, gamma=0.5)


def test_section_errors_name_the_dotted_key_and_the_source(tmp_path):
    with pytest.raises(UserError, match=r"unknown option\(s\) policy\.gama; available: .*policy\.gamma"):
        resolve(TrainPolicyConfig, "train_policy", None, ["train_policy.policy.gama=1"])
    path = tmp_path / "bad.yaml"
    path.write_text("train_policy:\n  policy:\n    gamma: 2\n")
    with pytest.raises(
        UserError, match=re.escape(f"{path}: invalid policy settings: gamma = 2.0 (must lie in [0, 1])")
    ):
        resolve(TrainPolicyConfig, "train_policy", path)
    with pytest.raises(UserError, match="'policy' is a section of settings; give a mapping, got 3"):
        resolve(TrainPolicyConfig, "train_policy", None, ["train_policy.policy=3"])
    with pytest.raises(UserError, match="'policy.hidden' must be a"):
        resolve(TrainPolicyConfig, "train_policy", None, ["policy.hidden=wide"])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LMConfig(lr=0), r"invalid LLM settings: lr = 0 \(must be > 0\)"),
        (lambda: LMConfig(max_length=1, grad_clip=-1), r"max_length = 1 .*; grad_clip = -1"),
        (lambda: EpisodeConfig(steps=0), r"invalid episode settings: steps = 0"),
        (lambda: EpisodeConfig(select_every=0), r"select_every = 0"),
        (lambda: EpisodeConfig(lr=-1), r"invalid LLM settings: lr = -1"),  # the parent's rules hold in the child
        (lambda: EpisodeConfig(metric="nope"), r"unknown metric 'nope'"),
        (lambda: TrainPolicyConfig(rounds=-1), r"invalid train-policy settings: rounds = -1"),
        (lambda: FinetuneConfig(per_class=0), r"invalid finetune settings: per_class = 0"),
        (lambda: PolicyConfig(gamma=1.5, minibatches=0), r"gamma = 1.5 .*; minibatches = 0"),
        (lambda: PolicyConfig(seed=-1), r"seed = -1"),
        (lambda: DemoConfig(preset="huge"), r"invalid demo settings: preset = 'huge' \(available: "),
        (lambda: DemoConfig(seeds=0, rounds=-1), r"seeds = 0 .*; rounds = -1"),
    ],
)
def test_each_config_refuses_its_own_bad_fields_when_made(make, message):
    with pytest.raises(UserError, match=message):
        make()


def test_defaults_are_valid_and_replace_is_checked():
    for cls in (LMConfig, EpisodeConfig, TrainPolicyConfig, FinetuneConfig, PolicyConfig, DemoConfig):
        cls()
    with pytest.raises(UserError, match="ppo_epochs = 0"):
        replace(TrainPolicyConfig().policy, ppo_epochs=0)


def test_from_dict_builds_the_nested_section_from_a_plain_dict():
    cfg = from_dict(TrainPolicyConfig, {"rounds": 2, "policy": {"hidden": 8}})
    assert isinstance(cfg.policy, PolicyConfig) and cfg.policy.hidden == 8 and cfg.rounds == 2
    assert from_dict(TrainPolicyConfig, {"policy": PolicyConfig(hidden=4)}).policy.hidden == 4


def test_field_help_reads_the_metadata_and_the_default():
    text = PolicyConfig.__dataclass_fields__["hidden"].metadata["help"]
    assert text and field_help(PolicyConfig, "hidden") == f"{text} (default: {PolicyConfig().hidden})"
    assert field_help(DemoConfig, "policy.per_class").endswith(f"(default: {DemoConfig().policy.per_class})")
    assert field_help(PolicyConfig, "seed").endswith("(default: none)")
    assert (
        field_help(TrainPolicyConfig, "pool") == EpisodeConfig.__dataclass_fields__["pool"].metadata["help"]
    )  # "" shown as no default
    assert (
        field_help(TrainPolicyConfig, "policy.per_class", with_default=False)
        == PolicyConfig.__dataclass_fields__["per_class"].metadata["help"]
    )
    with pytest.raises(KeyError, match="no setting 'policy.nope'"):
        field_help(TrainPolicyConfig, "policy.nope")


def _help_lines(command: str) -> dict[str, str]:
    """Option -> its help text, as `--help` prints it (wide enough for one line per option)."""
    from raise_select.cli.main import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    out = {}
    for line in result.output.splitlines():
        m = re.match(r"^│ (--[\w-]+)\S*(?:\s+-\w)?(?:\s+--[\w-]+)?\s+<[^>]+>\s+(.*?)\s*│$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_help_of_a_setting_is_its_fields_text_the_same_in_every_command():
    helps = {c: _help_lines(c) for c in ("train-policy", "finetune", "demo")}
    policy_help = field_help(PolicyConfig, "per_class", with_default=False)
    assert helps["train-policy"]["--per-class"] == f"{policy_help} (default: {PolicyConfig().per_class})"
    assert helps["finetune"]["--per-class"].startswith(policy_help)
    assert helps["demo"]["--seeds"] == field_help(DemoConfig, "seeds")
    # --set's example names each command's own section
    shared = set(helps["train-policy"]) & set(helps["finetune"]) - {"--per-class", "--out", "--help", "--set"}
    assert {"--pool", "--features", "--lr", "--max-length", "--select-every", "--metric", "--seed"} <= shared
    for option in shared:
        assert helps["train-policy"][option] == helps["finetune"][option], option
        assert helps["train-policy"][option], f"{option} has no help"
    assert helps["train-policy"]["--lr"] == field_help(LMConfig, "lr")


@pytest.mark.parametrize("command", ["featurize", "train-policy", "finetune", "select", "baseline", "evaluate", "demo"])
def test_every_option_has_help(command):
    helps = _help_lines(command)
    assert helps and all(helps.values()), [k for k, v in helps.items() if not v]


def test_settings_reference_is_current():
    from raise_select.cli.reference import render

    doc = REPO / "docs" / "settings.md"
    assert doc.read_text(encoding="utf-8") == render(), (
        "docs/settings.md is stale: python -m raise_select.cli.reference > docs/settings.md"
    )


def test_every_method_option_has_help():
    """Each option of a registered selection method, and of the dataclasses it inherits from
    (the online selectors' base, LESS under ROSE), carries `field(metadata={"help": ...})`:
    the settings reference is built from it."""
    import dataclasses

    from raise_select.baselines import BASELINES

    checked, missing = 0, []
    for method, cls in BASELINES.items():
        for klass in [k for k in cls.__mro__ if dataclasses.is_dataclass(k)]:
            for f in dataclasses.fields(klass):
                checked += 1
                text = f.metadata.get("help")
                if not (isinstance(text, str) and text.strip()):
                    missing.append(f"{method}: {klass.__name__}.{f.name}")
    assert checked > 0
    assert not missing, f"method options without field(metadata={{'help': ...}}): {missing}"


def test_settings_reference_lists_every_method_option_in_registry_order():
    from raise_select.baselines import BASELINES
    from raise_select.cli.reference import render

    text = render().split("\n## Method options")[1]
    headings = [line.split("`")[1] for line in text.splitlines() if line.startswith("### ")]
    assert headings == list(BASELINES)
    for method, cls in BASELINES.items():
        part = text.split(f"### `{method}`")[1].split("\n### ")[0]
        names = [row[0] for row in settings_rows(cls)]
        assert all(f"| `{n}` |" in part for n in names) if names else "No options." in part, method


def test_settings_reference_lists_every_policy_setting_for_each_policy_job():
    from raise_select.cli.reference import render

    names = [row[0] for row in settings_rows(PolicyConfig)]
    text = render()
    for section in ("train-policy", "demo"):
        part = text.split(f"## `{section}`")[1].split("\n## ")[0]
        assert all(f"| `policy.{n}` |" in part for n in names)


# ---------------------------------------------------------------- shipped configs


def _shipped() -> list[Path]:
    return sorted(SHIPPED_CONFIGS.glob("*.yaml"))


def test_configs_ship_inside_the_package_and_are_found_by_name():
    assert [p.stem for p in _shipped()] == shipped_configs() and "demo" in shipped_configs()
    assert find_config("demo") == find_config("demo.yaml") == SHIPPED_CONFIGS / "demo.yaml"
    assert read_yaml("demo") == yaml.safe_load((SHIPPED_CONFIGS / "demo.yaml").read_text())
    with pytest.raises(UserError, match=r"nope: config file not found \(shipped configs, usable by name: .*demo"):
        find_config("nope")
    with pytest.raises(UserError, match="config file not found"):
        find_config("some/dir/demo.yaml")  # a path is a path, never a shipped name


def test_package_data_patterns_match_shipped_files():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package = REPO / "src" / "raise_select"
    for pattern in pyproject["tool"]["setuptools"]["package-data"]["raise_select"]:
        assert list(package.glob(pattern)), f"pyproject package-data '{pattern}' matches no file"


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: p.stem)
def test_every_shipped_config_resolves(path):
    """Each section is a command's (resolved as that command would), a baseline method's
    options (built as the study builds them) or RAISE's train-policy settings."""
    from raise_select.baselines import BASELINES, make_baseline
    from raise_select.cli.reference import JOBS
    from raise_select.experiments.methods import METHODS
    from raise_select.experiments.study import substitute_model

    jobs = {section: config for _, section, config in JOBS}
    raw = read_yaml(path)
    assert raw
    for section, value in raw.items():
        assert isinstance(value, dict), f"{path.name}: section '{section}' is not a mapping"
        if section in jobs:
            module, name = jobs[section].split(":")
            cls = getattr(sys.modules.get(module) or __import__(module, fromlist=[name]), name)
            cfg = resolve(cls, section, path)
            assert cfg == from_dict(cls, value)
        elif section in BASELINES:
            make_baseline(section, substitute_model(value, "base-model"), str(path))
        elif section in METHODS and METHODS[section].runs == "raise":
            from_dict(TrainPolicyConfig, value, str(path))
        else:
            pytest.fail(f"{path.name}: section '{section}' belongs to no command or method")


def test_the_shipped_study_config_runs_cut_down(shared_data, tmp_path):
    """`raise-select study study_alpaca_cpu` as shipped, shrunk by --set to seconds: the data, a
    random row and RAISE (the file's own sections are what the run reads for everything else)."""
    from raise_select.cli.main import app

    small = {
        "pool": str(shared_data / "alpaca" / "alpaca_data.json"),
        "data_dir": str(shared_data),
        "pool_size": 40,
        "methods": "[random,raise]",
        "seeds": "[0]",
        "build_model": "test",
        "val_size": 4,
        "eval_limit": 2,
        "full_steps": 2,
        "rounds": 1,
        "classes": 2,
        "sem_dim": 4,
        "max_length": 48,
        "budget": 4,
        "batch_size": 4,
    }
    args = [f"--set=study.{k}={v}" for k, v in small.items()]
    result = CliRunner().invoke(app, ["study", "study_alpaca_cpu", "--out", str(tmp_path / "study"), *args])
    assert result.exit_code == 0, result.output
    table = yaml.safe_load((tmp_path / "study" / "study_table.json").read_text())
    assert [r["row"] for r in table["rows"]] == ["0%", "100%", "RAND", "RAISE"]
    assert table["failed"] == {} and table["steps"] == 3  # ceil(3 epochs x 4 / 4)
    shipped = read_yaml("study_alpaca_cpu")["study"]
    assert sorted(table["tasks"]) == sorted(shipped["tasks"])
