import re
from collections import Counter

import pytest

from raise_select.data.pools import load_pool
from raise_select.data.synthetic import (
    ALL,
    DEMO_FAMILIES,
    FAMILIES,
    GIBBERISH,
    NOISE_KINDS,
    TESTBEDS,
    Component,
    SyntheticConfig,
    demo_texts,
    generate_pool,
    generate_validation,
    is_clean_on_target,
    write_demo_data,
)
from raise_select.data.templates import render_prompt
from raise_select.errors import UserError

# The right answer of every family, written independently of the generator.
REFERENCE = {
    "add": lambda s: str(sum(int(n) for n in re.findall(r"\d+", s))),
    "sub": lambda s: str(int(s.split()[0]) - int(s.split()[2])),
    "reverse": lambda s: "".join(reversed(s)),
    "copy": lambda s: s,
    "sort": lambda s: "".join(sorted(s)),
    "upper": lambda s: s.upper(),
    "double": lambda s: s + " " + s,
}


def test_same_seed_same_pool_other_seed_other_pool():
    cfg = SyntheticConfig(size=120, seed=3)
    assert generate_pool(cfg) == generate_pool(SyntheticConfig(size=120, seed=3))
    assert generate_pool(cfg) != generate_pool(SyntheticConfig(size=120, seed=4))
    assert generate_validation(cfg) == generate_validation(SyntheticConfig(size=120, seed=3))


def test_family_and_noise_shares_are_exact():
    cfg = SyntheticConfig(size=602, noise=0.3, seed=1)
    pool = generate_pool(cfg)
    assert len(pool) == 602
    per_family = Counter(r["family"] for r in pool)
    # 602 = 6 * 100 + 2: the first two families get one more
    assert per_family == {f: 100 + (i < 2) for i, f in enumerate(DEMO_FAMILIES)}
    for fam, count in per_family.items():
        noisy = [r for r in pool if r["family"] == fam and not r["clean"]]
        assert len(noisy) == round(0.3 * count)
        kinds = Counter(r["noise"] for r in noisy)
        assert set(kinds) == set(NOISE_KINDS)
        assert max(kinds.values()) - min(kinds.values()) <= 1


def test_clean_responses_are_right_and_broken_ones_are_not():
    pool = generate_pool(SyntheticConfig(size=300, seed=2))
    for r in pool:
        right = REFERENCE[r["family"]](r["input"])
        if r["clean"]:
            assert r["noise"] == "none" and r["output"] == right
        else:
            assert r["output"] != right
            if r["noise"] == "truncated":
                assert right.startswith(r["output"]) and len(r["output"]) == len(right) // 2 > 0


def test_validation_is_clean_target_and_disjoint_from_pool():
    cfg = SyntheticConfig(size=1200, val_size=50, seed=0)
    val = generate_validation(cfg)
    assert len(val) == 50 and len({r["input"] for r in val}) == 50
    assert all(is_clean_on_target(r, "add") for r in val)
    assert all(r["output"] == REFERENCE["add"](r["input"]) for r in val)
    for seed in range(3):  # disjoint whatever the pool's seed
        pool_inputs = {r["input"] for r in generate_pool(SyntheticConfig(size=1200, seed=seed)) if r["family"] == "add"}
        assert not pool_inputs & {r["input"] for r in val}


def test_written_pool_loads_with_distinct_ids_and_metadata_kept_out_of_prompt(tmp_path):
    cfg = SyntheticConfig(size=240, val_size=10, seed=0)
    pool_path, val_path = write_demo_data(tmp_path, cfg)
    pool = load_pool(pool_path)
    assert len(pool) == 240 and pool.duplicates == 0 and pool.format == "alpaca"
    assert len(load_pool(val_path)) == 10
    for ex in pool.examples[:50]:
        prompt = render_prompt(ex.prompt_messages, record=ex.record)
        assert ex.record["input"] in prompt and ex.record["instruction"] in prompt
        assert "clean" not in prompt and "family" not in prompt and ex.record["noise"] not in prompt.split()
    share = sum(is_clean_on_target(e.record, "add") for e in pool.examples) / len(pool)
    assert share == pytest.approx(40 * 0.7 / 240)


def test_bad_settings_are_refused():
    with pytest.raises(UserError, match="unknown task family"):
        generate_pool(SyntheticConfig(families=["add", "poetry"]))
    with pytest.raises(UserError, match="target family"):
        generate_pool(SyntheticConfig(families=["copy", "sort"]))
    with pytest.raises(UserError, match="noise"):
        generate_pool(SyntheticConfig(noise=1.5))


def test_demo_texts_cover_the_template_and_every_family():
    texts = demo_texts(SyntheticConfig(size=60, val_size=5))
    assert len(texts) == 65
    assert all("### Response:\n" in t for t in texts)
    assert all(any(FAMILIES[f].instruction in t for t in texts) for f in DEMO_FAMILIES)


def test_composed_pool_has_exact_component_counts_and_right_answers():
    cfg = SyntheticConfig(
        size=203,
        target="add",
        seed=4,
        components=[
            Component("add", 0.1),
            Component("add", 0.1, "wrong"),
            Component("sub", 0.3),
            Component("copy", 0.29, "garbage"),
            Component(GIBBERISH, 0.21),
        ],
    )
    pool = generate_pool(cfg)
    counts = Counter((r["family"], r["noise"]) for r in pool)
    # largest remainders: 20.3, 20.3, 60.9, 58.87, 42.63 -> 20, 20, 61, 59, 43 (= 203)
    assert counts == {
        ("add", "none"): 20,
        ("add", "wrong"): 20,
        ("sub", "none"): 61,
        ("copy", "garbage"): 59,
        (GIBBERISH, GIBBERISH): 43,
    }
    for r in pool:
        if r["family"] == GIBBERISH:
            assert not r["clean"] and r["input"] == ""
            continue
        right = REFERENCE[r["family"]](r["input"])
        assert (r["output"] == right) == r["clean"]
    assert len({(r["instruction"], r["input"]) for r in pool if r["family"] != GIBBERISH}) == 203 - 43
    assert generate_pool(cfg) == pool


def test_components_must_sum_to_one():
    with pytest.raises(UserError, match="sum to 1"):
        generate_pool(SyntheticConfig(size=10, target="add", components=[Component("add", 0.5)]))


def test_validation_of_all_families_cycles_and_counts_any_clean_row():
    cfg = SyntheticConfig(size=120, target=ALL, families=["add", "copy", "upper"], val_size=7)
    val = generate_validation(cfg)
    assert [r["family"] for r in val] == ["add", "copy", "upper", "add", "copy", "upper", "add"]
    assert all(REFERENCE[r["family"]](r["input"]) == r["output"] for r in val)
    pool = generate_pool(cfg)
    assert {r["input"] for r in val}.isdisjoint(r["input"] for r in pool)
    assert is_clean_on_target({"family": "copy", "clean": True}, ALL)
    assert not is_clean_on_target({"family": "copy", "clean": False}, ALL)


@pytest.mark.parametrize("name", sorted(TESTBEDS))
def test_every_testbed_generates(name):
    cfg = TESTBEDS[name]
    pool = generate_pool(cfg)
    assert len(pool) == cfg.size
    good = sum(is_clean_on_target(r, cfg.target) for r in pool)
    assert 0 < good < len(pool)
