"""Typed job configs: dataclass defaults, overridden by a YAML file, overridden by flags.

One YAML file can hold the whole pipeline, one section per stage::

    featurize:
      model: ./tiny-llama
      pool: ../shared/data/alpaca/alpaca_data.json
    train_policy:
      rounds: 20

Each command reads its own section (or the top level when the file has no sections), and
dotted overrides (`--set train_policy.rounds=2`) or the command's own flags win over it.
A field whose type is itself a dataclass is a nested section (`train_policy.policy.gamma`,
see `PolicyConfig`); its keys are merged over the job's default for that section.

Every field carries its meaning in `field(metadata={"help": ...})`; `--help` and the settings
reference (docs/settings.md) are built from it. A config validates its own fields in
`check()`, which `__post_init__` calls (`check_fields` words the error).
"""

from __future__ import annotations

import copy
import dataclasses
import math
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
        if tp is Any or (origin in (typing.Union, types.UnionType) and type(None) in args):
            return None
        # `sem_dim: null` in YAML: refused here, not as a crash after the model has loaded.
        raise UserError(f"{source}: '{name}' needs a value ({getattr(tp, '__name__', tp)}), got null")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{name}' is a section of settings; give a mapping, got {value!r}")
        return from_dict(tp, value, source, prefix=f"{name}.")
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:  # Optional[X]: X's own message
            return _coerce(value, non_none[0], name, source)
        for a in non_none:
            try:
                return _coerce(value, a, name, source)
            except (UserError, ValueError, TypeError):
                continue
        kinds = " or ".join(getattr(a, "__name__", str(a)) for a in non_none)
        raise UserError(f"{source}: '{name}' must be {kinds}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise UserError(f"{source}: '{name}' must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):  # YAML `true` would silently become 1
            raise UserError(
                f"{source}: '{name}' must be a {'whole ' if tp is int else ''}number, got {str(value).lower()}"
            )
        try:
            out = tp(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(
                f"{source}: '{name}' must be a {'whole number' if tp is int else 'number'}, got {value!r}"
            ) from None
        if not math.isfinite(out):
            raise UserError(f"{source}: '{name}' must be a finite number, got {value!r}")
        if tp is int and isinstance(value, float) and value != int(value):
            raise UserError(f"{source}: '{name}' must be an integer, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (list, tuple, dict)):
            raise UserError(f"{source}: '{name}' must be text, got {value!r}")
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


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def from_dict(cls: type[T], data: dict, source: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, refusing unknown keys with the list of known ones.

    A nested section given as a mapping is laid over the field's default (so a job that
    changes a default of its `policy` section keeps it when the YAML sets other keys).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = f"available: {', '.join(prefix + k for k in sorted(fields))}" if fields else "it takes no options"
        raise UserError(f"{source}: unknown option(s) {', '.join(prefix + u for u in unknown)}; {known}")
    kwargs = {}
    for k, v in data.items():
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            base = _default(fields[k])
            if dataclasses.is_dataclass(base):
                v = {**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, **v}
        kwargs[k] = _coerce(v, hints[k], prefix + k, source)
    try:
        return cls(**kwargs)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


# The configs that ship with the package (`raise-select demo --config demo`).
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """`path` when it is a file, else the shipped config of that name (`demo`, `demo.yaml`)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"{path}: a folder; give the YAML config file itself")
    shipped = SHIPPED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise UserError(f"{path}: config file not found (shipped configs, usable by name: {', '.join(shipped_configs())})")


def read_yaml(path: str | Path) -> dict:
    """The mapping in YAML file `path` (or in the shipped config of that name)."""
    path = find_config(path)
    try:
        from .data.pools import decode_utf8

        data = yaml.safe_load(decode_utf8(path.read_bytes(), path)) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: expected a mapping of sections at the top level (e.g. `study:`), got a {type(data).__name__}"
        )
    return data


def parse_overrides(items: list[str] | None) -> dict:
    """`["a.b=1", "c=x"]` -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"override '{item}': expected KEY=VALUE, a dotted key such as section.setting=value")
        key, raw = item.split("=", 1)
        if not key.strip() or any(not part.strip() for part in key.split(".")):
            raise UserError(
                f"override '{item}': the key before '=' is empty or has an empty part; give section.setting=value"
            )
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(
                f"--set {item}: the value is not valid YAML ({problem}); quote it or fix it, "
                "e.g. --set featurize.classes=8"
            ) from None
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def merge(into: dict, new: dict, skip_none: bool = False) -> dict:
    """Lay `new` over `into`, section by section (nested mappings merged, not replaced)."""
    for k, v in new.items():
        if skip_none and v is None:
            continue
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v, skip_none)
        elif isinstance(v, dict):
            into[k] = merge({}, v, skip_none)
        else:
            into[k] = v
    return into


