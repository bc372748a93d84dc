"""Typed job configs: dataclass defaults, overridden by a YAML file, overridden by flags.

One YAML file can hold the whole pipeline, one section per stage::

    featurize:
      model: ./tiny-llama
      pool: ../shared/data/alpaca/alpaca_data.json
    train_policy:
      rounds: 20

Each command reads its own section (or the top level when the file has no sections), and
dotted overrides (`--set train_policy.rounds=2`) or the command's own flags win over it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")


def _coerce(value: Any, tp: Any, name: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return _coerce(value, a, name, source)
            except (UserError, ValueError, TypeError):
                continue
        raise UserError(f"{source}: '{name}' = {value!r} is not a valid {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise UserError(f"{source}: '{name}' must be true or false, got {value!r}")
    if tp in (int, float):
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise UserError(f"{source}: '{name}' must be a {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise UserError(f"{source}: '{name}' must be an integer, got {value!r}")
        return out
    if tp is str:
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: '{name}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [v if inner is Any else _coerce(v, inner, name, source) for v in value]
        return items if origin is list else tuple(items)
    return value


def from_dict(cls: type[T], data: dict, source: str = "config") -> T:
    """Build dataclass `cls` from `data`, refusing unknown keys with the list of known ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"{source}: unknown option(s) {', '.join(unknown)}; available: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], k, source) for k, v in data.items()}
    return cls(**kwargs)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def parse_overrides(items: list[str] | None) -> dict:
    """`["a.b=1", "c=x"]` -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"override '{item}': expected KEY=VALUE, e.g. train_policy.rounds=2")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def resolve(
    cls: type[T],
    section: str,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict | None = None,
) -> T:
    """Defaults <- YAML section <- dotted overrides <- explicit flags (those not None)."""
    data: dict = {}
    source = "config"
    if config_path is not None:
        source = str(config_path)
        raw = read_yaml(config_path)
        known = {f.name for f in dataclasses.fields(cls)}
        if section in raw and isinstance(raw[section], dict):
            data.update(raw[section])
        else:
            # A flat file for a single stage; other stages' sections are skipped.
            data.update({k: v for k, v in raw.items() if k in known or not isinstance(v, dict)})
    ov = parse_overrides(overrides)
    if section in ov and isinstance(ov[section], dict):
        data.update(ov.pop(section))
    data.update({k: v for k, v in ov.items() if not isinstance(v, dict)})
    data.update({k: v for k, v in (flags or {}).items() if v is not None})
    return from_dict(cls, data, source)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
