"""The on-topic rules per target (`data.topics`) on hand-made rows, and the share they give."""

from __future__ import annotations

import math

import pytest

from raise_select.data.pools import Example, example_id
from raise_select.data.topics import TOPIC_RULES, is_science, is_short_answer_question, on_topic_share, topic_labels


def _ex(prompt: str, response: str) -> Example:
    messages = (("user", prompt), ("assistant", response))
    return Example(id=example_id(messages), messages=messages, record={}, source="t", row=0)


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("How does the moon affect the tides?", True),  # 'the moon'
        ("Explain photosynthesis to a child.", True),
        ("Name three states of matter.", True),
        ("Why do plants need sunlight?", True),  # 'plants'
        ("Write a cover letter for a sales job.", False),
        ("Describe a cellphone.", False),  # 'cellphone' is not 'cell'
        ("Summarise the plot of Hamlet.", False),
    ],
)
def test_science_rule(prompt, expected):
    assert is_science(_ex(prompt, "An answer.")) is expected


@pytest.mark.parametrize(
    "prompt,response,expected",
    [
        ("Where would you put a dirty plate?", "In the sink.", True),
        ("Which animal says moo", "A cow.", True),  # a question word opens the prompt, no '?'
        ("Name a fruit.", "Apple.", False),  # not a question
        ("What is 2 + 2?", "4", False),  # a digit: a number, not a phrase
        ("Why is the sky blue?", " ".join(["word"] * 13), False),  # 13 words: too long
        ("Why is the sky blue?", " ".join(["word"] * 12), True),  # 12 words: the limit
        ("What is love?", "", False),  # no answer
    ],
)
def test_short_answer_question_rule(prompt, response, expected):
    assert is_short_answer_question(_ex(prompt, response)) is expected


def test_share_counts_repeats_and_labels_by_target():
    rows = [
        _ex("What is 12 * 7?", "84"),
        _ex("Explain gravity.", "A force between masses."),
        _ex("Where would you put a dirty plate?", "In the sink."),
        _ex("Write a poem.", "Roses are red."),
    ]
    math_labels = topic_labels("gsm8k", rows)
    assert [math_labels[r.id] for r in rows] == [True, False, False, False]
    assert [topic_labels("arc_challenge", rows)[r.id] for r in rows] == [False, True, False, False]
    assert [topic_labels("commonsenseqa", rows)[r.id] for r in rows] == [False, False, True, False]
    # chosen ids count each time they are chosen: 2 of 5 picks are the math row
    picks = [rows[0].id, rows[0].id, rows[1].id, rows[2].id, rows[3].id]
    assert on_topic_share(picks, math_labels) == pytest.approx(2 / 5)
    assert math.isnan(on_topic_share([], math_labels))
    assert set(TOPIC_RULES) == {"gsm8k", "arc_challenge", "commonsenseqa"}
    with pytest.raises(KeyError, match="no on-topic rule"):
        topic_labels("mmlu", rows)
