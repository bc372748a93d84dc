"""Which pool rows and which features a saved policy was trained on: `<policy>/trained_on.json`,
written beside the weights by `train-policy`. `finetune` reads it and refuses a policy trained
on another pool, or on other features of this pool, since a policy chooses among the rows and
features it was trained on. A policy folder without the file (saved by an older version) is
used without the check."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from ..io import fingerprint, path_digest, write_json_atomic

TRAINED_ON = "trained_on.json"

log = logging.getLogger(__name__)


def trained_on(
    pool_spec: str, ids: Iterable[str], features: str | Path, prior_selection: str | Path | None = None
) -> dict[str, Any]:
    """The record of a policy trained on pool rows `ids` (any order) with the features in `features`
    (and the `prior: selection` file `prior_selection`, if any)."""
    from ..features.table import read_features_meta

    ids = sorted(ids)
    record = {
        "pool": str(pool_spec),
        "rows": len(ids),
        "rows_fingerprint": fingerprint(ids),
        "features": str(features),
        "features_fingerprint": read_features_meta(features).get("fingerprint"),
    }
    if prior_selection:
        path = Path(prior_selection).expanduser().resolve()
        record["prior_selection"] = {"path": str(path), "sha256": path_digest(path)}
    return record


def write_trained_on(policy_dir: str | Path, record: dict[str, Any]) -> None:
    """`<policy_dir>/trained_on.json`; a prior file's path is also kept relative to the policy folder."""
    prior = record.get("prior_selection")
    if prior:
        folder = Path(policy_dir).expanduser().resolve()
        record = {**record, "prior_selection": {**prior, "relative": os.path.relpath(prior["path"], folder)}}
    write_json_atomic(Path(policy_dir) / TRAINED_ON, record)


def _read_trained_on(policy_dir: str | Path) -> dict[str, Any] | None:
    path = Path(policy_dir) / TRAINED_ON
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); the policy folder is damaged") from None
    if not isinstance(saved, dict) or "rows_fingerprint" not in saved:
        raise UserError(f"{path}: field 'rows_fingerprint': missing; the policy folder is damaged")
    return saved


def prior_for_use(policy_dir: str | Path, cfg, flag: str = "--policy"):
    """The saved policy's settings `cfg` (a PolicyConfig) with `prior_selection` the file it was
    trained on: found by its absolute path, else by its path relative to the policy folder (a
    moved run), and refused in one line when missing or when its bytes changed since training.
    Other priors, and policies that record no prior file (older versions), are returned as given."""
    if getattr(cfg, "prior", "none") != "selection":
        return cfg
    saved = _read_trained_on(policy_dir) or {}
    record = saved.get("prior_selection")
    path = Path(policy_dir) / TRAINED_ON
    if not isinstance(record, dict):
        log.warning(
            "%s records no digest of the prior's selection file; reading %s as given", path, cfg.prior_selection
        )
        return cfg
    if not (isinstance(record.get("path"), str) and isinstance(record.get("sha256"), str)):
        raise UserError(f"{path}: field 'prior_selection': no path and sha256; the policy folder is damaged")
    candidates = [Path(record["path"])]
    if isinstance(record.get("relative"), str):
        candidates.append(Path(policy_dir).expanduser().resolve() / record["relative"])
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UserError(
            f"policy.prior_selection {record['path']}: no such file; the policy in {policy_dir} ({flag}) was "
            "trained with this selection as its prior and scores rows with it: restore the file, or train a policy "
            "on another one"
        )
    now = path_digest(found)
    if now != record["sha256"]:
        raise UserError(
            f"policy.prior_selection {found}: changed since the policy in {policy_dir} was trained on it (sha256 "
            f"{now[:12]}, trained on {record['sha256'][:12]}); the policy would score rows with another prior: "
            "restore that file, or train the policy again on this one"
        )
    return dataclasses.replace(cfg, prior_selection=str(found))


def check_trained_on(policy_dir: str | Path, now: dict[str, Any], flag: str = "--policy") -> None:
    """Refuse using the policy in `policy_dir` on the pool and features described by `now`
    (a `trained_on` record) when it was trained on other rows or other features."""
    saved = _read_trained_on(policy_dir)
    if saved is None:
        return
    then = f"{saved.get('rows')} rows of {saved.get('pool')}, features {saved.get('features')}"
    if saved["rows_fingerprint"] != now["rows_fingerprint"]:
        raise UserError(
            f"{flag} {policy_dir}: trained on another pool ({then}), not on the {now['rows']} rows of "
            f"{now['pool']}; a policy chooses among the rows it was trained on: pass that pool and its "
            "features, or train a policy on this pool (`raise-select train-policy`)"
        )
    if (
        None not in (saved.get("features_fingerprint"), now["features_fingerprint"])
        and saved["features_fingerprint"] != now["features_fingerprint"]
    ):
        raise UserError(
            f"{flag} {policy_dir}: trained on other features of this pool ({saved.get('features')}), not "
            f"on {now['features']} (computed with another model or other settings); pass the features it "
            "was trained on, or train a policy on these"
        )
