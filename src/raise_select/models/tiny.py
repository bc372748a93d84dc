"""Tiny Llama-architecture models with a BPE tokenizer trained on the spot.

Used by the tests, the benchmarks and the built-in demo: nothing is downloaded. The
tokenizer is a byte-level BPE trained with `tokenizers` on the given texts; the model is
`LlamaForCausalLM` built from a config with random weights (seeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = 2048
    max_position_embeddings: int = 1024
    # The model's vocabulary (embedding and LM-head rows) when it must be larger than what the
    # tokenizer reaches: a real model's shape for timing (the extra rows are never produced by
    # the tokenizer). None: the tokenizer's size.
    model_vocab_size: int | None = None


# Named sizes: "1m" and "10m" are the benchmark sizes (non-embedding parameters, roughly); "135m" a
# real model's shape.
PRESETS = {
    "test": TinySpec(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    ),
    "1m": TinySpec(
        hidden_size=128, intermediate_size=352, num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=4
    ),
    "10m": TinySpec(
        hidden_size=320, intermediate_size=864, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8
    ),
    # SmolLM2-135M's shape (30 blocks of width 576, 9 heads over 3 key-value heads, a 49152-row
    # vocabulary) with random weights and a 2048-token BPE tokenizer: per-step timings of a real
    # model's size where its weights are not at hand.
    "135m": TinySpec(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        model_vocab_size=49152,
        max_position_embeddings=2048,
    ),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Train a byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    preset: str = "test",
    seed: int = 0,
    spec: TinySpec | None = None,
    vocab_size: int | None = None,
) -> Path:
    """Train a tokenizer on `texts`, build a random Llama of `preset` size, save both to `out_dir`.

    `vocab_size` overrides the preset's tokenizer size (the BPE trainer may stop short of it
    on little text; the model takes the size actually reached, `len(tokenizer)`).
    """
    from dataclasses import replace

    from transformers import LlamaForCausalLM

    spec = spec or PRESETS[preset]
    if vocab_size is not None:
        spec = replace(spec, vocab_size=vocab_size)
    tok = train_tokenizer(texts, vocab_size=spec.vocab_size)
    config = tiny_config(spec, tok)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def tiny_config(spec: TinySpec, tok):
    """The `LlamaConfig` of `spec` for tokenizer `tok` (its special tokens; its size unless
    `spec.model_vocab_size` is larger)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=max(len(tok), spec.model_vocab_size or 0),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )


def non_embedding_parameters(model) -> int:
    """Parameters outside the token embedding and the LM head (the FLOP-relevant count)."""
    skip = {id(model.get_input_embeddings().weight)}
    out = model.get_output_embeddings()
    if out is not None:
        skip.add(id(out.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