def _sections(cls: type) -> set[str]:
    """Fields of `cls` that are nested sections (dataclass-typed)."""
    hints = typing.get_type_hints(cls)
    return {f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def _own_keys(cls: type, data: dict) -> dict:
    """The keys of a flat mapping that belong to `cls`: plain values and `cls`'s own sections;
    other mappings are other commands' sections."""
    nested = _sections(cls)
    return {k: v for k, v in data.items() if not isinstance(v, dict) or k in nested}


def resolve(
    cls: type[T],
    section: str,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict | None = None,
    preset: dict | None = None,
) -> T:
    """Defaults <- YAML section <- `preset` (a flag naming many settings, as demo's `--quick`) <- dotted
    overrides <- explicit flags (those not None).

    Overrides name the command's section (`--set train_policy.policy.gamma=0`) or, for this
    command only, leave it out (`--set policy.gamma=0`, `--set rounds=2`). Flags are nested
    like the config (`{"policy": {"per_class": 2}}`).
    """
    data: dict = {}
    source = "command line"
    if config_path is not None:
        source = str(config_path)
        raw = read_yaml(config_path)
        if section in raw and not isinstance(raw[section], dict):
            raise UserError(f"{source}: section '{section}' must be a mapping of settings, got {raw[section]!r}")
        if section in raw and isinstance(raw[section], dict):
            merge(data, raw[section])
        else:
            # A flat file for a single stage; other stages' sections are skipped.
            merge(data, _own_keys(cls, raw))
    merge(data, copy.deepcopy(preset or {}))
    ov = parse_overrides(overrides)
    if section in ov and isinstance(ov[section], dict):
        merge(data, ov.pop(section))
    merge(data, _own_keys(cls, ov))
    merge(data, flags or {}, skip_none=True)
    return from_dict(cls, data, source)


def require_settings(cfg: Any, names: tuple[str, ...]) -> None:
    """Refuse a job whose required settings are empty, naming their flags."""
    missing = [f"--{name.replace('_', '-')}" for name in names if not getattr(cfg, name)]
    if missing:
        raise UserError(f"missing required setting(s): {', '.join(missing)}")


def check_fields(cfg: Any, rules: list[tuple[bool, str, str]], what: str) -> None:
    """Refuse `cfg` when a rule fails: `rules` are (holds, field, why), every failure named.

    The one wording of a settings error; each config's `check()` lists its own rules.
    """
    bad = [f"{name} = {getattr(cfg, name)!r} ({why})" for ok, name, why in rules if not ok]
    if bad:
        raise UserError(f"invalid {what} settings: " + "; ".join(bad))


def _field(cls: type, path: str) -> tuple[dataclasses.Field, Any]:
    """The field at dotted `path` of `cls` and its default (a nested default read from the parent's)."""
    parts = path.split(".")
    default: Any = dataclasses.MISSING
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise KeyError(f"{cls.__name__} has no setting '{'.'.join(parts[: i + 1])}'")
        f = fields[part]
        default = _default(f) if i == 0 else getattr(default, part)
        cls = typing.get_type_hints(cls)[part]
    return f, default


def field_help(cls: type, path: str, with_default: bool = True) -> str:
    """The help text of setting `path` (`"policy.gamma"`) of `cls`, with its default."""
    f, default = _field(cls, path)
    text = f.metadata.get("help", "")
    if with_default and default not in (dataclasses.MISSING, "") and not dataclasses.is_dataclass(default):
        text += f" (default: {_show(default)})"  # not [..]: rich help markup would swallow it
    return text


def has_field(cls: type, path: str) -> bool:
    try:
        _field(cls, path)
    except KeyError:
        return False
    return True


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "empty"
    return str(value)


def settings_rows(cls: type, prefix: str = "", base: Any = None) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of every setting of `cls`, nested sections flattened.

    `base` is the instance whose values are the defaults (a job may change a nested default,
    as the demo does for its `policy` section); None: the fields' own defaults.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = _default(f) if base is None else getattr(base, f.name)
        if dataclasses.is_dataclass(tp):
            rows += settings_rows(tp, f"{prefix}{f.name}.", default)
            continue
        rows.append((prefix + f.name, _type_name(tp), _show(default), f.metadata.get("help", "")))
    return rows


def _type_name(tp: Any) -> str:
    """`int`, `str or none`, `list[str]`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or none"
    return tp.__name__ if isinstance(tp, type) and not args else str(tp).replace("typing.", "")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def command_line(command: str, cfg: Any, sets: dict | None = None) -> str:
    """The command that reproduces `cfg`: `raise-select <command>` with a flag for every field
    that differs from its default (`--set <section>.<key>=<value>` for `sets`)."""
    import shlex

    words = ["raise-select", command]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == _default(f) or dataclasses.is_dataclass(value):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        else:
            words += [flag, str(value)]
    for section, options in (sets or {}).items():
        words += [w for k, v in options.items() for w in ("--set", f"{section}.{k}={v}")]
    return shlex.join(words)
