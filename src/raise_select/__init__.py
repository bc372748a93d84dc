"""raise-select: dynamic instruction selection for LLM fine-tuning (RAISE) and static baselines."""

__version__ = "0.1.0"
