"""Which instructions are math or quantitative reasoning (the study's "math share").

The paper's appendix I reports that a GSM8K-targeted RAISE picks chain-of-thought and math
data; to measure that per method, every pool row gets a label from its text alone (no
model), by this rule:

an example is *quantitative* when
  (a) its prompt (instruction and input) holds arithmetic between numbers: two numbers
      joined by + - * / x × ÷ ^ or = (e.g. `3 + 4`, `12*7`), a variable set to a number
      (`x = 5`) or a percentage (`15%`), or a math word: calculate, compute, solve,
      equation, arithmetic, algebra, sum of, product of, average, mean of, median,
      percent(age), probability, ratio, fraction, divide, multiply, subtract, square
      root, how many, how much, area of, perimeter, volume of, convert ... to ..., interest
      rate; or
  (b) its response works a result out: a number, an operator and a number, then `=`
      (`3 + 4 = 7`, `12 * 7 = 84`).

Both parts are deliberately plain so anyone can recompute them; the rule over-counts a few
rows that quote a number sum in prose and misses word problems phrased without these words.
The study prints the pool's base rate next to each method's share.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from .pools import Example

_ARITHMETIC = re.compile(r"\d\s+-\s+\(?\d|\d\s*[+*/x×÷^=]\s*\(?\d|\d\s*%|\b[a-z]\s*=\s*-?\d")
_WORKED = re.compile(r"\d\s*[-+*/x×÷^]\s*\(?\d[\d.,]*\)?\s*=\s*-?\$?\d")
_WORDS = re.compile(
    r"\b(calculate[sd]?|calculating|calculation|compute[sd]?|computing the|solve[sd]?|solving|equations?|arithmetic|"
    r"algebra\w*|sum of|product of|average|mean of|median|percent\w*|probabilit\w*|ratio|fractions?|divide[sd]?|"
    r"division|multiply|multiplied|multiplication|subtract\w*|square root|how many|how much|area of|perimeter|"
    r"volume of|convert\b[^.?!]*\bto\b|interest rate)\b",
    re.IGNORECASE,
)


def is_quantitative(example: Example) -> bool:
    """The rule of the module docstring."""
    prompt = "\n".join(content for _, content in example.prompt_messages)
    return bool(_ARITHMETIC.search(prompt) or _WORDS.search(prompt) or _WORKED.search(example.response))


def quantitative_share(chosen_ids: Iterable[str], labels: dict[str, bool]) -> float:
    """Share of chosen rows (counted each time they are chosen) labelled quantitative."""
    ids: Sequence[str] = list(chosen_ids)
    if not ids:
        return float("nan")
    return sum(labels[i] for i in ids) / len(ids)
