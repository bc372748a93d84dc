"""What a step's credit labels cost: the validation gradient and per-row dots against the rows' Gram matrix.

The dense per-row credit c_i = lr <g_val, g_i> (training/credit.py) needs only the block of
inner products between the labelled rows and the validation objective's gradient. It is now
computed as one gradient of the validation objective (`gradients.objective_gradient`) and one
forward and truncated backward pass over the rows (`gradients.per_example_dots`). The reference
is the Gram matrix of rows and validation rows together (`gradients.per_example_gram`, as
GREATS computes it), averaged over the validation columns: the same numbers (checked here,
relative error printed) at a cost that grows with (rows + validation rows)^2 tokens^2.

    OMP_NUM_THREADS=1 python benchmarks/bench_credit.py                 # SmolLM2-135M-Instruct, LoRA
    python benchmarks/bench_credit.py --model /tmp/tiny --rows 16 --val 8   # any model folder

Prints seconds per step of labels for both, their ratio, and the largest relative difference.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def gram_reference(credit, rows: list[int]) -> torch.Tensor:
    """<g_i, g_val> from the Gram matrix of the rows and the validation rows (one pass over all of
    them, `per_example_gram`), averaged over the validation columns: the credit's former form."""
    from raise_select.training.gradients import per_example_gram
    from raise_select.training.loop import collate

    trainer = credit.trainer
    model = trainer.unwrapped
    encoded = [trainer.encode(i) for i in rows] + list(credit.val)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    chunks = [order[s : s + 8] for s in range(0, len(order), 8)]
    batches = [collate([encoded[i] for i in c], trainer.tokenizer.pad_token_id) for c in chunks]
    model.eval()
    gram = per_example_gram(model, credit.modules, batches)
    model.train()
    back = torch.argsort(torch.tensor([i for c in chunks for i in c]))
    gram = gram[back][:, back]
    n = len(rows)
    return gram[:n, n:].mean(dim=1).cpu()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pool", default="../shared/data/alpaca/alpaca_data.json")
    p.add_argument("--val", default="gsm8k", help="a named validation set (response loss)")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--rows", type=int, default=16, help="labelled rows per step (the CREDIT preset: 8 + 8)")
    p.add_argument("--val-rows", type=int, default=8, help="validation rows per step (CREDIT: 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args(argv)

    from raise_select.data.pools import load_pool
    from raise_select.data.validation import load_validation
    from raise_select.training.credit import RowCredit
    from raise_select.training.loop import LMConfig, LMTrainer
    from raise_select.training.reward import Validator

    pool = load_pool(args.pool, limit=200)
    trainer = LMTrainer(args.model, pool, LMConfig(max_length=args.max_length, lr=1e-3, lora=True), total_steps=24)
    val = load_validation(args.val, args.data_dir, args.val_rows, 0)
    validator = Validator(val, trainer.tokenizer, "neg_loss", args.max_length)
    credit = RowCredit(trainer, validator, sample=0)
    rows = list(range(args.rows))
    new_t, ref_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        new = credit.credit(rows, lr=1.0)
        new_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = gram_reference(credit, rows)
        ref_t.append(time.perf_counter() - t)
    err = float(((new - ref).abs() / ref.abs().clamp_min(1e-12)).max())
    a, b = min(new_t), min(ref_t)
    print(f"model {args.model}; {args.rows} rows, {args.val_rows} validation rows; best of {args.repeats}")
    print(f"validation gradient + per-row dots: {a:.2f} s; rows' and validation rows' Gram matrix: {b:.2f} s")
    print(f"ratio (Gram / dots): {b / a:.2f}x; largest relative difference {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
