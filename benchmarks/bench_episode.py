"""Wall-time split of one RAISE episode (one round of Algorithm 2) on a 10M-parameter model.

    python benchmarks/bench_episode.py --examples 1000 --steps 10 --val-size 32 --threads 1

A tiny Llama of preset `10m` (tokenizer trained on the pool's texts, random weights) is
featurized and trained on a slice of the real Alpaca pool, with GSM8K as validation set
(P = -validation loss); B = 8 classes x 1, 256 tokens. The round runs through
`train_policy` itself (rounds=1), and the split is read from its metrics: LLM training,
validation reward, policy scoring + selection, and the PPO update.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from raise_select.data.pools import load_pool
from raise_select.features import FeaturizeConfig, featurize
from raise_select.models.tiny import build_tiny_model, non_embedding_parameters
from raise_select.training import TrainPolicyConfig, train_policy

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DATA, help="the shared data folder (alpaca/, gsm8k/)")
    ap.add_argument("--examples", type=int, default=2000, help="first N Alpaca examples form the pool")
    ap.add_argument("--steps", type=int, default=20, help="T, steps of the episode")
    ap.add_argument("--val-size", type=int, default=64, help="GSM8K validation examples")
    ap.add_argument("--select-every", type=int, default=1, help="M: policy (and validation) every M steps")
    ap.add_argument("--classes", type=int, default=8, help="C; the batch is C x 1")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per example")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--work", type=Path, default=None, help="folder for the model, features and run (default: a temp folder)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    alpaca = args.data_dir / "alpaca" / "alpaca_data.json"
    if not alpaca.is_file():
        sys.exit(f"{alpaca} not found; pass --data-dir")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-episode-"))
    work.mkdir(parents=True, exist_ok=True)

    pool = load_pool(alpaca, limit=args.examples)
    pool_file = work / "pool.json"
    pool_file.write_text(json.dumps([e.record for e in pool.examples]))
    model_dir = work / "model-10m"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, ["\n".join(c for _, c in e.messages) for e in pool.examples], preset="10m", seed=0)
    from transformers import AutoModelForCausalLM

    params = non_embedding_parameters(AutoModelForCausalLM.from_pretrained(model_dir))

    start = time.perf_counter()
    featurize(
        FeaturizeConfig(
            pool=str(pool_file),
            model=str(model_dir),
            out=str(work / "features"),
            max_length=args.max_length,
            classes=args.classes,
            device="cpu",
        )
    )
    featurize_s = time.perf_counter() - start

    run = work / "run"
    cfg = TrainPolicyConfig(
        pool=str(pool_file),
        features=str(work / "features"),
        model=str(model_dir),
        val="gsm8k",
        data_dir=str(args.data_dir),
        val_size=args.val_size,
        out=str(run),
        rounds=1,
        steps=args.steps,
        max_length=args.max_length,
        select_every=args.select_every,
    )
    if (run / "checkpoint").exists():
        import shutil

        shutil.rmtree(run)
    start = time.perf_counter()
    train_policy(cfg)
    episode_s = time.perf_counter() - start

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = next(m for m in metrics if m["kind"] == "round")
    split = summary["time"]
    total = sum(split.values())
    print(
        f"\nmodel: tiny Llama 10m ({params / 1e6:.1f}M non-embedding parameters), {torch.get_num_threads()} threads, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    print(
        f"pool: {len(pool)} Alpaca examples, {args.classes} classes, batch {args.classes}, {args.max_length} tokens; "
        f"validation: {args.val_size} GSM8K examples; T = {args.steps}, M = {args.select_every}"
    )
    print(f"featurize: {featurize_s:.1f}s; episode (train_policy, rounds=1, incl. loading): {episode_s:.1f}s")
    print(f"{'part':<10}{'seconds':>10}{'share':>8}{'per step (ms)':>16}")
    for key in ("train", "reward", "scoring", "ppo"):
        per_step = 1000 * split[key] / args.steps
        print(f"{key:<10}{split[key]:>10.2f}{100 * split[key] / total:>7.1f}%{per_step:>16.1f}")
    print(f"{'total':<10}{total:>10.2f}")
    print(
        f"scoring / train = {split['scoring'] / split['train']:.4f}; "
        f"ppo / train = {split['ppo'] / split['train']:.4f}; "
        f"reward / train = {split['reward'] / split['train']:.3f}"
    )
    print(f"return of the round: {summary['return']:+.5f} (P {summary['P0']:.4f} -> {summary['final_P']:.4f})")


if __name__ == "__main__":
    main()
