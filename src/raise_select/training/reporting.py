"""Where training scalars go besides `metrics.jsonl`: `report_to` as in `transformers`'
`TrainingArguments` (`none`, `tensorboard`, `wandb`, `all`, or a comma-separated list).

- `tensorboard`: event files in `<out>/tensorboard` (`torch.utils.tensorboard`);
- `wandb`: a Weights & Biases run whose files live in `<out>/wandb` (project `$WANDB_PROJECT`,
  default `raise-select`; `WANDB_MODE=offline` writes the run there without a network, to
  sync later with `wandb sync`). Every process start is a new W&B run.

Both get the same scalars under the same names: `step/<key>` against the global step
(`round x steps + step`), `round/<key>` against the round, and `<kind>/<key>` at 0 for a
one-off record (train-policy's `reference` episode, finetune's `finetune` summary). W&B needs one increasing
step per run, so each family carries its own x axis (`step/x`, `round/x`, `define_metric`).

Naming `wandb` checks its settings first (`check_wandb`, from `parse_report_to`, which every
command calls before any work), from the environment and wandb's files, without a network: the
package, `WANDB_MODE`, `WANDB_PROJECT`, the form of `WANDB_API_KEY`, and, in online mode, that a
login exists (`WANDB_API_KEY`, `WANDB_IDENTITY_TOKEN_FILE`, or the netrc entry `wandb login`
writes for the server's host); `mode`, `base_url` and `api_key` of wandb's settings files
(`wandb offline`, `wandb login --host` write them) count where the variables are unset. A
folder `<out>/tensorboard` or `<out>/wandb` that is a file is refused when the run folder
opens its reporter, before its work.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from ..errors import UserError

REPORT_TO = ("tensorboard", "wandb")
WANDB_PROJECT_ENV = "WANDB_PROJECT"
DEFAULT_PROJECT = "raise-select"


def parse_report_to(value: str | Iterable[str] | None, tensorboard: bool = False) -> list[str]:
    """The targets named by `value` (`none` / `all` / names, comma-separated or a list);
    `tensorboard=True` is the older `--tensorboard` flag and adds `tensorboard`."""
    if value is None:
        names: list[str] = []
    elif isinstance(value, str):
        names = [v.strip().lower() for v in value.split(",") if v.strip()]
    else:
        names = [str(v).strip().lower() for v in value]
    if "all" in names:
        names = list(REPORT_TO)
    names = [n for n in names if n != "none"]
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise UserError(f"report_to: unknown target '{unknown[0]}'; available: none, {', '.join(REPORT_TO)}, all")
    if tensorboard:
        names.append("tensorboard")
    if "wandb" in names:
        check_wandb()
    return [n for n in REPORT_TO if n in names]


WANDB_FIX = "set WANDB_MODE=offline (the run is written under <out>/wandb; `wandb sync` uploads it later)"
WANDB_NO_LOGIN_MODES = ("offline", "dryrun", "disabled")  # modes that need no account


def _wandb_key_problem(key: str) -> str | None:
    """What is wrong with the form of an API key, by wandb's own check where this wandb has one
    (a key is 40+ letters, digits or underscores, after an optional `<prefix>-`)."""
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key  # wandb >= 0.22

        return check_api_key(key)
    except ImportError:
        secret = key.split("-", 1)[-1]
        if not re.fullmatch(r"[\w-]+", secret) or len(secret) < 40:
            return "API keys are 40 or more letters, digits and underscores, after an optional '<prefix>-'."
        return None


def _netrc_login(host: str) -> bool:
    """Whether the netrc file wandb reads (`$NETRC`, else ~/.netrc or ~/_netrc) has a password for `host`."""
    paths = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for path in (Path(p).expanduser() for p in paths):
        if path.is_file():
            try:
                entry = netrc.netrc(str(path)).authenticators(host)
            except (netrc.NetrcParseError, OSError, UnicodeDecodeError) as e:
                raise UserError(
                    f"report_to wandb: {path}: unreadable ({' '.join(str(e).split())}); fix it or {WANDB_FIX}"
                ) from None
            return bool(entry and entry[2])
    return False


def _wandb_file_settings() -> dict[str, str]:
    """The `[default]` settings of wandb's settings files (`wandb login --host`, `wandb offline`
    write them): the global `$WANDB_CONFIG_DIR/settings` (default ~/.config/wandb/settings),
    overridden by the working directory's `wandb/settings`."""
    import configparser

    out: dict[str, str] = {}
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb"
    for path in (Path(config_dir).expanduser() / "settings", Path("wandb") / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue  # wandb treats an unreadable settings file as empty
        if parser.has_section("default"):
            out.update(parser["default"])
    return out


def check_wandb() -> None:
    """Refuse W&B settings that would fail once the work has started, in one line naming the
    setting and its fix (see the module's doc); reads the environment and wandb's settings and
    netrc files only."""
    if importlib.util.find_spec("wandb") is None:
        raise UserError("report_to wandb: the wandb package is not installed; pip install 'raise-select[wandb]'")
    import wandb

    files = _wandb_file_settings()
    raw = os.environ.get("WANDB_MODE", "")
    mode = raw.strip().lower() or files.get("mode", "").strip().lower()  # `wandb offline` writes mode
    if mode:
        try:
            wandb.Settings(mode=mode)
        except Exception:
            raise UserError(
                f"report_to wandb: {'WANDB_MODE' if raw.strip() else 'mode (wandb settings file)'}={raw or mode} is "
                "not a W&B mode; use offline (no network, `wandb sync` later), online (needs `wandb login`) or disabled"
            ) from None
    project = os.environ.get(WANDB_PROJECT_ENV)
    if project:
        try:
            wandb.Settings(project=project)
        except Exception as e:
            raise UserError(
                f"report_to wandb: {WANDB_PROJECT_ENV}={project}: {' '.join(str(e).split())[:200]}; "
                f"set {WANDB_PROJECT_ENV} to another name"
            ) from None
    key = os.environ.get("WANDB_API_KEY")
    if key:
        problem = _wandb_key_problem(key.strip())
        if problem:
            raise UserError(
                f"report_to wandb: WANDB_API_KEY is malformed ({problem.rstrip('.')}); copy the key from "
                f"https://wandb.ai/authorize (or your server's), unset it, or {WANDB_FIX}"
            )
    if mode in WANDB_NO_LOGIN_MODES or key or files.get("api_key") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    base_url = os.environ.get("WANDB_BASE_URL") or files.get("base_url") or "https://api.wandb.ai"
    host = urlparse(base_url).hostname or "api.wandb.ai"
    if not _netrc_login(host):
        raise UserError(
            f"report_to wandb: no W&B login for {host} (WANDB_API_KEY unset, no netrc entry) and WANDB_MODE is "
            f"{mode or 'unset (online)'}; run `wandb login`, set WANDB_API_KEY, or {WANDB_FIX}"
        )


def check_report_folders(out: str | Path, targets: list[str]) -> None:
    """Refuse a run folder whose `tensorboard` or `wandb` (where the targets write) is a file."""
    for name in targets:
        path = Path(out) / name
        if path.exists() and not path.is_dir():
            raise UserError(
                f"report_to {name}: {path}: exists and is a file, where the {name} files go; "
                "move it away or choose another --out"
            )


class Reporter:
    """Opens the named targets for a run folder; `log` sends one family of scalars to each."""

    def __init__(self, out: str | Path, targets: list[str], config: dict | None = None):
        self.out = Path(out)
        self._tb = None
        self._wandb = None
        check_report_folders(self.out, targets)
        if "tensorboard" in targets:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        if "wandb" in targets:
            try:
                import wandb
            except ImportError:
                raise UserError(
                    "report_to wandb: the wandb package is not installed; pip install 'raise-select[wandb]'"
                ) from None
            self.out.mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(
                project=os.environ.get(WANDB_PROJECT_ENV) or DEFAULT_PROJECT,
                name=self.out.resolve().name,
                dir=str(self.out),
                config=config or {},
            )
            for family in ("step", "round"):
                self._wandb.define_metric(f"{family}/x")
                self._wandb.define_metric(f"{family}/*", step_metric=f"{family}/x")

    @property
    def active(self) -> bool:
        return self._tb is not None or self._wandb is not None

    def log(self, family: str, scalars: dict[str, float], x: int) -> None:
        """`scalars` as `<family>/<key>` at x (`family` is `step` or `round`)."""
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"{family}/{key}", value, x)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({f"{family}/x": x, **{f"{family}/{k}": v for k, v in scalars.items()}})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
