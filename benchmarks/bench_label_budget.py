"""How many labelled rows does the amortized scorer need? Selection quality against the label budget.

`policy.label_budget` labels a uniform sample of the pool with each row's first-order credit on
M_0 (lr <g_val, g_i>, the target's own metric: the gold choice's cross-entropy on multiple-choice
targets) and fits F_theta to their order; F_theta then scores every row of the pool from its
features alone. This script measures, per target, how well the fitted scores order rows whose
credit F_theta never saw:

1. `--labels` rows of the study's pool are labelled once per target, through train-policy itself
   (`rounds 0`, `label_holdout 0`: its `labels.json`), on the study's validation file of that
   target (32 rows, as the study's RAISE cells read). The folder is reused when its inputs match.
2. A fixed `--holdout` of those rows is kept out; for each budget b and fit seed, F_theta (a fresh
   policy of that seed) is fitted to b of the others and scored on the held-out rows:
   Spearman's rho, and the share of the held-out rows' best attainable (centred) credit that the
   top tenth by score captures (`policy.credit.top_share`: 1 for the true top tenth, about 0 for a
   random order).
   Beside it, the same with a ridge regression (scikit-learn, alpha by generalised
   cross-validation) on the same inputs, and the credit of the rows' own features one at a time.

How much of a label is its validation sample? Two more measurements of the same labelled rows
on the same M_0 (one pass over the rows per target):

3. `--noise`: credit against the first and the second half of the study's 64-row validation file
   and against all of it, in both g_val forms (`policy.credit_val_norm` mean and unit), with each
   row's gradient norm (the cosine forms): split-half reliability, agreement with LESS's pool
   scores (`--less-cells`), a ridge fit's held-out rho on each form. The first half's labels are
   recomputed too and must equal labels.json (the table says by how much they differ).
4. `--reliability SIZE...`: a file of `--validation-rows` rows of the target's validation part;
   each labelled row's credit against each of its items, C[i, j] = lr <g_j, g_i>, from the rows'
   and items' gradients taken once (g_val is linear in the items: a sample's labels are means of
   C's columns); per SIZE, `--pairs` random pairs of disjoint samples: split-half Spearman and
   agreement with the labels from all other items, in the four forms.

    python benchmarks/bench_label_budget.py --study runs/study_real_credit --targets arc_challenge
    python benchmarks/bench_label_budget.py --report      # the table from the saved labels only
    python benchmarks/bench_label_budget.py --noise       # label_noise.{json,md}
    python benchmarks/bench_label_budget.py --reliability 4 8 16 32 64 128   # label_reliability.{json,md}

Output: <out>/label_budget.{json,md} (and label_noise, label_reliability); the labels' runs in
<study>/label_budget/<target>-n<labels>-s<seed>/ with noise.json and reliability-<rows>.npz.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from raise_select.errors import UserError
from raise_select.features.table import DIFFICULTY_COLUMNS
from raise_select.io import write_json_atomic, write_text_atomic
from raise_select.policy import PolicyConfig, RaisePolicy, StaticState
from raise_select.policy.credit import spearman, top_share


def label_settings(study: Path, config: str, target: str, n: int, seed: int, out: Path) -> dict:
    """train-policy's settings for labelling `n` rows of `target` with rounds 0, with the study
    config's train-policy settings and `raise:` section (as its RAISE cells get them)."""
    from raise_select.config import resolve
    from raise_select.experiments.plan import StudyConfig, job_settings, matched_step_count, method_sections

    cfg = resolve(StudyConfig, "study", config, [])
    options = method_sections(config, [], ["raise"])["raise"]
    policy = {**options.get("policy", {}), "label_budget": n, "label_holdout": 0.0, "label_epochs": 1}
    return {
        **job_settings(cfg, "train_policy"),
        **options,
        "model": cfg.model,
        "pool": str(study / "pool.jsonl"),
        "features": str(study / "features"),
        "val": str(study / "targets" / f"{target}_validation.jsonl"),
        "out": str(out),
        "seed": seed,
        "steps": matched_step_count(cfg, cfg.pool_size),
        "rounds": 0,
        "policy": policy,
    }


