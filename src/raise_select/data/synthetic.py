"""The built-in demo data: a generated instruction pool and a validation set.

The pool mixes several short task families (2-digit addition, reversing, copying,
sorting, capitalising or doubling a word). A fixed share of every family has a broken
response, split evenly between three kinds of noise:

- `wrong`: the correct answer of another input of the same family (looks plausible);
- `truncated`: the first half of the correct answer;
- `garbage`: random characters.

One family (the target, `add` by default) matches the validation task. The validation
set holds clean target-family examples whose inputs never occur in the pool (a fixed
hash split of the inputs), so the pool and the validation set are disjoint whatever
their sizes and seeds.

Records are Alpaca rows with three metadata fields the prompt never shows
(`family`, `clean`, `noise`): the demo uses them to measure which share of the chosen
instructions is clean and on-target. Everything is seeded by one integer.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..io import atomic_path

NOISE_KINDS = ("wrong", "truncated", "garbage")
_LETTERS = string.ascii_lowercase
_GARBAGE = string.ascii_letters + string.digits + "#$%&*+-/<=>@^~"
_HELD_OUT_BUCKETS = 8  # one input in 8 of every family is reserved for validation sets


@dataclass(frozen=True)
class Family:
    """One task family: a fixed instruction and a generator of (input, answer) pairs."""

    name: str
    instruction: str
    make_input: Callable[[random.Random], str]
    answer: Callable[[str], str]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 6)))


def _two_numbers(rng: random.Random) -> str:
    return f"{rng.randint(10, 99)} + {rng.randint(10, 99)}"


def _sum(text: str) -> str:
    a, b = text.split(" + ")
    return str(int(a) + int(b))


def _two_numbers_minus(rng: random.Random) -> str:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"{max(a, b)} - {min(a, b)}"


def _difference(text: str) -> str:
    a, b = text.split(" - ")
    return str(int(a) - int(b))


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("add", "Add the two numbers.", _two_numbers, _sum),
        Family("sub", "Subtract the second number from the first.", _two_numbers_minus, _difference),
        Family("reverse", "Reverse the word.", _word, lambda w: w[::-1]),
        Family("copy", "Repeat the word.", _word, lambda w: w),
        Family("sort", "Sort the letters of the word.", _word, lambda w: "".join(sorted(w))),
        Family("upper", "Write the word in capital letters.", _word, str.upper),
        Family("double", "Write the word twice.", _word, lambda w: f"{w} {w}"),
    )
}


DEMO_FAMILIES = ("add", "reverse", "copy", "sort", "upper", "double")
GIBBERISH = "gibberish"  # a component of random-character instructions and responses (no family)
ALL = "*"  # target: every family (the validation task is the clean data of all of them)


@dataclass
class Component:
    """One part of a composed pool: `share` of the records, of one family and one kind of response."""

    family: str  # a FAMILIES name, or "gibberish"
    share: float  # fraction of the pool
    noise: str = "none"  # none (correct) or one of NOISE_KINDS


@dataclass
class SyntheticConfig:
    """Shape of the generated pool."""

    size: int = 1200  # pool records (split evenly over the families)
    families: list[str] = field(default_factory=lambda: list(DEMO_FAMILIES))  # task families in the pool
    target: str = "add"  # family the validation set is drawn from
    noise: float = 0.3  # share of every family whose response is broken
    val_size: int = 64  # validation examples (clean, target family, unseen inputs)
    seed: int = 0  # fixes the pool and the validation set
    components: list[Component] | None = None  # an explicit composition (replaces families/noise): see TESTBEDS

    def pool_families(self) -> list[str]:
        if self.components is None:
            return list(self.families)
        return list(dict.fromkeys(c.family for c in self.components if c.family != GIBBERISH))

    def check(self) -> None:
        families = self.pool_families()
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise UserError(
                f"unknown task famil{'ies' if len(unknown) > 1 else 'y'} {unknown}; available: {', '.join(FAMILIES)}"
            )
        if self.target != ALL and self.target not in families:
            raise UserError(f"target family '{self.target}' is not among the pool's families {families}")
        if self.components is not None:
            bad = [c for c in self.components if c.share <= 0 or c.noise not in ("none", *NOISE_KINDS)]
            if bad or abs(sum(c.share for c in self.components) - 1.0) > 1e-6:
                raise UserError(
                    "components: shares must be > 0 and sum to 1, noise one of none, " + ", ".join(NOISE_KINDS)
                )
        if not 0.0 <= self.noise < 1.0:
            raise UserError(f"noise must be in [0, 1), got {self.noise}")
        if self.size < len(self.families):
            raise UserError(f"size {self.size} is smaller than the number of families ({len(self.families)})")
        if self.val_size < 1:
            raise UserError(f"val_size must be at least 1, got {self.val_size}")


def is_held_out(family: str, text: str) -> bool:
    """True for the inputs reserved for validation sets (a fixed hash split)."""
    digest = hashlib.sha256(f"{family}\x1f{text}".encode()).digest()
    return digest[0] % _HELD_OUT_BUCKETS == 0


def _record(fam: Family, text: str, output: str, noise: str) -> dict:
    return {
        "instruction": fam.instruction,
        "input": text,
        "output": output,
        "family": fam.name,
        "clean": noise == "none",
        "noise": noise,
    }


def _broken(fam: Family, text: str, kind: str, rng: random.Random) -> str:
    right = fam.answer(text)
    if kind == "wrong":
        while True:
            other = fam.answer(fam.make_input(rng))
            if other != right:
                return other
    if kind == "truncated":
        return right[: len(right) // 2]  # every answer has at least 2 characters
    if kind == "garbage":
        return "".join(rng.choice(_GARBAGE) for _ in range(len(right) + rng.randint(0, 4)))
    raise ValueError(kind)


def _family_counts(total: int, families: list[str]) -> dict[str, int]:
    base, extra = divmod(total, len(families))
    return {f: base + (i < extra) for i, f in enumerate(families)}


def generate_pool(cfg: SyntheticConfig) -> list[dict]:
    """`cfg.size` distinct Alpaca records in a seeded random order.

    Exact counts: every family gets `size / len(families)` records (the remainder goes
    to the first families), of which `round(noise * count)` are broken, split evenly
    over `NOISE_KINDS`. No two records share a prompt, and no target-family input is one
    of the held-out validation inputs.
    """
    cfg.check()
    if cfg.components is not None:
        return _composed_pool(cfg)
    rng = random.Random(cfg.seed)
    records: list[dict] = []
    for name, count in _family_counts(cfg.size, cfg.families).items():
        fam = FAMILIES[name]
        n_noisy = round(cfg.noise * count)
        kinds = ["none"] * (count - n_noisy) + [NOISE_KINDS[k % len(NOISE_KINDS)] for k in range(n_noisy)]
        seen: set[str] = set()
        for kind in kinds:
            for _ in range(10_000):
                text = fam.make_input(rng)
                if text not in seen and not is_held_out(name, text):
                    break
            else:
                raise UserError(f"family '{name}' has too few distinct inputs for a pool of {cfg.size}")
            seen.add(text)
            output = fam.answer(text) if kind == "none" else _broken(fam, text, kind, rng)
            records.append(_record(fam, text, output, kind))
    rng.shuffle(records)
    return records


def _composed_pool(cfg: SyntheticConfig) -> list[dict]:
    """A pool made of `cfg.components`: exact counts (largest remainders), distinct prompts."""
    rng = random.Random(cfg.seed)
    raw = [c.share * cfg.size for c in cfg.components]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: cfg.size - sum(counts)]:
        counts[i] += 1
    records: list[dict] = []
    seen: dict[str, set[str]] = {}
    for comp, count in zip(cfg.components, counts):
        for _ in range(count):
            if comp.family == GIBBERISH:
                records.append(_gibberish(rng))
                continue
            fam = FAMILIES[comp.family]
            used = seen.setdefault(comp.family, set())
            for _ in range(10_000):
                text = fam.make_input(rng)
                if text not in used and not is_held_out(fam.name, text):
                    break
            else:
                raise UserError(f"family '{comp.family}' has too few distinct inputs for a pool of {cfg.size}")
            used.add(text)
            output = fam.answer(text) if comp.noise == "none" else _broken(fam, text, comp.noise, rng)
            records.append(_record(fam, text, output, comp.noise))
    rng.shuffle(records)
    return records


def _gibberish(rng: random.Random) -> dict:
    words = [_word(rng) for _ in range(rng.randint(2, 4))]
    output = "".join(rng.choice(_GARBAGE) for _ in range(rng.randint(3, 8)))
    return {
        "instruction": " ".join(words).capitalize() + ".",
        "input": "",
        "output": output,
        "family": GIBBERISH,
        "clean": False,
        "noise": GIBBERISH,
    }


def generate_validation(cfg: SyntheticConfig) -> list[dict]:
    """`cfg.val_size` clean target-family records on held-out inputs (never in a pool).

    With target "*" the validation task is every family of the pool, in turn."""
    cfg.check()
    rng = random.Random(f"validation-{cfg.seed}")
    names = cfg.pool_families() if cfg.target == ALL else [cfg.target]
    seen: set[str] = set()
    out = []
    for k in range(cfg.val_size):
        fam = FAMILIES[names[k % len(names)]]
        for _ in range(100_000):
            text = fam.make_input(rng)
            if (fam.name, text) not in seen and is_held_out(fam.name, text):
                break
        else:
            raise UserError(f"family '{fam.name}' has too few held-out inputs for {cfg.val_size} validation examples")
        seen.add((fam.name, text))
        out.append(_record(fam, text, fam.answer(text), "none"))
    return out


def is_clean_on_target(record: dict, target: str) -> bool:
    """The demo's quality measure of one chosen instruction (target "*": any clean row)."""
    return bool(record.get("clean")) and (target == ALL or record.get("family") == target)


