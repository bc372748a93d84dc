"""Per-step cost of the online selectors GREATS and RHO-LOSS against a plain training step,
measured in the same run on a tiny 10M-parameter Llama (or the model given with --model).

    taskset -c 1 python benchmarks/bench_online.py --threads 1     # 10m preset, 5 timed steps each
    python benchmarks/bench_online.py --quick --threads 1           # 1m preset, fewer rows and steps (seconds)
    python benchmarks/bench_online.py --model smollm2-135m-instruct --batch-size 4 --max-length 128 \
        --examples 32 --val-size 8 --steps 2 --threads 1            # a real model (any --model spec); --lora

The pool is the first `--examples` rows of the real Alpaca data, the validation (GREATS) and
holdout (RHO-LOSS) set `--val-size` GSM8K examples; B = 8 rows of at most 256 tokens. A plain
step is one AdamW update on 8 uniformly drawn rows (`LMTrainer.step`); each method's own
training steps are timed too, and "choose/train" is its choosing time over them. Both methods
draw `--candidates` x B candidates per step (4, GREATS's default; RHO-LOSS's default is 10).
A GREATS step adds a forward pass over the candidates and 2 validation rows and a backward
pass from the loss down to the first scored layer, with per-example inner products of the
scored layers; under LoRA (every adapter scored) its update takes the chosen rows' gradients
from that pass instead of a pass of its own, and `greats-l2` (`lora_last_layers: 2`) scores only
the last 2 blocks' adapters, so the backward stops there. A RHO-LOSS step adds a forward pass
over the candidates without gradients. That forward pass is timed alone too, on the plain
phase's model: 1 + its share of a plain step is the floor of any step that reads the
candidates' losses before it trains.
Each method takes one untimed warm-up step, then `--steps` timed ones; RHO-LOSS's one-off
irreducible-loss model (training on the holdout, scoring the pool) is timed apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raise_select.baselines import SelectionContext, make_baseline
from raise_select.baselines.online import candidate_sets, row_losses
from raise_select.data.pools import load_pool
from raise_select.data.validation import load_validation
from raise_select.models.tiny import build_tiny_model, non_embedding_parameters
from raise_select.training.loop import GivenGradients, LMConfig, LMTrainer

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def clock() -> float:
    """A host clock read after the GPU's queued work is done (CUDA runs asynchronously)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def timed_steps(trainer: LMTrainer, choose, sets, batch: int, steps: int) -> tuple[float, float]:
    """Mean seconds per step spent choosing and training, after one untimed warm-up step.
    `choose` returns the rows, or a `GivenGradients` (the update's gradient computed while choosing)."""
    select_s = train_s = 0.0
    for s in range(steps + 1):
        start = clock()
        rows = choose(next(sets), batch)
        mid = clock()
        trainer.step_with_gradients(rows) if isinstance(rows, GivenGradients) else trainer.step(rows)
        end = clock()
        if s:
            select_s += mid - start
            train_s += end - mid
    return select_s / steps, train_s / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DATA, help="the shared data folder (alpaca/, gsm8k/)")
    ap.add_argument(
        "--preset", default="10m", help="tiny Llama preset (test, 1m, 10m; 135m: SmolLM2-135M's shape, random weights)"
    )
    ap.add_argument(
        "--model", default=None, help="use this model (hub id, folder, .gguf or packaged name) instead of a tiny preset"
    )
    ap.add_argument("--examples", type=int, default=200, help="first N Alpaca examples form the pool")
    ap.add_argument("--val-size", type=int, default=32, help="GSM8K validation/holdout examples")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method")
    ap.add_argument("--candidates", type=int, default=4, help="candidate set per step, in batches of B (both methods)")
    ap.add_argument("--batch-size", type=int, default=8, help="B")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per example")
    ap.add_argument("--lora", action="store_true", help="train (and score) a LoRA adapter instead of all weights")
    ap.add_argument("--quick", action="store_true", help="1m preset, 64 examples, 8 validation rows, 2 steps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the model (default: a temp folder)")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.examples, args.val_size, args.steps = "1m", 64, 8, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    alpaca = args.data_dir / "alpaca" / "alpaca_data.json"
    if not alpaca.is_file():
        sys.exit(f"{alpaca} not found; pass --data-dir")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-online-"))
    pool = load_pool(alpaca, limit=args.examples)
    if args.model:
        from raise_select.models.resolve import resolve_model

        model_dir = Path(resolve_model(args.model))
    else:
        model_dir = work / f"model-{args.preset}"
        if not (model_dir / "config.json").is_file():
            build_tiny_model(
                model_dir, ["\n".join(c for _, c in e.messages) for e in pool.examples], preset=args.preset, seed=0
            )
    from transformers import AutoModelForCausalLM

    params = non_embedding_parameters(AutoModelForCausalLM.from_pretrained(model_dir))
    val = load_validation("gsm8k", args.data_dir, n=args.val_size, seed=0)
    b = args.batch_size
    lm = LMConfig(lr=1e-3, max_length=args.max_length, lora=args.lora)
    ctx = SelectionContext(model=str(model_dir), validation=val, batch_size=b, max_length=args.max_length, lm=lm)
    steps = args.steps + 1
    rng = np.random.default_rng(0)

    results = {}
    trainer = LMTrainer(str(model_dir), pool, lm, steps)
    results["plain"] = timed_steps(
        trainer,
        lambda rows, k: rng.choice(rows, size=k, replace=False).tolist(),
        candidate_sets(len(pool), b, 0),
        b,
        args.steps,
    )
    # The part of a step neither method can skip: a forward pass without gradients over the
    # step's candidates (RHO-LOSS's choosing pass), on the plain phase's model.
    sets = candidate_sets(len(pool), args.candidates * b, 0)
    forward_s = 0.0
    for s in range(args.steps + 1):
        enc = [trainer.encode(int(i)) for i in next(sets)]
        start = clock()
        row_losses(trainer.unwrapped, enc, trainer.tokenizer.pad_token_id, eval_mode=False)
        forward_s += (clock() - start) if s else 0.0
    forward_s /= args.steps
    prepare_s = {}
    # Under LoRA GREATS also runs with its backward pass cut to the last 2 blocks' adapters.
    variants = [("greats", "greats", {}), ("rho", "rho", {})]
    if args.lora:
        variants.insert(1, ("greats-l2", "greats", {"lora_last_layers": 2}))
    scored = {}
    for label, name, extra in variants:
        method = make_baseline(name, {"candidates": args.candidates, **extra})
        trainer = LMTrainer(str(model_dir), pool, lm, steps)
        start = clock()
        info = method.prepare(pool, trainer, ctx)
        prepare_s[label] = clock() - start
        sets = candidate_sets(len(pool), method.candidates * b, 0)

        def choose(rows, k, method=method, trainer=trainer):
            picks = method.choose(trainer, rows, k)[0]
            given = method.given_gradients(trainer, picks)
            return picks.tolist() if given is None else given

        results[label] = timed_steps(trainer, choose, sets, b, args.steps)
        if name == "greats":
            scored[label] = (info["scored_parameters"], info["update_from_scoring_pass"])

    plain = sum(results["plain"])
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} thread(s)"
    print(
        f"model: {args.model or 'preset ' + args.preset}, {params / 1e6:.2f}M non-embedding parameters, "
        f"{'LoRA' if args.lora else 'full fine-tuning'}; B = {b}, max {args.max_length} tokens, "
        f"{where}; {args.candidates} x B candidates"
    )
    for label, (dim, reuse) in scored.items():
        print(f"{label} scores {dim:,} parameters; {'update from the scoring pass' if reuse else 'update of its own'}")
    # "choose / train": choosing against the training steps of the same phase, which a loaded
    # machine's drift between phases disturbs less than the ratio to the plain phase.
    print(f"{'method':9} {'choose ms':>10} {'train ms':>9} {'step ms':>9} {'x plain':>8} {'choose/train':>13}")
    for name, (sel, tr) in results.items():
        print(
            f"{name:9} {sel * 1e3:10.0f} {tr * 1e3:9.0f} {(sel + tr) * 1e3:9.0f} "
            f"{(sel + tr) / plain:8.2f} {sel / tr:13.2f}"
        )
    print(
        f"floor: a forward pass without gradients over the {args.candidates} x B candidates takes "
        f"{forward_s * 1e3:.0f} ms ({forward_s / plain:.2f} plain steps), so a step that reads the candidates' "
        f"losses and then trains costs at least {1 + forward_s / plain:.2f}x plain"
    )
    print(
        f"one-off: GREATS {prepare_s['greats']:.1f} s (encode validation); RHO-LOSS {prepare_s['rho']:.1f} s "
        f"(train the irreducible-loss model on {args.val_size} holdout rows, score {len(pool)} pool rows)"
    )
    print(json.dumps({"results_s": results, "forward_s": forward_s, "prepare_s": prepare_s}))


if __name__ == "__main__":
    main()