def labelled(study: Path, target: str, args) -> Path | None:
    """The folder of `target`'s labels (labelled now if missing), or None under --report when missing."""
    folder = study / "label_budget" / f"{target}-n{args.labels}-s{args.seed}"
    if args.report and not (folder / "labels.json").is_file():
        return None
    return label_run(study, args.config, target, args.labels, args.seed)


def label_run(study: Path, config: str, target: str, n: int, seed: int) -> Path:
    """train-policy with rounds 0 and a label budget of `n`: the folder holding labels.json."""
    from raise_select.config import from_dict
    from raise_select.training import TrainPolicyConfig, train_policy

    out = study / "label_budget" / f"{target}-n{n}-s{seed}"
    if (out / "labels.json").is_file() and (out / "policy").is_dir():
        return out
    settings = label_settings(study, config, target, n, seed, out)
    train_policy(from_dict(TrainPolicyConfig, settings, f"{config}: label run"))
    return out


def labeller_for(settings: dict, config: str):
    """train-policy's set-up for `settings` (M_0 seeded, the validator, the pool and its features) and a
    `RowCredit` on it: (its config, the labeller)."""
    from raise_select.config import from_dict
    from raise_select.training import TrainPolicyConfig
    from raise_select.training.credit import RowCredit
    from raise_select.training.train_policy import start_policy_job

    cfg = from_dict(TrainPolicyConfig, settings, f"{config}: label measurement")
    job = start_policy_job(cfg)
    return cfg, RowCredit(
        job.trainer, job.validator, sample=0, val_norm=cfg.policy.credit_val_norm, examples=job.val_examples
    )


# credit against the validation file's first half, its second half and all of it: g_val the mean
# objective's gradient, then the mean of unit item gradients (`RowCredit` val_norm "unit")
NOISE_KEYS = tuple(f"credit_{part}{form}" for form in ("", "_unit") for part in ("first", "second", "all"))


def saved_noise(folder: Path) -> dict | None:
    """`folder/noise.json` when it measured the labels' rows in every form, else None."""
    path = folder / "noise.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    rows = json.loads((folder / "labels.json").read_text())["rows"]
    return saved if saved["rows"] == rows and all(k in saved for k in NOISE_KEYS) else None


def noise_run(study: Path, config: str, target: str, folder: Path, seed: int) -> dict:
    """The labels of `folder/labels.json` measured again, on the same M_0, from one pass over their
    rows: credit against the first and the second half of the target's validation file (the label
    run read the first `val_size` rows) and against all of it, and each row's gradient norm. Saved
    to `folder/noise.json`, reused when its rows are the labels' rows."""
    from raise_select.data.validation import load_validation

    rec = json.loads((folder / "labels.json").read_text())
    saved = saved_noise(folder)
    if saved is not None:
        return saved
    path = folder / "noise.json"
    settings = label_settings(study, config, target, len(rec["rows"]), seed, folder.with_name(folder.name + "-noise"))
    n_val = len(load_validation(settings["val"], None, None, seed))
    half = int(settings.get("val_size") or n_val)
    if 2 * half > n_val:
        raise UserError(f"{settings['val']}: {n_val} rows, fewer than two halves of {half}")
    cfg, labeller = labeller_for({**settings, "val_size": 2 * half}, config)
    halves = [list(range(half)), list(range(half, 2 * half))]
    start = time.perf_counter()
    directions = []
    with labeller.measuring():
        for form in ("mean", "unit"):  # NOISE_KEYS' order; the whole file's g_val is the mean of its halves'
            first, second = (labeller.validation_gradient(h, form) for h in halves)
            both = [[(a + b) / 2 for a, b in zip(pa, pb)] for pa, pb in zip(first, second)]
            directions += [first, second, both]
    credit, size = labeller.project(rec["rows"], directions, lr=cfg.lr, desc=f"{target}: credit x6 + norms", norms=True)
    out = {"rows": rec["rows"], "half": half}
    for k, key in enumerate(NOISE_KEYS):
        out[key] = credit[:, k].tolist()
    out["grad_norm"] = size.tolist()
    out["seconds"] = round(time.perf_counter() - start, 2)
    write_json_atomic(path, out)
    return out


