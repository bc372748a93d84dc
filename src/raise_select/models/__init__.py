"""Loading target and auxiliary causal LMs; building tiny ones for tests and the demo."""

from .loading import load_model_and_tokenizer, load_tokenizer
from .resolve import resolve_model

__all__ = ["load_model_and_tokenizer", "load_tokenizer", "resolve_model"]
