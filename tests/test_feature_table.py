import numpy as np
import pytest

from raise_select.errors import UserError
from raise_select.features.table import FEATURE_COLUMNS, FeatureTable


def make_table(ids, meta=None):
    n = len(ids)
    cols = {c: np.arange(n, dtype=np.float64) + k for k, c in enumerate(FEATURE_COLUMNS)}
    return FeatureTable(
        ids=list(ids),
        columns=cols,
        sem=np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        cluster=np.array([0, 1, 0][:n]),
        meta=meta or {},
    )


def test_round_trip_and_align_reorders_every_column(tmp_path):
    table = make_table(["a", "b", "c"], {"classes": 2})
    table.write(tmp_path)
    back = FeatureTable.read(tmp_path).align(["c", "a"])
    assert back.ids == ["c", "a"]
    assert back["logp_cond"].tolist() == [table["logp_cond"][2], table["logp_cond"][0]]
    assert back.sem.tolist() == [[4.0, 5.0], [0.0, 1.0]]
    assert back.cluster.tolist() == [0, 0]
    assert back.difficulty.shape == (2, 4)


def test_align_names_missing_ids_and_what_featurize_skipped():
    table = make_table(["a", "b"], {"counts": {"skipped": {"response_has_no_tokens": 1}}})
    with pytest.raises(UserError, match=r"missing for 1 pool example\(s\) \(first id z\); the featurizer skipped"):
        table.align(["a", "z"])


def test_nan_feature_is_refused_with_row_and_field(tmp_path):
    table = make_table(["a", "b"])
    table.columns["logp_uncond"][1] = np.nan
    table.write(tmp_path)
    with pytest.raises(UserError, match="row 1, field 'logp_uncond': NaN feature"):
        FeatureTable.read(tmp_path)
