"""Does the learned policy choose better than random batches, and by how much of what a
perfect selection would gain? Every learning testbed x seeds, through the demo harness.

    python benchmarks/bench_learning.py                      # 4 testbeds x 3 seeds, 20 rounds
    python benchmarks/bench_learning.py --quick              # 2 testbeds x 2 seeds, 6 rounds (a few minutes)
    python benchmarks/bench_learning.py --ablation --testbeds demo,rare   # + the paper's form and each \
departure reverted
    python benchmarks/bench_learning.py --quick --credit-ablation   # + dense per-row credit, each row loss
    python benchmarks/bench_learning.py --quick --set credit=row --set row_loss=regression   # one policy setting
    python benchmarks/bench_learning.py --quick --use-seeds 5   # each trained policy used 5 times, RAISE the mean

For every testbed (`data.synthetic.TESTBEDS`: demo, rare, quality, topic) a pool and a
validation task are generated, a tiny Llama M_0 is built and an auxiliary model (M_0 trained
on a separate clean corpus) featurizes the pool. Per seed, at the same number of updates,
batch and learning rate: RAISE (train-policy for K rounds, then finetune with the policy),
RAND (uniformly random batches from the whole pool), IFD (uniform batches from the top-IFD
10% of the pool) and PERFECT (uniform batches from the clean on-target rows only: the
oracle). The oracle-gain fraction is (RAND - method) / (RAND - PERFECT) on the final
validation loss. Printed per testbed and seed: final losses, oracle gain, distinct rows
chosen, wall time; then the averages. Every run folder is kept under --out and reused by a
re-run (finished methods are not repeated; a policy resumes after its last round).

With --ablation the RAISE column is recomputed for the paper's literal settings, for the
package's settings with one departure reverted at a time, and with the per-item ratio (same testbeds and seeds,
RAND / PERFECT reused), and a table setting -> oracle gain per testbed and seed is printed.
With --credit-ablation the same for dense per-row credit (`policy.credit: row`) with each way
of learning from the labels, and a learning curve per round: the Spearman correlation of
F_theta's scores with the credit labels of rows it had not learnt from (`credit_spearman`, the
round's sampled rows before its update) and the round's validation metric P(M_T). `--set
KEY=VALUE` runs the RAISE column with those policy settings instead of the defaults (in its
own folders; RAND, IFD and PERFECT reused). `--use-seeds N` fine-tunes each trained policy N
times with other use draws and reports RAISE as their mean, so that a difference between two
settings is not the noise of one use (the sd over the runs is printed per pair).

Every run writes `<out>/results.jsonl` (the printed rows, one per testbed and seed);
`benchmarks/compare_learning.py` sets runs against a base run, pair by pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from raise_select.config import from_dict, merge, parse_overrides, to_dict
from raise_select.data.pools import load_pool
from raise_select.data.synthetic import TESTBEDS, is_clean_on_target
from raise_select.demo import DemoConfig, ifd_rows, oracle_gain, prepare, run_method
from raise_select.io import read_jsonl, write_text_atomic
from raise_select.logs import setup_logging
from raise_select.policy.agent import PAPER, PolicyConfig

# Each departure from the paper, reverted alone (the rest as in the package defaults).
ABLATION = {
    "package defaults": {},
    "use_rule topk (Algorithm 1)": {"use_rule": PAPER["use_rule"]},  # no retraining: the same policies, used top-b
    "paper (all three reverted)": dict(PAPER),
    "advantage gae (critic baseline)": {"advantage": PAPER["advantage"]},
    "gamma 0.99 (paper horizon)": {"gamma": PAPER["gamma"]},
    "ratio per_item (option)": {"ratio": "per_item"},
}

# Dense per-row credit (issue 33), each way of learning from the labels; the rest as in the package defaults.
CREDIT_ABLATION = {
    "package defaults": {},
    "credit row, row_loss none (labels unused)": {"credit": "row", "row_loss": "none"},
    "credit row, row_loss ranking": {"credit": "row", "row_loss": "ranking"},
    "credit row, row_loss regression": {"credit": "row", "row_loss": "regression"},
    "credit row, row_advantage (per_item)": {
        "credit": "row",
        "row_loss": "none",
        "ratio": "per_item",
        "row_advantage": True,
    },
    "credit row, ranking + row_advantage": {
        "credit": "row",
        "row_loss": "ranking",
        "ratio": "per_item",
        "row_advantage": True,
    },
}


def run_testbed(
    name: str, args, policy: PolicyConfig, tag: str, methods: list[str], change: dict | None = None
) -> list[dict]:
    change = change or {}
    cfg = DemoConfig(
        out=str(args.out / name),
        testbed=name,
        seeds=args.seeds,
        rounds=args.rounds,
        steps=args.steps,
        auxiliary_steps=args.auxiliary_steps,
        ifd=True,
        policy=policy,
    )
    paths = prepare(cfg)
    pool = load_pool(paths["pool"])
    val = load_pool(paths["val"]).examples
    target = TESTBEDS[name].target
    perfect = [i for i, e in enumerate(pool.examples) if is_clean_on_target(e.record, target)]
    rows = {"rand": list(range(len(pool))), "perfect": perfect, "ifd": ifd_rows(cfg, paths, pool)}
    out = []
    for seed in range(args.seeds):
        seed_dir = args.out / name / f"seed_{seed}"
        row = {"testbed": name, "seed": seed, "setting": tag}
        for method in methods:
            where, options = seed_dir, {}
            if method == "raise" and tag != "package defaults":
                where = seed_dir / "ablation" / re.sub(r"[^\w=.-]+", "_", tag.split(" (")[0])
                if set(change) == {"use_rule"}:  # no retraining: the package's policy, used with the other rule
                    options = {"policy_dir": seed_dir / "policy" / "policy", "use_rule": change["use_rule"]}
            r = run_method(cfg, paths, pool, val, method, seed, where, rows.get(method), **options)
            loss = r.val_loss
            if method == "raise":
                row["policy_run"] = str(where / "policy") if "policy_dir" not in options else None
                if args.use_seeds > 1:  # the same policy, fine-tuned again with other use draws
                    again = {**options, "policy_dir": options.get("policy_dir") or where / "policy" / "policy"}
                    row["raise_uses"] = [loss] + [
                        run_method(
                            cfg, paths, pool, val, method, use_seed(seed, u), where / f"use_{u}", **again
                        ).val_loss
                        for u in range(1, args.use_seeds)
                    ]
                    loss = statistics.fmean(row["raise_uses"])
            row[method] = loss
            row[f"{method}_distinct"] = r.distinct
            row[f"{method}_share"] = r.clean_on_target
            row[f"{method}_seconds"] = r.seconds
            if method == "raise":  # measured time of the whole method, also when its runs were reused
                row["raise_seconds"] = _recorded_seconds(where, options)
        for method in ("raise", "ifd"):
            if method in row:
                row[f"{method}_gain"] = oracle_gain(row[method], row["rand"], row["perfect"])
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def use_seed(seed: int, use: int) -> int:
    """The seed of a trained policy's `use`-th extra fine-tuning run (--use-seeds): its own draws, apart from
    every testbed seed's."""
    return seed + 1000 * use


