"""Shared fixtures: a tiny Llama + locally trained tokenizer, and the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("RAISE_SELECT_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
).resolve()

TOKENIZER_TEXTS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "What is 12 plus 7? The answer is 19.",
    "Translate to French: good morning. Bonjour.",
    "Name three colors: red, green and blue.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
] * 20


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one intra-op thread (and tests stay repeatable)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA} (set RAISE_SELECT_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A ~20k-parameter Llama with a BPE tokenizer trained on the spot, saved to a folder."""
    from raise_select.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), TOKENIZER_TEXTS, preset="test", seed=0)