# Learning testbeds (benchmarks/bench_learning.py): pools of different structure. `demo` is
# the built-in demo's pool; the others are built so that the rows worth training on are
# found in different ways.
TESTBEDS: dict[str, SyntheticConfig] = {
    # Six families, 30% broken responses; validation: addition. Helpful rows: one topic.
    "demo": SyntheticConfig(size=1200, target="add", noise=0.3),
    # A rare target (3.5%) beside a twin of it with wrong answers (3.5%), a near-miss family
    # (subtraction, 10%), four unrelated families and 21% gibberish.
    "rare": SyntheticConfig(
        size=1600,
        target="add",
        components=[
            Component("add", 0.035),
            Component("add", 0.035, "wrong"),
            Component("sub", 0.10),
            *[Component(f, 0.155) for f in ("reverse", "copy", "sort", "upper")],
            Component(GIBBERISH, 0.21),
        ],
    ),
    # The target is response quality, not topic: validation is clean data of both families;
    # half of each family has a truncated or a garbage response.
    "quality": SyntheticConfig(
        size=1200,
        target=ALL,
        components=[
            Component("add", 0.25),
            Component("add", 0.125, "truncated"),
            Component("add", 0.125, "garbage"),
            Component("upper", 0.25),
            Component("upper", 0.125, "truncated"),
            Component("upper", 0.125, "garbage"),
        ],
    ),
    # Topic without noise, where length says nothing: capitalising a word has the same
    # response lengths as copying, reversing and sorting one; only the semantic state (and
    # log P) tells the target family from the others.
    "topic": SyntheticConfig(size=1200, target="upper", noise=0.0),
}


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return Path(path)