def reliability_run(study: Path, config: str, target: str, folder: Path, seed: int, n: int) -> dict:
    """Every labelled row's credit against every item of a validation file of `n` rows drawn from
    the target's validation part (`data_dir` of the study config, seeded): C[i, j] = lr <g_j, g_i>,
    from the rows' and the items' gradients (each taken once). Any validation sample S then labels
    row i with the mean of C[i, S] (the credit, g_val linear in the items), or of C[i, S] / |g_j|
    (`val_norm` unit). Saved to `folder/reliability-<n>.npz` (C, the rows, the norms), reused when
    its rows match."""
    from raise_select.config import resolve
    from raise_select.data.pools import to_format
    from raise_select.data.validation import load_validation
    from raise_select.experiments.plan import TARGETS, StudyConfig
    from raise_select.io import atomic_path
    from raise_select.progress import progress_bar

    rec = json.loads((folder / "labels.json").read_text())
    path = folder / f"reliability-{n}.npz"
    if path.is_file():
        saved = dict(np.load(path))
        if saved["rows"].tolist() == rec["rows"]:
            return saved
    study_cfg = resolve(StudyConfig, "study", config, [])
    val = load_validation(target, study_cfg.data_dir, n=n, seed=seed, split=TARGETS[target])
    if len(val) < n:
        raise UserError(f"{target}: its validation part has {len(val)} rows, fewer than {n}")
    val_file = folder / f"validation-{n}.jsonl"
    write_text_atomic(val_file, "".join(json.dumps(to_format(e, "messages")) + "\n" for e in val))
    settings = label_settings(study, config, target, len(rec["rows"]), seed, folder.with_name(folder.name + "-rel"))
    cfg, labeller = labeller_for({**settings, "val": str(val_file), "val_size": n}, config)
    start = time.perf_counter()
    with labeller.measuring():
        items = torch.stack(
            [
                labeller.flat_gradient(labeller.validation_gradient([j], "mean"))
                for j in progress_bar(range(n), total=n, desc=f"{target}: item gradients", unit="item")
            ]
        )
    rows = labeller.row_gradients(rec["rows"], desc=f"{target}: row gradients")
    out = {
        "rows": np.asarray(rec["rows"]),
        "credit": (cfg.lr * (rows.double() @ items.double().T)).numpy(),
        "item_norm": items.double().norm(dim=1).numpy(),
        "row_norm": rows.double().norm(dim=1).numpy(),
        "seconds": np.asarray(time.perf_counter() - start),
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **out)
    return out


RELIABILITY_FORMS = ("mean", "mean, cosine", "unit", "unit, cosine")


def reliability_table(rel: dict, sizes: list[int], pairs: int, seed: int = 0) -> dict:
    """Per validation sample size k and label form, over `pairs` random draws of two disjoint
    k-item samples S, S' of the file's items: Spearman's rho between the labels from S and from S'
    (split-half reliability), and between those from S and from all the other items (agreement
    with the best label the file gives). Forms: the credit (mean of C[i, S]), against unit items
    (mean of C[i, S] / |g_j|), and each over the row's gradient norm (cosine). Mean and std."""
    credit = np.asarray(rel["credit"], dtype=np.float64)
    n = credit.shape[1]
    per_item = {"mean": credit, "unit": credit / np.maximum(np.asarray(rel["item_norm"]), 1e-30)[None, :]}
    row_norm = np.maximum(np.asarray(rel["row_norm"]), 1e-30)
    rng = np.random.default_rng(seed)

    def rho(a, b) -> float:
        return spearman(torch.from_numpy(a), torch.from_numpy(b))

    out = {}
    for k in [k for k in sizes if 2 * k <= n]:
        cells = {f: {"split_half": [], "vs_rest": []} for f in RELIABILITY_FORMS}
        for _ in range(pairs):
            perm = rng.permutation(n)
            first, second, rest = perm[:k], perm[k : 2 * k], perm[k:]
            for form in RELIABILITY_FORMS:
                base, cosine = form.split(", ")[0], form.endswith("cosine")
                scale = row_norm if cosine else 1.0
                c = per_item[base]
                a, b, r = (c[:, idx].mean(axis=1) / scale for idx in (first, second, rest))
                cells[form]["split_half"].append(rho(a, b))
                cells[form]["vs_rest"].append(rho(a, r))
        out[str(k)] = {f: {m: [float(np.mean(v)), float(np.std(v))] for m, v in c.items()} for f, c in cells.items()}
    return out