def _recorded_seconds(run_dir: Path, options: dict) -> float:
    """Seconds the RAISE cell took as its run folders record them: the reference episode, every
    round (training, reward, scoring, PPO) and the fine-tuning run with the policy."""

    def seconds(path: Path, kinds: tuple[str, ...]) -> float:
        if not path.is_file():
            return 0.0
        return sum(sum(m["time"].values()) for m in read_jsonl(path, what="metrics log") if m.get("kind") in kinds)

    policy_run = run_dir / "policy" if "policy_dir" not in options else Path(options["policy_dir"]).parent
    total = seconds(run_dir / "raise" / "metrics.jsonl", ("finetune",))
    return total + (0.0 if "policy_dir" in options else seconds(policy_run / "metrics.jsonl", ("reference", "round")))


def table(rows: list[dict]) -> str:
    lines = [
        "| testbed | seed | RAISE | RAND | IFD | PERFECT | RAISE oracle gain | IFD oracle gain | RAISE distinct rows | "
        "RAISE clean on-target | RAISE wall time |",
        "|---" * 11 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['testbed']} | {r['seed']} | {r['raise']:.3f} | {r['rand']:.3f} | "
            f"{r['ifd']:.3f} | {r['perfect']:.3f} | "
            f"{r['raise_gain']:.0%} | {r['ifd_gain']:.0%} | {r['raise_distinct']} | {r['raise_share']:.0%} | "
            f"{r['raise_seconds']:.0f} s |"
        )
    gains = [r["raise_gain"] for r in rows]
    wins = sum(r["raise"] < r["rand"] for r in rows)
    beats_ifd = sum(r["raise"] < r["ifd"] for r in rows)
    lines.append("")
    lines.append(
        f"RAISE below RAND on {wins}/{len(rows)} (testbed, seed) pairs, below IFD on {beats_ifd}/{len(rows)}; "
        f"mean oracle gain {statistics.fmean(gains):.0%} (min {min(gains):.0%}); "
        f"IFD mean oracle gain {statistics.fmean(r['ifd_gain'] for r in rows):.0%}"
    )
    for name in dict.fromkeys(r["testbed"] for r in rows):
        mine = [r["raise_gain"] for r in rows if r["testbed"] == name]
        lines.append(f"  {name}: mean oracle gain {statistics.fmean(mine):.0%} over {len(mine)} seeds")
    return "\n".join(lines)


