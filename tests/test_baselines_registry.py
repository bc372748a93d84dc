"""The registry of selection methods: one class per name."""

from dataclasses import dataclass

import pytest

from raise_select.baselines import BASELINES
from raise_select.baselines.registry import registry_of


def test_a_name_registered_twice_is_refused():
    @dataclass
    class First:
        name = "dup"

    @dataclass
    class Second:
        name = "dup"

    @dataclass
    class Other:
        name = "other"

    assert registry_of((First, Other)) == {"dup": First, "other": Other}
    with pytest.raises(ValueError, match="two selection methods are named 'dup': First and Second"):
        registry_of((First, Other, Second))


def test_every_registered_class_is_under_its_own_name():
    assert all(cls.name == name for name, cls in BASELINES.items())
