"""Each command's `--set` help gives an example it accepts: a key of the command's own section
(the study's: `study.` or a method's section), resolved as the command resolves it."""

from __future__ import annotations

import re

import typer

from raise_select.baselines.grape import GrapeConfig
from raise_select.baselines.run import BaselineConfig
from raise_select.cli.main import app
from raise_select.cli.select import SelectConfig
from raise_select.cli.study import check_method_options
from raise_select.config import resolve
from raise_select.demo import DemoConfig
from raise_select.evaluation.evaluate import EvaluateConfig
from raise_select.experiments.methods import METHODS
from raise_select.experiments.study import StudyConfig, method_sections
from raise_select.features.featurize import FeaturizeConfig
from raise_select.training.finetune import FinetuneConfig
from raise_select.training.train_policy import TrainPolicyConfig

CONFIGS = {
    "baseline": BaselineConfig,
    "demo": DemoConfig,
    "evaluate": EvaluateConfig,
    "featurize": FeaturizeConfig,
    "finetune": FinetuneConfig,
    "grape": GrapeConfig,
    "select": SelectConfig,
    "study": StudyConfig,
    "train-policy": TrainPolicyConfig,
}
EXAMPLE = re.compile(r"--set ([\w.]+)=([^\s,]+?)\.?(?=[\s,]|$)")


def _set_helps() -> dict[str, str]:
    group = typer.main.get_command(app)
    helps = {}
    for name, command in group.commands.items():
        for param in command.params:
            if "--set" in getattr(param, "opts", ()):
                helps[name] = param.help
    return helps


def test_every_set_example_is_an_override_its_command_accepts():
    helps = _set_helps()
    assert set(helps) == set(CONFIGS)  # a new command with --set is added here with its config
    for command, text in helps.items():
        examples = EXAMPLE.findall(text)
        assert examples, (command, text)
        section = command.replace("-", "_")
        for key, value in examples:
            override = f"{key}={value}"
            head = key.split(".")[0]
            if command == "study" and head in METHODS:  # a method's options
                options = method_sections(None, [override], [head])
                assert options[head], override
                check_method_options(options, "--set")
                continue
            assert head == section, (command, override)
            default = resolve(CONFIGS[command], section)
            changed = resolve(CONFIGS[command], section, None, [override])
            assert changed != default, (command, override)
    assert "train_policy." not in helps["study"]
