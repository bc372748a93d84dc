"""Loading target and auxiliary causal LMs; building tiny ones for tests and the demo."""

from .loading import load_model_and_tokenizer, load_tokenizer

__all__ = ["load_model_and_tokenizer", "load_tokenizer"]
