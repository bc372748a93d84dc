"""Options that set a field of a job's config dataclass, with that field's help text.

A command declares its options without `help=` and names its config class::

    OPTIONS = ConfigOptions("raise_select.training.train_policy:TrainPolicyConfig", per_class="policy.per_class")

    @app.command("train-policy", cls=OPTIONS.command)
    def train_policy_cmd(per_class: Optional[int] = typer.Option(None, "--per-class"), ...):
        cfg = resolve(TrainPolicyConfig, "train_policy", config, overrides, OPTIONS.flags(locals()))

`--help` reads each option's text (and default) from `field(metadata={"help": ...})` when it
is shown, so the config module (and torch) is imported only then; `flags` nests the values
the way `config.resolve` reads them. An option is the field of the same name unless mapped
to a dotted path.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from typer.core import TyperCommand


class ConfigOptions:
    def __init__(self, config: str, **paths: str):
        self.config = config  # "module:Class"
        self.paths = paths  # option name -> dotted field path, where they differ

    def config_class(self) -> type:
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)

    def path(self, name: str) -> str:
        return self.paths.get(name, name)

    def fill_help(self, params: list[Any]) -> None:
        """Set the help of every option that is a config field and has none of its own."""
        from ..config import field_help, has_field

        cls = self.config_class()
        for p in params:
            # an option (not an argument) without help; typer may bundle its own click, hence no isinstance
            if (
                getattr(p, "param_type_name", None) == "option"
                and not p.help
                and p.name
                and has_field(cls, self.path(p.name))
            ):
                p.help = field_help(cls, self.path(p.name))

    @property
    def command(self) -> type[TyperCommand]:
        options = self

        class ConfigCommand(TyperCommand):
            def format_help(self, ctx: Any, formatter: Any) -> None:
                options.fill_help(self.get_params(ctx))
                return super().format_help(ctx, formatter)

        return ConfigCommand

    def flags(self, values: dict) -> dict:
        """The given options (not None) as the nested mapping `resolve` takes; other parameters are left out."""
        from ..config import has_field

        cls = self.config_class()
        out: dict = {}
        for name, value in values.items():
            path = self.path(name)
            if value is None or not has_field(cls, path):
                continue
            *parents, leaf = path.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = str(value) if isinstance(value, Path) else value
        return out
