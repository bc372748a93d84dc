"""Which pool rows are on-topic for a target task, by a plain rule per target (no model).

A targeted selector should lean towards rows like its target; the share of chosen rows that
a rule labels on-topic, against the pool's base rate, shows whether it does. The rules are
deliberately plain so anyone can recompute them, and each over- and under-counts:

- **gsm8k** (math word problems): `data.quantitative.is_quantitative`, arithmetic between
  numbers, a math word, or a worked result in the response (its docstring has the rule).
- **arc_challenge** (grade-school science): the prompt (instruction and input) names a
  science word of `SCIENCE_WORDS`: a field (physics, chemistry, biology, geology, ...),
  or a grade-school science notion (atom, molecule, cell, organism, species, ecosystem,
  photosynthesis, gravity, force, friction, energy, electricity, magnet, temperature,
  planet, orbit, solar system, climate, weather, erosion, fossil, rock, mineral, volcano,
  earthquake, evaporation, condensation, ...).
- **commonsenseqa** (one-word answers to everyday questions): a *short-answer question*:
  the prompt asks a question (it holds `?` or starts with a question word) and the reference
  response is at most 12 words long with no digit. It counts the answer format, not the
  subject: CommonsenseQA's answers are one of five short phrases.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

from .pools import Example
from .quantitative import is_quantitative

SCIENCE_WORDS = (
    r"scien\w*|physics|physical (change|properties)|chemistry|chemical\w*|biology|biological|geology|astronomy|"
    r"ecology|ecosystems?|atoms?|atomic|molecules?|molecular|electrons?|protons?|neutrons?|cells?|organisms?|"
    r"species|evolution|genes?|genetic\w*|dna|proteins?|photosynthesis|respiration|digestion|nutrients?|"
    r"gravity|gravitational|force|friction|velocity|acceleration|momentum|energy|electricity|electric(al)?|"
    r"circuits?|magnet\w*|temperature|heat|thermal|density|mass of|states? of matter|solids?|liquids?|gas(es)?|"
    r"planets?|orbits?|solar system|the sun|the moon|stars?|galaxy|climate|weather|erosion|fossils?|rocks?|"
    r"minerals?|volcano\w*|earthquakes?|evaporation|condensation|precipitation|water cycle|food chain|habitat|"
    r"predators?|prey|mammals?|reptiles?|insects?|plants?|seeds?|roots?|oxygen|carbon dioxide|hydrogen|nitrogen"
)
_SCIENCE = re.compile(rf"\b({SCIENCE_WORDS})\b", re.IGNORECASE)
_QUESTION_START = re.compile(
    r"^\s*(what|which|who|whom|whose|where|when|why|how|is|are|was|were|do|does|did|can|could|would|should|will)\b",
    re.IGNORECASE,
)
SHORT_ANSWER_WORDS = 12


def _prompt(example: Example) -> str:
    return "\n".join(content for _, content in example.prompt_messages)


def is_science(example: Example) -> bool:
    """ARC-Challenge's rule: the prompt names a word of `SCIENCE_WORDS`."""
    return bool(_SCIENCE.search(_prompt(example)))


def is_short_answer_question(example: Example) -> bool:
    """CommonsenseQA's rule: the prompt asks a question and the response is a short phrase
    (at most `SHORT_ANSWER_WORDS` words, no digit)."""
    prompt = _prompt(example)
    asks = "?" in prompt or any(_QUESTION_START.match(line) for line in prompt.splitlines())
    words = example.response.split()
    return asks and 0 < len(words) <= SHORT_ANSWER_WORDS and not any(c.isdigit() for c in example.response)


TOPIC_RULES: dict[str, tuple[str, Callable[[Example], bool]]] = {
    "gsm8k": ("math", is_quantitative),
    "arc_challenge": ("science", is_science),
    "commonsenseqa": ("short-answer question", is_short_answer_question),
}


def topic_labels(target: str, examples: Sequence[Example]) -> dict[str, bool]:
    """Every example's on-topic label for `target`, by id."""
    if target not in TOPIC_RULES:
        raise KeyError(f"no on-topic rule for target {target!r}; rules exist for {', '.join(TOPIC_RULES)}")
    rule = TOPIC_RULES[target][1]
    return {e.id: rule(e) for e in examples}


def on_topic_share(chosen_ids: Iterable[str], labels: dict[str, bool]) -> float:
    """Share of chosen rows (counted each time they are chosen) labelled on-topic; NaN for none."""
    ids = list(chosen_ids)
    return sum(labels[i] for i in ids) / len(ids) if ids else float("nan")