def noise_table(static: StaticState, rec: dict, noise: dict, less: np.ndarray | None, args) -> dict:
    """How much of a label is its validation sample: Spearman's rho between the labels of two
    disjoint validation halves (split-half reliability; Spearman-Brown gives the full file's), for
    each form of the label: the credit; over the row's gradient norm (cosine); against the mean of
    unit item gradients; both (LESS's mean cosine over validation examples). Beside it, agreement
    with LESS's pool scores where given, and a ridge fit's held-out rho on each form."""
    from sklearn.linear_model import RidgeCV

    def rho(a, b) -> float:
        return spearman(*(torch.as_tensor(np.asarray(v, dtype=np.float64)) for v in (a, b)))

    rows = np.asarray(noise["rows"])
    size = np.maximum(np.asarray(noise["grad_norm"]), 1e-30)
    label = np.asarray(rec["credit"])
    first = np.asarray(noise["credit_first"])
    forms = {}
    for name, suffix, per_row in [
        ("inner", "", 1.0),
        ("cosine", "", size),
        ("unit validation items", "_unit", 1.0),
        ("unit items, cosine (LESS's form)", "_unit", size),
    ]:
        if f"credit_first{suffix}" in noise:
            forms[name] = tuple(np.asarray(noise[f"credit_{p}{suffix}"]) / per_row for p in ("first", "second", "all"))
    perm = np.random.default_rng(0).permutation(len(rows))
    held, rest = perm[: args.holdout], perm[args.holdout :]
    x = static.x.numpy()
    blocks = {"state": x, "difficulty": x[:, : len(DIFFICULTY_COLUMNS)]}
    out = {
        "rerun_matches_labels": float(np.max(np.abs(first - label)) / (np.max(np.abs(label)) + 1e-30)),
        "norm_rho": {name: rho(x[rows, j], size) for j, name in enumerate(DIFFICULTY_COLUMNS)},
        "norm_vs_credit_rho": rho(size, np.asarray(noise["credit_all"])),
        "forms": {},
    }
    for name, (a, b, c) in forms.items():
        r = rho(a, b)
        fit = {}
        for block, xb in blocks.items():
            z = (c[rest] - c[rest].mean()) / (c[rest].std() + 1e-30)
            ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(xb[rows[rest]], z)
            fit[block] = rho(ridge.predict(xb[rows[held]]), c[held])
        out["forms"][name] = {
            "split_half_rho": r,
            "spearman_brown_full": 2 * r / (1 + r) if r > -1 else None,
            "half_vs_full_rho": rho(a, c),
            "less_rho": None if less is None else rho(c, less[rows]),
            "ridge_held_out_rho": fit,
        }
    return out


def curve(static: StaticState, rows: np.ndarray, credit: np.ndarray, args) -> dict:
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(0)
    perm = rng.permutation(len(rows))
    held, rest = perm[: args.holdout], perm[args.holdout :]
    x = static.x.numpy()
    out = {"held_out": int(len(held)), "budgets": {}}
    zero = torch.zeros(len(static), dtype=torch.int64)
    for b in [b for b in args.budgets if b <= len(rest)]:
        cells = {"mlp_rho": [], "mlp_top": [], "ridge_rho": [], "ridge_top": []}
        for s in range(args.fit_seeds):
            fit = np.random.default_rng(1000 + s).choice(rest, size=b, replace=False)
            policy = RaisePolicy(static, PolicyConfig(per_class=1, seed=s, row_loss=args.row_loss))
            policy.fit_labels(
                torch.from_numpy(rows[fit]),
                torch.from_numpy(credit[fit]),
                0.0,
                args.epochs,
                torch.Generator().manual_seed(s),
            )
            pred = policy.scores(0.0, 0.0, zero).numpy()[rows[held]]
            cells["mlp_rho"].append(spearman(torch.from_numpy(pred), torch.from_numpy(credit[held])))
            cells["mlp_top"].append(top_share(pred, credit[held]))
            z = (credit[fit] - credit[fit].mean()) / (credit[fit].std() + 1e-30)
            ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x[rows[fit]], z)
            rp = ridge.predict(x[rows[held]])
            cells["ridge_rho"].append(spearman(torch.from_numpy(rp), torch.from_numpy(credit[held])))
            cells["ridge_top"].append(top_share(rp, credit[held]))
        out["budgets"][str(b)] = {k: [float(np.mean(v)), float(np.std(v))] for k, v in cells.items()}
    out["feature_rho"] = {  # the difficulty columns lead the static state
        name: spearman(torch.from_numpy(x[rows, j]), torch.from_numpy(credit))
        for j, name in enumerate(DIFFICULTY_COLUMNS)
    }
    return out


