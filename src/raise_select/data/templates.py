"""Prompt rendering: the Alpaca template by default, or the tokenizer's chat template."""

from __future__ import annotations

from typing import Sequence

from ..errors import UserError

ALPACA_TEMPLATE = "alpaca"
CHAT_TEMPLATE = "chat"
TEMPLATES = (ALPACA_TEMPLATE, CHAT_TEMPLATE)

_ALPACA_HEADER_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
_ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)


def render_alpaca(messages: Sequence[tuple[str, str]], record: dict | None = None) -> str:
    """The Stanford Alpaca prompt, ending with '### Response:\\n'.

    Alpaca records keep their original instruction/input split. Multi-turn conversations
    put earlier turns as alternating '### Instruction:' / '### Response:' blocks.
    """
    if record and "instruction" in record and len(messages) <= 3:
        inp = record.get("input") or ""
        if isinstance(inp, str) and inp.strip():
            return (
                f"{_ALPACA_HEADER_INPUT}### Instruction:\n{record['instruction']}\n\n"
                f"### Input:\n{inp}\n\n### Response:\n"
            )
        return f"{_ALPACA_HEADER}### Instruction:\n{record['instruction']}\n\n### Response:\n"
    parts = [_ALPACA_HEADER]
    for role, content in messages:
        if role == "system":
            parts.append(f"{content}\n\n")
        elif role == "user":
            parts.append(f"### Instruction:\n{content}\n\n")
        else:
            parts.append(f"### Response:\n{content}\n\n")
    parts.append("### Response:\n")
    return "".join(parts)


def render_prompt(
    messages: Sequence[tuple[str, str]], template: str = ALPACA_TEMPLATE, tokenizer=None, record: dict | None = None
) -> str:
    """Render the prompt x (everything before the response) as text."""
    if template == ALPACA_TEMPLATE:
        return render_alpaca(messages, record)
    if template == CHAT_TEMPLATE:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError("template 'chat' needs a tokenizer with a chat template; use --template alpaca")
        return tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in messages], tokenize=False, add_generation_prompt=True
        )
    raise UserError(f"unknown template '{template}'; available: {', '.join(TEMPLATES)}")
