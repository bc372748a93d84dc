"""Every method says whether it reads the featurized pool (`needs_features`), and says it
truly: each registered method selects on a tiny pool with a feature table that notes what is
read of it; a method saying False reads nothing, one saying True reads it and refuses to run
without it, and only a method saying it reads the RDS+ vectors touches them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raise_select.baselines import (
    BASELINES,
    Baseline,
    SelectionContext,
    make_baseline,
    needs_features,
    needs_rds_vectors,
)
from raise_select.data.pools import load_pool
from raise_select.errors import UserError
from raise_select.features import FeatureTable, FeaturizeConfig, featurize
from raise_select.training.loop import LMConfig

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
ROWS = [
    {
        "instruction": f"Say {' '.join(WORDS[i % 7 : (i % 7) + 2 + i % 3])}.",
        "input": "",
        "output": " ".join(WORDS[(3 * i) % 11 : (3 * i) % 11 + 3 + i % 5]),
    }
    for i in range(16)
]
TINY = "{tiny}"  # the tiny model's folder, filled in by the test
LORA = {"lora_r": 2, "lora_alpha": 4, "proj_dim": 8, "warmup_epochs": 1, "warmup_batch_size": 4}
# One case per branch of what a method reads; every registered method has at least one.
CASES = [
    ("full", {}),
    ("random", {}),
    ("ifd", {}),
    ("sspl", {}),
    ("sspl", {"loss": "target"}),
    ("rds", {}),
    ("deita", {"complexity_scorer": TINY, "quality_scorer": TINY, "max_length": 64}),
    ("deita", {"complexity_scorer": TINY, "quality_scorer": TINY, "max_length": 64, "embedder": TINY}),
    ("alpagasus", {"backend": "local", "judge_model": TINY, "max_length": 128}),
    ("less", LORA),
    ("rose", {**LORA, "warmup_fraction": 0.5}),
    ("embed", {}),
    ("tsds", {}),
    ("tsds", {"representation": "embed"}),
    ("greats", {"candidates": 2, "last_layers": 1}),
    ("rho", {"candidates": 2, "il_epochs": 1}),
]


class Watched:
    """A feature table that notes every attribute and column read of it."""

    def __init__(self, table: FeatureTable):
        self._table, self.read = table, set()

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._table, name)

    def __getitem__(self, column):
        self.read.add(f"[{column}]")
        return self._table[column]

    def __len__(self):
        self.read.add("len")
        return len(self._table)


@pytest.fixture(scope="module")
def pool_and_table(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reads")
    path = folder / "pool.json"
    path.write_text(json.dumps(ROWS))
    pool = load_pool(path)
    table = featurize(
        FeaturizeConfig(
            pool=str(path),
            model=str(tiny_model_dir),
            out=str(folder / "features"),
            classes=2,
            sem_dim=4,
            max_length=48,
            rds=True,
        )
    )
    return pool, table.align(pool.ids)


def test_every_registered_method_says_what_it_reads_and_has_a_case():
    assert {m for m, _ in CASES} == set(BASELINES)
    for name in BASELINES:
        method = make_baseline(name)
        assert isinstance(method, Baseline) and isinstance(method.needs_features(), bool)
    # The answers that depend on the options.
    assert needs_features("sspl") and not needs_features("sspl", {"loss": "target"})
    assert needs_features("deita") and not needs_features("deita", {"embedder": "all-minilm-l6-v2"})
    assert needs_rds_vectors("rds") and not any(needs_rds_vectors(m) for m in BASELINES if m not in ("rds", "tsds"))
    assert needs_rds_vectors("tsds") and not needs_rds_vectors("tsds", {"representation": "embed"})


@pytest.mark.parametrize("method,options", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_a_method_reads_the_features_exactly_when_it_says_so(
    method, options, pool_and_table, tiny_model_dir, tmp_path, monkeypatch
):
    import raise_select.features.semantic as semantic

    # EMBED's sentence encoder: a deterministic stand-in (no download).
    monkeypatch.setattr(semantic, "load_sentence_encoder", lambda *a, **k: object())
    monkeypatch.setattr(
        semantic,
        "encode_texts",
        lambda _enc, texts, _b: np.array(
            [[len(t), t.count("a") + 1.0, t.count("e") + 0.5] for t in texts], dtype=np.float32
        ),
    )
    pool, table = pool_and_table
    options = {k: (str(tiny_model_dir) if v == TINY else v) for k, v in options.items()}
    says = needs_features(method, options)

    def ctx(features, out):
        return SelectionContext(
            features=features,
            model=str(tiny_model_dir),
            validation=pool.examples[12:15],
            out_dir=out,
            batch_size=2,
            steps=2,
            max_length=48,
            lm=LMConfig(max_length=48, lr=1e-3),
            device="cpu",
        )

    watched = Watched(table)
    sel = make_baseline(method, options).select(pool, 4, ctx(watched, tmp_path / "with"))
    assert sel.indices
    assert bool(watched.read) == says, f"{method} {options}: says needs_features={says} but read {sorted(watched.read)}"
    assert ("rds" in watched.read) == needs_rds_vectors(method, options)
    if says:
        with pytest.raises(UserError, match="needs featurized pool features"):
            make_baseline(method, options).select(pool, 4, ctx(None, tmp_path / "without"))