def less_scores(cells: Path, target: str) -> np.ndarray | None:
    """LESS's (metric target) pool scores of `target`: each seed's scores standardised, then averaged."""
    found = sorted(cells.glob(f"less_metric@{target}-s*/selection.json"))
    if not found:
        return None
    scores = [np.asarray(json.loads(f.read_text())["pool_scores"], dtype=np.float64) for f in found]
    return np.mean([(v - v.mean()) / (v.std() + 1e-30) for v in scores], axis=0)


def reliability_main(study: Path, out: Path, args) -> int:
    results = {"settings": {k: v for k, v in vars(args).items() if k != "report"}, "targets": {}}
    for target in args.targets:
        folder = labelled(study, target, args)
        if folder is None:
            continue
        if args.report and not (folder / f"reliability-{args.validation_rows}.npz").is_file():
            continue
        rel = reliability_run(study, args.config, target, folder, args.seed, args.validation_rows)
        results["targets"][target] = {
            "seconds": float(rel["seconds"]),
            "sizes": reliability_table(rel, sorted(args.reliability), args.pairs),
        }
        print(f"{target}: done", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "label_reliability.json", results)
    lines = [
        "| target | items per sample | " + " | ".join(f"{f}: split-half / vs rest" for f in RELIABILITY_FORMS) + " |",
        "|---|---|" + "---|" * len(RELIABILITY_FORMS),
    ]
    for target, r in results["targets"].items():
        for size, row in r["sizes"].items():
            cells = [
                f"{row[f]['split_half'][0]:+.2f} ± {row[f]['split_half'][1]:.2f} / {row[f]['vs_rest'][0]:+.2f}"
                for f in RELIABILITY_FORMS
            ]
            lines.append(f"| {target} | {size} | " + " | ".join(cells) + " |")
    write_text_atomic(out / "label_reliability.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def noise_main(study: Path, static: StaticState, out: Path, args) -> int:
    results = {"settings": {k: v for k, v in vars(args).items() if k != "report"}, "targets": {}}
    for target in args.targets:
        folder = labelled(study, target, args)
        if folder is None:
            continue
        if args.report and saved_noise(folder) is None:
            continue
        rec = json.loads((folder / "labels.json").read_text())
        noise = noise_run(study, args.config, target, folder, args.seed)
        less = less_scores(Path(args.less_cells), target)
        results["targets"][target] = {"seconds": noise["seconds"], **noise_table(static, rec, noise, less, args)}
        print(f"{target}: done", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "label_noise.json", results)
    lines = [
        "| target | form | split-half rho | full file (Spearman-Brown) | half vs full | vs LESS (metric target) "
        "| ridge held-out rho: state | difficulty only |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def num(v) -> str:
        return "n/a" if v is None else f"{v:+.3f}"

    for target, r in results["targets"].items():
        for form, f in r["forms"].items():
            fit = f["ridge_held_out_rho"]
            lines.append(
                f"| {target} | {form} | {num(f['split_half_rho'])} | {num(f['spearman_brown_full'])} | "
                f"{num(f['half_vs_full_rho'])} | {num(f['less_rho'])} | {num(fit['state'])} | "
                f"{num(fit['difficulty'])} |"
            )
    lines += ["", "Each row's gradient norm against its features and its credit (Spearman, all labelled rows):", ""]
    for target, r in results["targets"].items():
        feats = ", ".join(f"{k} {v:+.3f}" for k, v in r["norm_rho"].items())
        lines.append(
            f"- {target}: {feats}; credit (full file) {r['norm_vs_credit_rho']:+.3f}; "
            f"rerun of the labels: max relative difference {r['rerun_matches_labels']:.1e}"
        )
    write_text_atomic(out / "label_noise.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="runs/study_real_credit", help="study folder: pool.jsonl, features/, targets/")
    p.add_argument("--config", default="study_real_smollm2", help="the study's config: train-policy settings")
    p.add_argument("--targets", nargs="+", default=["gsm8k", "arc_challenge", "commonsenseqa"])
    p.add_argument("--labels", type=int, default=600, help="rows labelled per target")
    p.add_argument("--holdout", type=int, default=200, help="labelled rows kept out of every fit")
    p.add_argument("--budgets", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    p.add_argument("--fit-seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=200, help="label_epochs of each fit")
    p.add_argument("--row-loss", default="ranking", choices=["ranking", "regression"])
    p.add_argument("--seed", type=int, default=0, help="the label run's seed (its rows and validation sample)")
    p.add_argument("--out", default="benchmarks/results/label_budget")
    p.add_argument("--report", action="store_true", help="only tabulate targets whose labels exist")
    p.add_argument(
        "--noise",
        action="store_true",
        help="measure the labels again against two halves of the validation file and all of it, with the "
        "rows' gradient norms (one pass over the labelled rows per target): label_noise.{json,md}",
    )
    p.add_argument(
        "--reliability",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="the labels' split-half reliability against disjoint validation samples of each SIZE items, drawn "
        "from a file of --validation-rows rows of the target's validation part (each labelled row's credit against "
        "each item, from one pass over the rows and one per item): label_reliability.{json,md}",
    )
    p.add_argument("--validation-rows", type=int, default=256, help="with --reliability: the file's rows")
    p.add_argument("--pairs", type=int, default=50, help="with --reliability: random sample pairs per size")
    p.add_argument(
        "--less-cells",
        default="runs/study_real_smollm2/cells",
        help="with --noise: a study's cells folder whose less_metric@<target>-s* selections give LESS's pool scores",
    )
    args = p.parse_args(argv)
    study, out = Path(args.study), Path(args.out)
    from raise_select.data.pools import load_pool
    from raise_select.features.table import FeatureTable

    pool = load_pool(str(study / "pool.jsonl"))
    static = StaticState.from_features(FeatureTable.read(study / "features").align(pool.ids))
    if args.noise:
        return noise_main(study, static, out, args)
    if args.reliability:
        return reliability_main(study, out, args)
    results = {"settings": {k: v for k, v in vars(args).items() if k != "report"}, "targets": {}}
    for target in args.targets:
        folder = labelled(study, target, args)
        if folder is None:
            continue
        rec = json.loads((folder / "labels.json").read_text())
        rows, credit = np.asarray(rec["rows"]), np.asarray(rec["credit"], dtype=np.float64)
        if not np.isfinite(credit).all():
            raise UserError(f"{folder / 'labels.json'}: non-finite credit")
        results["targets"][target] = {
            "objective": rec["objective"],
            "label_seconds": rec["label_seconds"],
            "labels": len(rows),
            **curve(static, rows, credit, args),
        }
        print(f"{target}: done", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "label_budget.json", results)
    lines = [
        "| target | budget | F_theta rho | F_theta top-10% share | ridge rho | ridge top-10% share |",
        "|---|---|---|---|---|---|",
    ]
    for target, r in results["targets"].items():
        for b, c in r["budgets"].items():
            lines.append(
                f"| {target} | {b} | {c['mlp_rho'][0]:+.3f} ± {c['mlp_rho'][1]:.3f} | {c['mlp_top'][0]:+.3f} | "
                f"{c['ridge_rho'][0]:+.3f} ± {c['ridge_rho'][1]:.3f} | {c['ridge_top'][0]:+.3f} |"
            )
    lines += ["", "Single features against the credit (Spearman over all labelled rows):", ""]
    for target, r in results["targets"].items():
        lines.append(f"- {target}: " + ", ".join(f"{k} {v:+.3f}" for k, v in r["feature_rho"].items()))
    write_text_atomic(out / "label_budget.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
