"""Policy cost: memory of a long round over a large pool, per-step scoring + selection
against one LLM training step, and the PPO update time.

    python benchmarks/bench_policy.py            # the figures of docs/policy.md
    python benchmarks/bench_policy.py --quick    # a smaller run to check the script
    python benchmarks/bench_policy.py --threads 1   # on a machine shared with other jobs

1. A round of T steps over N instructions (C classes, d_sem) plus one PPO update, with
   random stage values and a dummy reward (no LLM): peak RSS of the process, against what
   the paper's buffer of fused states (T x N x M float32) would hold.
2. Scoring + selection per step at N = 52,002 against one training step of a 10M-parameter
   Llama (B = 8 sequences of 256 tokens, forward + backward + AdamW), same process.
3. PPO update time of one round at N = 52,002, T = 100.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from tqdm import tqdm

from raise_select.features.table import FEATURE_COLUMNS, FeatureTable
from raise_select.policy import PolicyConfig, RaisePolicy, RolloutBuffer, StaticState


def synthetic_static(n: int, sem_dim: int, classes: int, seed: int = 0) -> StaticState:
    rng = np.random.default_rng(seed)
    cols = {c: rng.normal(size=n) for c in FEATURE_COLUMNS}
    cols["len_prompt"] = rng.integers(1, 512, n).astype(np.float64)
    cols["len_response"] = rng.integers(1, 512, n).astype(np.float64)
    ft = FeatureTable(
        ids=[f"{i:016x}" for i in range(n)],
        columns=cols,
        sem=rng.normal(size=(n, sem_dim)).astype(np.float32),
        cluster=rng.integers(0, classes, n).astype(np.int64),
        meta={"classes": classes},
    )
    return StaticState.from_features(ft)


def rollout(policy: RaisePolicy, steps: int, seed: int = 0, desc: str = "rollout") -> RolloutBuffer:
    """A round with random stage values and a dummy reward (no LLM)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(policy.static), dtype=torch.int64)
    buf = RolloutBuffer()
    for t in tqdm(range(steps), desc=desc, leave=False):
        perf = -2.0 + 0.5 * float(torch.rand(1, generator=gen))
        action = policy.act(perf, t / steps, counts, explore=True, generator=gen)
        buf.add(
            perf, t / steps, action.indices, action.log_prob, action.value, float(torch.randn(1, generator=gen)) * 0.01
        )
        counts.index_add_(0, action.indices, torch.ones_like(action.indices))
    return buf


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_memory(n: int, steps: int, classes: int, sem_dim: int) -> None:
    base = peak_rss_mb()
    static = synthetic_static(n, sem_dim, classes)
    # One PPO epoch: every epoch runs the same per-step loop, so the peak does not depend on
    # their number, only the time does (bench_update times the default 4).
    policy = RaisePolicy(static, PolicyConfig(ppo_epochs=1))
    t0 = time.perf_counter()
    buf = rollout(policy, steps, desc=f"rollout N={n} T={steps}")
    t1 = time.perf_counter()
    stats = policy.update(buf)
    t2 = time.perf_counter()
    fused_gb = steps * n * static.fused_dim * 4 / 1e9
    print(f"[memory] N={n:,} T={steps:,} C={classes} d_sem={sem_dim} (M={static.fused_dim})")
    print(
        f"  rollout {t1 - t0:.1f} s, PPO update ({policy.cfg.ppo_epochs} epochs) {t2 - t1:.1f} s, "
        f"entropy {stats['entropy']:.3f}"
    )
    print(f"  buffer: {buf.nbytes() / 1e6:.2f} MB; static state: {static.x.numel() * 4 / 1e6:.1f} MB")
    print(f"  peak RSS: {peak_rss_mb():.0f} MB (process before the pool: {base:.0f} MB); limit 2048 MB")
    print(f"  fused states T x N x M float32 (the paper's buffer) would take {fused_gb:.1f} GB")


def llama_train_step_seconds(repeats: int) -> tuple[float, int]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from raise_select.models.tiny import PRESETS, non_embedding_parameters

    spec = PRESETS["10m"]
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=spec.vocab_size,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
            max_position_embeddings=spec.max_position_embeddings,
            tie_word_embeddings=False,
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    tokens = torch.randint(0, spec.vocab_size, (8, 256))

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats, non_embedding_parameters(model)


def bench_step_ratio(n: int, classes: int, sem_dim: int, repeats: int) -> None:
    policy = RaisePolicy(synthetic_static(n, sem_dim, classes), PolicyConfig())
    counts = torch.zeros(n, dtype=torch.int64)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    policy.act(-2.0, 0.0, counts, explore=True, generator=gen)  # computes the static projection once
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in range(repeats):
        action = policy.act(-2.0, t / repeats, counts, explore=True, generator=gen)
        counts.index_add_(0, action.indices, torch.ones_like(action.indices))
    per_step = (time.perf_counter() - t0) / repeats
    train_step, params = llama_train_step_seconds(max(2, repeats // 20))
    print(
        f"[per step] N={n:,}: scoring + selection (act, explore) {per_step * 1e3:.2f} ms/step "
        f"(first call with the static projection: {first * 1e3:.1f} ms, once per actor version)"
    )
    print(
        f"  Llama {params / 1e6:.1f}M non-embedding params, B=8 x 256 tokens, "
        f"fwd+bwd+AdamW: {train_step * 1e3:.0f} ms/step"
    )
    print(f"  ratio: {100 * per_step / train_step:.2f}% of a training step (limit 2%)")


def bench_update(n: int, steps: int, classes: int, sem_dim: int) -> None:
    policy = RaisePolicy(synthetic_static(n, sem_dim, classes), PolicyConfig())
    buf = rollout(policy, steps, desc=f"rollout N={n} T={steps}")
    t0 = time.perf_counter()
    policy.update(buf)
    elapsed = time.perf_counter() - t0
    print(
        f"[PPO update] N={n:,} T={steps}: {elapsed:.2f} s per round ({policy.cfg.ppo_epochs} epochs, "
        f"{elapsed / (steps * policy.cfg.ppo_epochs) * 1e3:.1f} ms per step-pass)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check that the script runs")
    ap.add_argument("--classes", type=int, default=8, help="C, the number of classes")
    ap.add_argument("--sem-dim", type=int, default=32, help="d_sem")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for every part (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    big_n, big_t, n, t, reps = (200_000, 1_000, 52_002, 100, 40) if not args.quick else (20_000, 50, 5_000, 10, 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_memory(big_n, big_t, args.classes, args.sem_dim)  # first: the peak RSS is this part's
    bench_step_ratio(n, args.classes, args.sem_dim, reps)
    bench_update(n, t, args.classes, args.sem_dim)


if __name__ == "__main__":
    main()
