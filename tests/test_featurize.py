"""Featurization: values against a plain per-example reference, format, resume, reuse, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from raise_select.data.pools import load_pool
from raise_select.data.templates import render_prompt
from raise_select.errors import UserError
from raise_select.features import FEATURE_COLUMNS, FeatureTable, FeaturizeConfig, featurize
from raise_select.features.scoring import truncate

WORDS = "the quick brown fox jumps over the lazy dog red green blue 12 plus 7 is 19 good morning".split()


def _text(n, shift):
    return " ".join(WORDS[(shift + i) % len(WORDS)] for i in range(n))


ROWS = [
    {
        "instruction": f"Name {_text(3 + i % 4, i)}.",
        "input": _text(i % 3 * 4, i + 1),
        "output": _text(2 + (7 * i) % 23, i + 2),
    }
    for i in range(13)
] + [{"instruction": "Say nothing.", "input": "", "output": "  "}]  # empty response: skipped by the loader


@pytest.fixture
def pool_file(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(ROWS))
    return path


def make_cfg(pool_file, model_dir, out, **kw):
    base = dict(
        pool=str(pool_file), model=str(model_dir), out=str(out), shard_size=5, batch_size=3, classes=3, sem_dim=8
    )
    return FeaturizeConfig(**{**base, **kw})


def reference(model, tok, example, max_length):
    """Plain IFD-style scoring: two full forward passes with full-vocabulary logits."""
    start = tok.bos_token_id
    p = tok(render_prompt(example.prompt_messages, "alpaca", tok, example.record), add_special_tokens=False).input_ids
    r = tok(example.response, add_special_tokens=False).input_ids
    budget = max_length - 1
    if len(r) > budget:  # the response alone is too long: keep its head and a quarter-window of prompt
        keep_p = min(len(p), budget // 4)
        r = r[: budget - keep_p]
    else:
        keep_p = min(len(p), budget - len(r))
    p = p[len(p) - keep_p :]

    def score(seq, first):
        with torch.no_grad():
            out = model(torch.tensor([seq]), output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0].double(), dim=-1)
        total = sum(float(logp[j - 1, seq[j]]) for j in range(first, len(seq)))
        return total, out.hidden_states[-1][0, first:].double().mean(0).numpy()

    cond_sum, emb = score([start, *p, *r], 1 + len(p))
    uncond_sum, _ = score([start, *r], 1)
    return dict(len_prompt=len(p), len_response=len(r), logp_cond_sum=cond_sum, logp_uncond_sum=uncond_sum, emb=emb)


@pytest.mark.parametrize("max_length", [512, 24])
def test_values_match_plain_reference(pool_file, tiny_model_dir, tmp_path, max_length):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    table = featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "out", max_length=max_length))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool = load_pool(pool_file)
    assert table.ids == pool.ids
    truncated = 0
    for k, ex in enumerate(pool.examples):
        ref = reference(model, tok, ex, max_length)
        n = ref["len_response"]
        assert table["len_prompt"][k] == ref["len_prompt"]
        assert table["len_response"][k] == n
        assert table["logp_cond"][k] == pytest.approx(ref["logp_cond_sum"] / n, abs=1e-5)
        assert table["logp_uncond"][k] == pytest.approx(ref["logp_uncond_sum"] / n, abs=1e-5)
        assert table["logp_cond_sum"][k] == pytest.approx(ref["logp_cond_sum"], abs=1e-5 * n)
        assert table["logp_uncond_sum"][k] == pytest.approx(ref["logp_uncond_sum"], abs=1e-5 * n)
        loss_cond, loss_uncond = -ref["logp_cond_sum"] / n, -ref["logp_uncond_sum"] / n
        assert table["ifd"][k] == pytest.approx(loss_cond / loss_uncond, rel=1e-4)
        # Adaptive average pooling of 32 hidden features to 8 = means of 4 neighbours.
        np.testing.assert_allclose(table.sem[k], ref["emb"].reshape(8, 4).mean(1), atol=1e-5)
        full_response = len(tok(ex.response, add_special_tokens=False).input_ids)
        assert table["truncated"][k] == float(n < full_response)
        truncated += n < full_response
    assert table.meta["counts"]["truncated_responses"] == truncated
    if max_length == 24:
        assert truncated > 0 and table.meta["counts"]["truncated_prompts"] > 0
        assert (table["len_prompt"] + table["len_response"] <= 23).all()
    else:
        assert truncated == 0


def test_truncate_keeps_response_and_cuts_prompt_from_the_left():
    e = truncate(list(range(10)), [100, 101, 102], max_length=8)
    assert e.prompt_ids == [6, 7, 8, 9] and e.response_ids == [100, 101, 102]
    assert not e.response_truncated and e.prompt_cut == 6
    e = truncate(list(range(10)), list(range(100, 120)), max_length=9)  # budget 8, 2 for the prompt
    assert e.prompt_ids == [8, 9] and e.response_ids == list(range(100, 106)) and e.response_truncated
    e = truncate([], list(range(100, 120)), max_length=9)
    assert e.prompt_ids == [] and e.response_ids == list(range(100, 108))


def test_parquet_format_meta_and_skip_counts(pool_file, tiny_model_dir, tmp_path):
    table = featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "out"))
    schema = pq.read_schema(tmp_path / "out" / "features.parquet")
    assert schema.names == ["id", *FEATURE_COLUMNS, "sem", "cluster"]
    assert schema.field("sem").type == pa.list_(pa.float32(), 8)
    assert schema.field("cluster").type == pa.int32()
    assert set(table.cluster.tolist()) == {0, 1, 2}
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["counts"]["skipped"] == {"empty_response": 1}
    assert meta["counts"]["examples"] == len(ROWS) - 1
    assert meta["pool"]["fingerprint"] == load_pool(pool_file).fingerprint
    assert meta["max_length"] == 512 and meta["template"] == "alpaca" and meta["sem_dim"] == 8
    assert {"torch", "transformers", "scikit-learn"} <= set(meta["versions"])


class Crash(Exception):
    pass


def test_resume_after_crash_gives_identical_file(pool_file, tiny_model_dir, tmp_path):
    featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "full"))

    def crash_after_first(k):
        raise Crash(k)

    with pytest.raises(Crash):
        featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "resumed"), after_shard=crash_after_first)
    assert not (tmp_path / "resumed" / "features.parquet").exists()
    done = []
    featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "resumed"), after_shard=done.append)
    assert done == [1, 2]  # shard 0 was on disk and was not recomputed
    full = (tmp_path / "full" / "features.parquet").read_bytes()
    assert (tmp_path / "resumed" / "features.parquet").read_bytes() == full


def test_timing_log_counts_every_shard_once_across_resumes(pool_file, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Crash):
        featurize(make_cfg(pool_file, tiny_model_dir, out), after_shard=lambda k: (_ for _ in ()).throw(Crash(k)))
    table = featurize(make_cfg(pool_file, tiny_model_dir, out))
    lines = [json.loads(line) for line in (out / "timing.jsonl").read_text().splitlines()]
    assert sorted(r["shard"] for r in lines) == [0, 1, 2]  # shard 0 in the crashed run, 1 and 2 on resume
    # tokens fed per example: [start] + prompt + response, then [start] + response; by hand from the table
    for r in lines:
        rows = slice(5 * r["shard"], 5 * r["shard"] + r["examples"])
        assert r["tokens"] == int(sum(2 + table["len_prompt"][rows] + 2 * table["len_response"][rows]))
    timing = json.loads((out / "meta.json").read_text())["timing"]
    assert timing["shards_timed"] == timing["shards"] == 3
    assert timing["tokens"] == sum(r["tokens"] for r in lines)
    assert timing["seconds"] == pytest.approx(sum(r["seconds"] for r in lines), abs=0.2)
    # a line cut short by a crash mid-write is dropped, not an error
    with open(out / "timing.jsonl", "a") as f:
        f.write('{"shard_set": "x", "sha')
    from raise_select.features.featurize import timing_summary

    assert timing_summary(out, lines[0]["shard_set"] + "0" * 48, 3)["shards_timed"] == 3
    assert timing_summary(out, "f" * 64, 3)["shards_timed"] == 0  # other inputs' shards: passed over


def test_reuse_same_inputs_and_recompute_changed_ones(pool_file, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    featurize(make_cfg(pool_file, tiny_model_dir, out))
    stamp = (out / "features.parquet").stat().st_mtime_ns
    done = []
    featurize(make_cfg(pool_file, tiny_model_dir, out), after_shard=done.append)
    assert done == [] and (out / "features.parquet").stat().st_mtime_ns == stamp

    # Classes only change the end step: shards are reused, the table is rebuilt.
    table = featurize(make_cfg(pool_file, tiny_model_dir, out, classes=2), after_shard=done.append)
    assert done == [] and table.meta["classes"] == 2 and set(table.cluster.tolist()) == {0, 1}

    # A different template changes every score: all shards are recomputed, old ones removed.
    old_shards = list((out / "shards").iterdir())
    table = featurize(make_cfg(pool_file, tiny_model_dir, out, template="chat"), after_shard=done.append)
    assert done == [0, 1, 2] and table.meta["template"] == "chat"
    assert not any(p.exists() for p in old_shards)

    # A changed pool (one response edited) is recomputed too.
    rows = [dict(r) for r in ROWS]
    rows[0]["output"] = "a different answer"
    pool_file.write_text(json.dumps(rows))
    done.clear()
    table = featurize(make_cfg(pool_file, tiny_model_dir, out, template="chat"), after_shard=done.append)
    assert done == [0, 1, 2] and table.ids == load_pool(pool_file).ids


def test_pca_option_matches_sklearn_on_reference_embeddings(pool_file, tiny_model_dir, tmp_path):
    from sklearn.decomposition import PCA
    from transformers import AutoModelForCausalLM, AutoTokenizer

    table = featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "out", sem_pool="pca", sem_dim=4, seed=3))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    emb = np.stack([reference(model, tok, ex, 512)["emb"] for ex in load_pool(pool_file).examples])
    expected = PCA(n_components=4, random_state=3).fit_transform(emb)
    # Component signs are arbitrary up to the solver; compare up to a sign per column.
    signs = np.sign((expected * table.sem).sum(0))
    np.testing.assert_allclose(table.sem, expected * signs, atol=1e-4)


def test_sentence_transformers_embedding(pool_file, tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    word = Transformer(str(tiny_model_dir))
    encoder = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")], device="cpu")
    encoder.save(str(tmp_path / "st"))
    table = featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "out", embed_model=str(tmp_path / "st")))
    texts = ["\n\n".join(c for _, c in ex.messages) for ex in load_pool(pool_file).examples]
    expected = encoder.encode(texts, convert_to_numpy=True).reshape(len(texts), 8, 4).mean(2)
    np.testing.assert_allclose(table.sem, expected, atol=1e-5)
    assert table.meta["sem_source"] == "sentence-transformers"


def test_bad_inputs_raise_user_errors(pool_file, tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="not found"):
        featurize(make_cfg(tmp_path / "missing.json", tiny_model_dir, tmp_path / "o1"))
    with pytest.raises(UserError, match="model folder not found"):
        featurize(make_cfg(pool_file, tmp_path / "no-model", tmp_path / "o2"))
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(UserError, match="empty-model"):
        featurize(make_cfg(pool_file, tmp_path / "empty-model", tmp_path / "o3"))
    with pytest.raises(UserError, match="sem_pool"):
        featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "o4", sem_pool="max"))
    with pytest.raises(UserError, match="classes"):
        featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "o5", classes=50))
    with pytest.raises(UserError, match="max_position_embeddings"):
        featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "o6", max_length=5000))


def test_real_alpaca_slice(shared_data, tiny_model_dir, tmp_path):
    cfg = FeaturizeConfig(
        pool=str(shared_data / "alpaca" / "alpaca_data.json"),
        limit=40,
        model=str(tiny_model_dir),
        out=str(tmp_path / "out"),
        shard_size=16,
        batch_size=16,
        classes=4,
    )
    table = featurize(cfg)
    assert len(table) == 40 and table.meta["counts"]["pool_examples"] == 40
    assert np.isfinite(table.difficulty).all() and (table["len_response"] > 0).all()
    assert (table["logp_cond"] < 0).all() and table.sem.shape == (40, 32)
    assert FeatureTable.read(tmp_path / "out").ids == load_pool(cfg.pool, limit=40).ids


def test_cli_with_config_overrides_and_errors(pool_file, tiny_model_dir, tmp_path):
    from raise_select.cli.main import app

    config = tmp_path / "cfg.yaml"
    config.write_text(
        yaml.safe_dump(
            {"featurize": {"pool": str(pool_file), "model": str(tiny_model_dir), "classes": 4, "sem_dim": 16}}
        )
    )
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "featurize",
            "--config",
            str(config),
            "--set",
            "featurize.classes=2",
            "--out",
            str(tmp_path / "out"),
            "--shard-size",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "13 examples featurized" in res.output
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["classes"] == 2 and meta["sem_dim"] == 16 and meta["shards"]["count"] == 4
    assert (tmp_path / "out" / "featurize.log").is_file()

    res = runner.invoke(
        app,
        [
            "featurize",
            "--pool",
            str(tmp_path / "nope.json"),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2 and "nope.json" in res.output and "Traceback" not in res.output


def test_two_processes_match_one(pool_file, tiny_model_dir, tmp_path):
    """`torchrun` (what `accelerate launch` runs) with 2 CPU processes, each writing its own shards."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "raise_select.cli.main",
        "featurize",
        "--pool",
        str(pool_file),
        "--model",
        str(tiny_model_dir),
        "--shard-size",
        "5",
        "--batch-size",
        "3",
        "--classes",
        "3",
        "--sem-dim",
        "8",
        "--out",
        str(tmp_path / "two"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the launcher gives each process: same kernels, same bits
    try:
        featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    two = FeatureTable.read(tmp_path / "two")
    assert two.meta["shards"]["processes"] == 2
    assert (tmp_path / "two" / "featurize.1.log").is_file()
    # Same shards, same batches, same thread count: the same bytes.
    assert (tmp_path / "two" / "features.parquet").read_bytes() == (tmp_path / "one" / "features.parquet").read_bytes()


def test_compiled_body_gives_the_same_features(pool_file, tiny_model_dir, tmp_path):
    eager = featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "eager"))
    compiled = featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "compiled", compile=True))
    for col in ("logp_cond", "logp_uncond", "ifd"):
        np.testing.assert_allclose(compiled[col], eager[col], atol=1e-5)
    np.testing.assert_allclose(compiled.sem, eager.sem, atol=1e-5)


