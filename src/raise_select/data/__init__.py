"""Instruction pools and validation sets: loading, format detection, prompt rendering."""

from .pools import Example, Pool, load_pool
from .templates import ALPACA_TEMPLATE, render_prompt

__all__ = ["Example", "Pool", "load_pool", "ALPACA_TEMPLATE", "render_prompt"]
