"""Which pool rows and which features a saved policy was trained on: `<policy>/trained_on.json`,
written beside the weights by `train-policy`. `finetune` reads it and refuses a policy trained
on another pool, or on other features of this pool, since a policy chooses among the rows and
features it was trained on. A policy folder without the file (saved by an older version) is
used without the check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from ..io import fingerprint, write_json_atomic

TRAINED_ON = "trained_on.json"


def trained_on(pool_spec: str, ids: Iterable[str], features: str | Path) -> dict[str, Any]:
    """The record of a policy trained on pool rows `ids` (any order) with the features in `features`."""
    from ..features.table import read_features_meta

    ids = sorted(ids)
    return {
        "pool": str(pool_spec),
        "rows": len(ids),
        "rows_fingerprint": fingerprint(ids),
        "features": str(features),
        "features_fingerprint": read_features_meta(features).get("fingerprint"),
    }


def write_trained_on(policy_dir: str | Path, record: dict[str, Any]) -> None:
    write_json_atomic(Path(policy_dir) / TRAINED_ON, record)


def check_trained_on(policy_dir: str | Path, now: dict[str, Any], flag: str = "--policy") -> None:
    """Refuse using the policy in `policy_dir` on the pool and features described by `now`
    (a `trained_on` record) when it was trained on other rows or other features."""
    path = Path(policy_dir) / TRAINED_ON
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); the policy folder is damaged") from None
    if not isinstance(saved, dict) or "rows_fingerprint" not in saved:
        raise UserError(f"{path}: field 'rows_fingerprint': missing; the policy folder is damaged")
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