def test_failed_compile_is_one_clear_error(pool_file, tiny_model_dir, tmp_path, monkeypatch):
    def broken(*_, **__):
        def run(**___):
            raise torch._dynamo.exc.TorchDynamoException("C++ compiler not found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(
        UserError, match="torch.compile of the model failed.*C\\+\\+ compiler not found.*without --compile"
    ):
        featurize(make_cfg(pool_file, tiny_model_dir, tmp_path / "o", compile=True))


def test_half_precision_body_is_scored_with_a_float32_head(pool_file, tiny_model_dir):
    """A bfloat16 model keeps its body in bfloat16, but its logits and normaliser are float32:
    equal to the bfloat16 body's hidden states through the head in float64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raise_select.features.scoring import ResponseScorer, encode_examples

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = encode_examples(load_pool(pool_file).examples[:4], tok, "alpaca", 64)
    scores = ResponseScorer(model, tok.bos_token_id, tok.pad_token_id, 1, torch.device("cpu")).score(encoded)
    w = model.get_output_embeddings().weight.double()
    for k, e in enumerate(encoded):
        seq = [tok.bos_token_id, *e.prompt_ids, *e.response_ids]
        with torch.no_grad():
            hidden = model.base_model(input_ids=torch.tensor([seq])).last_hidden_state[0].double()
        logp = torch.log_softmax(hidden @ w.T, dim=-1)
        first = 1 + len(e.prompt_ids)
        ref = sum(float(logp[j - 1, seq[j]]) for j in range(first, len(seq)))
        assert scores.logp_cond_sum[k] == pytest.approx(ref, abs=1e-4 * len(e.response_ids))