def write_demo_data(out_dir: str | Path, cfg: SyntheticConfig) -> tuple[Path, Path]:
    """Write `pool.jsonl` and `validation.jsonl` into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    return (
        write_jsonl(out_dir / "pool.jsonl", generate_pool(cfg)),
        write_jsonl(out_dir / "validation.jsonl", generate_validation(cfg)),
    )


def auxiliary_corpus(cfg: SyntheticConfig) -> SyntheticConfig:
    """The demo's auxiliary-model corpus for pool `cfg`: clean rows of the pool's families, at
    least twice the pool's size, on other inputs than the pool's (another seed)."""
    return SyntheticConfig(
        size=max(2 * cfg.size, 600),
        families=cfg.pool_families(),
        target=cfg.pool_families()[0],
        noise=0.0,
        val_size=1,
        seed=cfg.seed + 104_729,
    )


def demo_texts(cfg: SyntheticConfig | None = None) -> list[str]:
    """Texts to train the demo tokenizer on: the rendered prompts and responses of a pool."""
    from .templates import render_alpaca

    cfg = cfg or SyntheticConfig()
    texts = []
    for rec in generate_pool(cfg) + generate_validation(cfg):
        prompt = rec["instruction"] if not rec["input"] else f"{rec['instruction']}\n\n{rec['input']}"
        texts.append(render_alpaca([("user", prompt), ("assistant", rec["output"])], rec) + rec["output"])
    return texts
