"""Algorithm 1: top-b per class, class-softmax sampling without replacement, refill."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from raise_select.errors import UserError
from raise_select.policy import select_per_class


def _top_b_loop(scores, classes, num_classes, b):
    out = set()
    for i in range(num_classes):
        members = [j for j in range(len(scores)) if classes[j] == i]
        out |= set(sorted(members, key=lambda j: -scores[j])[:b])
    return out


def test_top_b_per_class_invariants():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(200, generator=g)
    classes = torch.randint(0, 8, (200,), generator=g)
    idx = select_per_class(scores, classes, 8, per_class=3)
    assert idx.dtype == torch.int64 and idx.numel() == 24
    assert len(set(idx.tolist())) == 24
    assert torch.bincount(classes[idx], minlength=8).tolist() == [3] * 8
    assert set(idx.tolist()) == _top_b_loop(scores.tolist(), classes.tolist(), 8, 3)


def test_short_class_gives_its_slots_to_the_best_remaining():
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 9.0])
    classes = torch.tensor([0, 0, 0, 0, 1, 1, 2])  # class 2 has one member, b = 2
    idx = select_per_class(scores, classes, 3, per_class=2)
    assert idx.numel() == 6 and len(set(idx.tolist())) == 6
    # top-2 of each class: {0, 1}, {4, 5}, {6}; the free slot goes to the best remaining row (2)
    assert set(idx.tolist()) == {0, 1, 4, 5, 6, 2}
    sampled = select_per_class(scores, classes, 3, per_class=2, sample=True, generator=torch.Generator().manual_seed(0))
    assert sampled.numel() == 6 and len(set(sampled.tolist())) == 6 and 6 in sampled.tolist()


def test_empty_class_and_too_small_pool():
    scores = torch.arange(6, dtype=torch.float32)
    classes = torch.tensor([0, 0, 0, 0, 2, 2])  # class 1 is empty
    idx = select_per_class(scores, classes, 3, per_class=2, sample=True, generator=torch.Generator().manual_seed(3))
    assert idx.numel() == 6
    with pytest.raises(UserError, match="fewer than one batch"):
        select_per_class(scores[:5], classes[:5], 3, per_class=2)


def test_sampling_is_seeded_and_never_repeats():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(500, generator=g)
    classes = torch.randint(0, 4, (500,), generator=g)
    a = select_per_class(scores, classes, 4, 5, sample=True, generator=torch.Generator().manual_seed(42))
    b = select_per_class(scores, classes, 4, 5, sample=True, generator=torch.Generator().manual_seed(42))
    c = select_per_class(scores, classes, 4, 5, sample=True, generator=torch.Generator().manual_seed(43))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 20 and torch.bincount(classes[a], minlength=4).tolist() == [5] * 4


def _inclusion_probabilities(logits, b):
    """P(item in the sample) for b draws without replacement from the softmax, by enumeration."""
    w = [math.exp(x) for x in logits]
    probs = [0.0] * len(w)
    for seq in itertools.permutations(range(len(w)), b):
        p, left = 1.0, sum(w)
        for j in seq:
            p *= w[j] / left
            left -= w[j]
        for j in seq:
            probs[j] += p
    return probs


def test_sampling_frequencies_match_the_class_softmax():
    scores = torch.tensor([1.0, 0.0, -1.0, 0.5, 2.0, 0.0, 0.0])
    classes = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    draws = 6000
    g = torch.Generator().manual_seed(7)
    for b in (1, 2):
        hits = torch.zeros(7)
        for _ in range(draws):
            hits[select_per_class(scores, classes, 2, b, sample=True, generator=g)] += 1
        expected = _inclusion_probabilities(scores[:4].tolist(), b) + _inclusion_probabilities(scores[4:].tolist(), b)
        if b == 1:  # one draw per class is the class softmax of eq. 10
            torch.testing.assert_close(torch.tensor(expected[:4]), torch.softmax(scores[:4], 0))
        torch.testing.assert_close(hits / draws, torch.tensor(expected, dtype=torch.float32), atol=0.025, rtol=0)