def use_note(rows: list[dict], uses: int) -> str:
    """With --use-seeds: what RAISE's column is, and the spread of its oracle gain over the use draws."""
    spread = []
    for r in rows:
        gains = [oracle_gain(x, r["rand"], r["perfect"]) for x in r["raise_uses"]]
        spread.append(f"{r['testbed']} s{r['seed']} {statistics.fmean(gains):.0%} (sd {statistics.stdev(gains):.0%})")
    return (
        f"\nRAISE: the mean final loss of {uses} fine-tuning runs with each trained policy (use seeds seed + "
        f"1000 u); oracle gain per pair, mean (sd over the runs): " + "; ".join(spread)
    )


def learning_curve(rows: list[dict]) -> str:
    """Per setting with credit labels and per round: the mean over (testbed, seed) of the held-out
    Spearman correlation of F_theta's scores with the credit labels, and of the round's P(M_T)."""
    curves: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for r in rows:
        path = Path(r["policy_run"]) / "metrics.jsonl" if r.get("policy_run") else None
        if path is None or not path.is_file():
            continue
        for m in read_jsonl(path, what="metrics log"):
            if m.get("kind") == "round" and "credit_spearman" in m:
                curves.setdefault(r["setting"], {}).setdefault(m["round"], []).append(
                    (m["credit_spearman"], m["final_P"])
                )
    if not curves:
        return ""
    rounds = sorted({k for c in curves.values() for k in c})
    lines = [
        "| setting | " + " | ".join(f"round {k}: rho / P" for k in rounds) + " |",
        "|---" * (len(rounds) + 1) + "|",
    ]
    for tag, curve in curves.items():
        cells = []
        for k in rounds:
            pairs = curve.get(k, [])
            rho = [a for a, _ in pairs if a == a]  # nan: no two credits differed
            cells.append(
                f"{statistics.fmean(rho):+.2f} / {statistics.fmean(p for _, p in pairs):.3f}" if pairs else "-"
            )
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(rows: list[dict], testbeds: list[str], seeds: int) -> str:
    head = [f"{t} s{s}" for t in testbeds for s in range(seeds)]
    lines = ["| setting | " + " | ".join(head) + " | mean |", "|---" * (len(head) + 2) + "|"]
    for tag in dict.fromkeys(r["setting"] for r in rows):
        gains = [
            next(r["raise_gain"] for r in rows if r["setting"] == tag and r["testbed"] == t and r["seed"] == s)
            for t in testbeds
            for s in range(seeds)
        ]
        lines.append(f"| {tag} | " + " | ".join(f"{g:.0%}" for g in gains) + f" | {statistics.fmean(gains):.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testbeds", default=",".join(TESTBEDS), help=f"comma-separated, from {', '.join(TESTBEDS)}")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20, help="K: policy-training rounds (the paper's 20)")
    ap.add_argument("--steps", type=int, default=100, help="T: updates per round and per fine-tuning run")
    ap.add_argument("--auxiliary-steps", type=int, default=300, help="updates of the auxiliary (featurizing) model")
    ap.add_argument("--quick", action="store_true", help="demo and rare, 2 seeds, 6 rounds")
    ap.add_argument("--ablation", action="store_true", help="also the paper's settings and each departure reverted")
    ap.add_argument(
        "--credit-ablation",
        action="store_true",
        help="also dense per-row credit (policy.credit row) with each row loss, and the learning curve per round",
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a policy setting of the RAISE column (PolicyConfig field, e.g. credit=row); repeatable",
    )
    ap.add_argument(
        "--use-seeds",
        type=int,
        default=1,
        help="fine-tune each trained policy this many times with other use draws; RAISE's loss and oracle gain are "
        "then the mean over them (use-time noise apart from policy-training noise)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench_learning"))
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: a ~50k-parameter model gains nothing from more)"
    )
    args = ap.parse_args()
    if args.use_seeds < 1:
        sys.exit("--use-seeds must be >= 1")
    if args.quick:
        args.testbeds, args.seeds, args.rounds = "demo,rare", 2, 6
    testbeds = [t.strip() for t in args.testbeds.split(",") if t.strip()]
    unknown = [t for t in testbeds if t not in TESTBEDS]
    if unknown:
        sys.exit(f"unknown testbed(s) {unknown}; available: {', '.join(TESTBEDS)}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logging(args.out)
    start = time.perf_counter()
    base = PolicyConfig(per_class=8)
    tag, change = "package defaults", {}
    if args.sets:
        change = parse_overrides(args.sets)
        try:
            base = from_dict(PolicyConfig, merge(to_dict(base), change), "--set")
        except Exception as e:  # UserError from the settings' own check, or an unknown field
            sys.exit(f"--set: {e}")
        tag = "policy " + ", ".join(args.sets)
    rows = []
    for name in testbeds:
        rows += run_testbed(name, args, base, tag, ["raise", "rand", "ifd", "perfect"], change)
    # one line per (testbed, seed), as printed: what benchmarks/compare_learning.py reads
    write_text_atomic(args.out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    print(
        f"\n{len(testbeds)} testbed(s) x {args.seeds} seed(s), {args.rounds} rounds of {args.steps} steps, batch "
        f"{base.per_class}; {time.perf_counter() - start:.0f} s in all\n"
    )
    print(table(rows))
    if args.use_seeds > 1:
        print(use_note(rows, args.use_seeds))
    curve = learning_curve(rows)  # with --set credit=row: the RAISE column's own curve
    if curve:
        print("\nLearning curve (mean over testbeds and seeds; rho: held-out Spearman of scores with credit):\n")
        print(curve)
    if args.ablation:
        ablation = [dict(r) for r in rows]
        for tag, change in ABLATION.items():
            if not change:
                continue
            for name in testbeds:
                ablation += run_testbed(
                    name, args, dataclasses.replace(base, **change), tag, ["raise", "rand", "ifd", "perfect"], change
                )
        print("\nOracle gain of RAISE per setting (testbed, seed):\n")
        print(ablation_table(ablation, testbeds, args.seeds))
    if args.credit_ablation:
        ablation = [dict(r) for r in rows]
        for tag, change in CREDIT_ABLATION.items():
            if not change:
                continue
            for name in testbeds:
                ablation += run_testbed(
                    name, args, dataclasses.replace(base, **change), tag, ["raise", "rand", "ifd", "perfect"], change
                )
        print("\nOracle gain of RAISE per credit setting (testbed, seed):\n")
        print(ablation_table(ablation, testbeds, args.seeds))
        for tag in CREDIT_ABLATION:
            mine = [r for r in ablation if r["setting"] == tag]
            above = sum(r["raise"] > r["rand"] for r in mine)
            seconds = statistics.fmean(r["raise_seconds"] for r in mine)
            print(f"  {tag}: {above}/{len(mine)} pairs above RAND; mean RAISE wall time {seconds:.0f} s")
        print("\nLearning curve (mean over testbeds and seeds; rho: held-out Spearman of scores with credit):\n")
        print(learning_curve(ablation))
    print(f"\n{time.perf_counter() - start:.0f} s in all; run folders under {args.out}")


if __name__ == "__main__":
    main()
