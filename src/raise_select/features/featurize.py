"""Pipeline step 1: featurize a pool with an auxiliary causal LM.

For every example d = (x, y) this computes the difficulty state of eq. 3 (len(x), len(y),
log P(y|x), log P(y), token means and sums), the IFD ratio PPL(y|x) / PPL(y), the semantic
state of eq. 4 (`semantic`) and a K-means class for the diversity constraint, and writes
a `FeatureTable` (`features.parquet` + `meta.json`) to the output folder.

The pool is cut into shards of `shard_size` examples that are scored and written one by
one (`shards`), so memory stays flat in the pool size and an interrupted run resumes
from the shards on disk. Under `accelerate launch` (or `torchrun`) shard k goes to
process k mod num_processes; every process writes its own shard files and the main
process reduces the embeddings, runs K-means over all shards and writes the table.

Reuse: the output's fingerprint covers the model's files, the template, max length, the
embedding settings, dtype, classes, seed and the pool's ids; an output folder holding the
same fingerprint is returned as is, anything else is recomputed.

Timing: every shard appends a line to `timing.jsonl` in the output folder (examples, tokens
fed to the model over both passes, seconds, process), so the compute time of a run that was
resumed several times is the sum of its shards' lines; `meta.json` holds that sum.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import check_fields, require_settings
from ..data.pools import Pool, load_pool
from ..data.templates import TEMPLATES
from ..errors import UserError
from ..io import append_jsonl, check_output, fingerprint, path_digest, read_jsonl
from ..models.loading import DTYPES, check_device
from ..progress import duration, progress_bar
from .scoring import ResponseScorer, encode_examples, forwarded_tokens, start_token_id
from .semantic import (
    PCA_FIT_ROWS,
    SEM_POOLS,
    adaptive_pool,
    encode_texts,
    example_text,
    fit_pca,
    kmeans_classes,
    load_sentence_encoder,
)
from .shards import SHARD_GLOB, Shard, shard_path
from .table import RDS_FILE, FeatureTable

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the computation changes, so old outputs are recomputed


@dataclass
class FeaturizeConfig:
    pool: Optional[str] = field(default=None, metadata={"help": "instruction pool: file, folder or `datasets` name"})
    format: Optional[str] = field(
        default=None, metadata={"help": "pool format: alpaca, sharegpt or messages; none: detected"}
    )
    limit: Optional[int] = field(default=None, metadata={"help": "featurize only the first N examples of the pool"})
    model: Optional[str] = field(default=None, metadata={"help": "auxiliary causal LM: hub id or local folder"})
    out: Optional[str] = field(default=None, metadata={"help": "output folder (features.parquet, meta.json, shards/)"})
    template: str = field(
        default="alpaca", metadata={"help": "prompt template: alpaca or chat (the tokenizer's chat template)"}
    )
    max_length: int = field(
        default=512, metadata={"help": "tokens of [start] + prompt + response; the prompt is cut first"}
    )
    batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "token sequences per forward pass (two per example); None: 8 on CPU (fits the cache), 32 on GPU"
        },
    )
    sem_dim: int = field(default=32, metadata={"help": "d_sem, size of the semantic state (paper: 32)"})
    sem_pool: str = field(
        default="mean", metadata={"help": "mean: adaptive average pooling of E(d); pca: scikit-learn PCA"}
    )
    embed_model: Optional[str] = field(
        default=None, metadata={"help": "sentence-transformers model for E(d) instead of the LM's hidden states"}
    )
    classes: int = field(default=8, metadata={"help": "C, K-means classes for the diversity constraint"})
    seed: int = field(default=0, metadata={"help": "seeds K-means and the PCA sample"})
    shard_size: int = field(default=2048, metadata={"help": "examples per shard file (a crash loses at most one)"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run code shipped with a hub model (off unless asked for)"}
    )
    dtype: str = field(default="float32", metadata={"help": "model weights dtype: float32, bfloat16, float16 or auto"})
    device: Optional[str] = field(
        default=None, metadata={"help": "torch device (cpu, cuda, cuda:1, ...); none: this process's accelerate device"}
    )
    rds: bool = field(
        default=False,
        metadata={
            "help": "also store RDS+'s representation of every row (the last hidden state, position-weighted mean over "
            "[start] + prompt + response) in rds.npy, from the same forward pass; read by the `rds` selector"
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the model body (inductor, dynamic shapes): on CPU about 15% more tokens/s on "
            "SmolLM2-135M after about 95 s of compiling, so worth it from a few thousand rows; results agree to ~1e-5"
        },
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        low = {"max_length": 2, "batch_size": 1, "sem_dim": 1, "classes": 1, "shard_size": 1}
        check_fields(
            self,
            [
                (self.template in TEMPLATES, "template", f"must be one of {', '.join(TEMPLATES)}"),
                (self.sem_pool in SEM_POOLS, "sem_pool", f"must be one of {', '.join(SEM_POOLS)}"),
                (self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}"),
                *[
                    (getattr(self, name) is None or getattr(self, name) >= least, name, f"must be at least {least}")
                    for name, least in low.items()
                ],
            ],
            "featurize",
        )
        check_device(self.device)


def featurize_inputs(cfg: FeaturizeConfig) -> dict:
    """The input paths the output folder must stay clear of (`io.check_output`)."""
    return {"--pool": cfg.pool, "--model": cfg.model, "--embed-model": cfg.embed_model}


# ---------------------------------------------------------------- fingerprints


def ifd_ratio(logp_cond: np.ndarray, logp_uncond: np.ndarray) -> np.ndarray:
    """Instruction-following difficulty as the reference (Cherry_LLM) computes it: the mean
    response loss given the prompt over the mean response loss without it, s(y|x) / s(y).
    Above 1 the prompt does not help (those rows are what IFD selection drops)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(logp_cond, dtype=np.float64) / np.asarray(logp_uncond, dtype=np.float64)
    # log P(y) = 0 only for a response the model is certain of: no difficulty to speak of.
    return np.where(np.asarray(logp_uncond) == 0, 1.0, out)


def _hash_folder(folder: Path) -> str:
    """The folder's content digest (`io.path_digest`: hashed once per process)."""
    return path_digest(folder)


def model_fingerprint(name_or_path: str) -> str:
    """Content hash of a local model folder (a GGUF or short name: of its converted folder),
    or the hub id with its cached revision."""
    from ..models.resolve import resolve_model

    name_or_path = resolve_model(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _hash_folder(path)
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        raise UserError(f"{name_or_path}: model folder not found")
    revision = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "config.json")
        if isinstance(cached, str):
            revision = Path(cached).parent.name  # .../snapshots/<commit>/config.json
    except Exception:  # not a valid repo id, or no cache: the id alone identifies it
        revision = None
    return f"{name_or_path}@{revision or 'unknown'}"


def _versions() -> dict:
    from ..logs import package_versions

    return package_versions(
        ("raise-select", "torch", "transformers", "accelerate", "scikit-learn", "pyarrow", "sentence-transformers")
    )


# ---------------------------------------------------------------- the run


def process_state(device: str | None = None):
    """This process's rank among those `accelerate launch` / `torchrun` started.

    On a machine without CUDA (or with `--device cpu`) the processes talk over gloo.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=(device or "").startswith("cpu") or not torch.cuda.is_available())


def featurize(
    cfg: FeaturizeConfig,
    pool: Pool | None = None,
    after_shard: Callable[[int], None] | None = None,
) -> FeatureTable:
    """Featurize `pool` (or `cfg.pool`) into `cfg.out`; reuse or resume what is there.

    `after_shard(k)` is called after shard k is written (progress hooks, tests).
    Every process of a distributed launch calls this; all return the finished table.
    """
    require_settings(cfg, ("model", "out") if pool is not None else ("pool", "model", "out"))
    check_output(cfg.out, featurize_inputs(cfg))
    if pool is None:
        pool = load_pool(cfg.pool, cfg.format, limit=cfg.limit)
    state = process_state(cfg.device)
    out = Path(cfg.out)

    inputs = {
        "version": FORMAT_VERSION,
        "model": model_fingerprint(cfg.model),
        "embed_model": model_fingerprint(cfg.embed_model) if cfg.embed_model else None,
        "template": cfg.template,
        "max_length": cfg.max_length,
        "sem_pool": cfg.sem_pool,
        # PCA shards keep the full embedding, so d_sem matters to them only through the end step.
        "shard_sem_dim": cfg.sem_dim if cfg.sem_pool == "mean" else None,
        "dtype": cfg.dtype,
        "pool": pool.fingerprint,
        **({"rds": "weighted_mean"} if cfg.rds else {}),
    }
    shard_fp = fingerprint({**inputs, "shard_size": cfg.shard_size})
    final_fp = fingerprint({**inputs, "sem_dim": cfg.sem_dim, "classes": cfg.classes, "seed": cfg.seed})

    existing = _reusable(out, final_fp)
    if existing is not None:
        log.info("%s: features for these inputs exist (fingerprint %s); reusing them", out, final_fp[:12])
        return existing

    shard_dir = out / "shards" / shard_fp[:16]
    if state.is_main_process:
        _remove_stale_shards(out / "shards", keep=shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    n_shards = -(-len(pool) // cfg.shard_size)
    mine = [k for k in range(state.process_index, n_shards, state.num_processes)]
    todo = [k for k in mine if not shard_path(shard_dir, k).is_file()]
    if len(todo) < len(mine):
        log.info("resuming: %d of this process's %d shard(s) are on disk", len(mine) - len(todo), len(mine))
    if todo:
        _compute_shards(cfg, pool, shard_dir, mine, todo, state, after_shard, shard_fp)
    state.wait_for_everyone()

    if state.is_main_process:
        table = _merge(cfg, pool, shard_dir, n_shards, final_fp, state.num_processes)
        timing = timing_summary(out, shard_fp, n_shards)
        table.meta["timing"] = timing
        table.write(out)
        log.info("wrote %d examples to %s", len(table), out / "features.parquet")
        if timing["tokens_per_s"] is not None:
            log.info(
                "scoring time over %d of %d shards (all resumes): %s, %d tokens, %.0f tokens/s",
                timing["shards_timed"],
                n_shards,
                duration(timing["seconds"]),
                timing["tokens"],
                timing["tokens_per_s"],
            )
    state.wait_for_everyone()
    return FeatureTable.read(out)


def _reusable(out: Path, final_fp: str) -> FeatureTable | None:
    if not (out / "features.parquet").is_file() or not (out / "meta.json").is_file():
        return None
    table = FeatureTable.read(out)
    return table if table.meta.get("fingerprint") == final_fp else None


def _remove_stale_shards(shards_root: Path, keep: Path) -> None:
    """Delete shard folders of other inputs (only folders holding nothing but our shard files)."""
    if not shards_root.is_dir():
        return
    for folder in shards_root.iterdir():
        if folder == keep or not folder.is_dir():
            continue
        if all(f.is_file() and (f.match(SHARD_GLOB) or f.name.startswith(".shard-")) for f in folder.iterdir()):
            log.info("inputs changed: removing old shards in %s", folder)
            shutil.rmtree(folder)


def _compute_shards(cfg, pool, shard_dir, mine, todo, state, after_shard, shard_fp: str) -> None:
    import torch

    from ..models.loading import load_model_and_tokenizer

    device = torch.device(cfg.device) if cfg.device else state.device
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype, device, cfg.trust_remote_code)
    model.eval()
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.max_length > max_pos:
        raise UserError(f"--max-length {cfg.max_length} is over the model's max_position_embeddings ({max_pos})")
    encoder = load_sentence_encoder(cfg.embed_model, device, cfg.trust_remote_code) if cfg.embed_model else None
    batch_size = cfg.batch_size or (8 if device.type == "cpu" else 32)
    scorer = ResponseScorer(
        model,
        start_token_id(tokenizer),
        tokenizer.pad_token_id,
        batch_size,
        device,
        embed=encoder is None,
        compile=cfg.compile,
        rds=cfg.rds,
    )
    size = lambda k: min(cfg.shard_size, len(pool) - k * cfg.shard_size)  # noqa: E731
    total = sum(size(k) for k in mine)
    done = total - sum(size(k) for k in todo)
    bar = progress_bar(
        total=total, initial=done, desc="featurize", unit="ex", disable=not state.is_main_process, dynamic_ncols=True
    )
    with bar:
        for k in todo:
            examples = pool.examples[k * cfg.shard_size : (k + 1) * cfg.shard_size]
            shown, sequences = 0, 0
            started = time.perf_counter()

            def advance(n_sequences: int) -> None:  # two sequences per example
                nonlocal shown, sequences
                sequences += n_sequences
                bar.update(sequences // 2 - shown)
                shown = sequences // 2

            shard = _score_shard(cfg, examples, tokenizer, scorer, encoder, advance)
            shard.write(shard_path(shard_dir, k))
            seconds = time.perf_counter() - started
            tokens = forwarded_tokens(shard.len_prompt, shard.len_response)
            append_jsonl(
                Path(cfg.out) / TIMING_FILE,
                {
                    "shard_set": shard_fp[:16],
                    "shard": k,
                    "process": state.process_index,
                    "examples": len(shard.ids),
                    "tokens": tokens,
                    "seconds": round(seconds, 3),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
            log.info(
                "shard %d: %d examples, %d tokens in %.1f s (%.0f tokens/s)",
                k,
                len(shard.ids),
                tokens,
                seconds,
                tokens / seconds if seconds > 0 else 0.0,
            )
            bar.update(len(examples) - shown)
            if after_shard is not None:
                after_shard(k)


TIMING_FILE = "timing.jsonl"


def timing_summary(out: Path, shard_fp: str, n_shards: int) -> dict:
    """Sum of the per-shard lines of `timing.jsonl` for these shards (`shard_set`: lines of
    other inputs' shards are passed over; a shard scored twice, its file having been lost,
    counts its last line)."""
    path = Path(out) / TIMING_FILE
    last: dict[int, dict] = {}
    if path.is_file():
        for record in read_jsonl(path):
            if record.get("shard_set") == shard_fp[:16]:
                last[int(record["shard"])] = record
    seconds = sum(float(r["seconds"]) for r in last.values())
    tokens = sum(int(r["tokens"]) for r in last.values())
    return {
        "shards_timed": len(last),
        "shards": n_shards,
        "seconds": round(seconds, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "note": "sum over shards of scoring time; model loading and the merge are not counted, "
        "compiling (compile: true) is, in the first shard each run scores",
    }


def _score_shard(cfg, examples, tokenizer, scorer, encoder, on_batch=None) -> Shard:
    encoded = encode_examples(examples, tokenizer, cfg.template, cfg.max_length)
    keep = [i for i, e in enumerate(encoded) if e.response_ids]
    skipped = {"response_has_no_tokens": len(encoded) - len(keep)} if len(keep) < len(encoded) else {}
    examples = [examples[i] for i in keep]
    encoded = [encoded[i] for i in keep]
    scores = scorer.score(encoded, on_batch)
    vectors = (
        scores.embedding
        if encoder is None
        else encode_texts(encoder, [example_text(e) for e in examples], scorer.batch_size)
    )
    if cfg.sem_pool == "mean":
        vectors = adaptive_pool(vectors, cfg.sem_dim)
    return Shard(
        ids=[e.id for e in examples],
        len_prompt=np.array([len(e.prompt_ids) for e in encoded], dtype=np.int64),
        len_response=np.array([len(e.response_ids) for e in encoded], dtype=np.int64),
        logp_cond_sum=scores.logp_cond_sum,
        logp_uncond_sum=scores.logp_uncond_sum,
        truncated=np.array([e.response_truncated for e in encoded], dtype=np.int64),
        prompt_cut=np.array([e.prompt_cut for e in encoded], dtype=np.int64),
        vectors=vectors,
        skipped=skipped,
        rds=scores.rds,
    )


def _merge(cfg, pool, shard_dir, n_shards, final_fp, num_processes) -> FeatureTable:
    """Join the shards in pool order, reduce E(d) to d_sem, run K-means, build the table."""
    shards = [Shard.read(shard_path(shard_dir, k), columns_only=True) for k in range(n_shards)]
    for k, s in enumerate(shards):
        expected = {e.id for e in pool.examples[k * cfg.shard_size : (k + 1) * cfg.shard_size]}
        if not set(s.ids) <= expected:
            raise UserError(
                f"{shard_path(shard_dir, k)}: holds examples of another pool; delete {shard_dir} and re-run"
            )
    cat = lambda name: np.concatenate([getattr(s, name) for s in shards])  # noqa: E731
    ids = [i for s in shards for i in s.ids]
    len_prompt, len_response = cat("len_prompt").astype(np.float64), cat("len_response").astype(np.float64)
    cond_sum, uncond_sum = cat("logp_cond_sum"), cat("logp_uncond_sum")
    logp_cond, logp_uncond = cond_sum / len_response, uncond_sum / len_response
    columns = {
        "len_prompt": len_prompt,
        "len_response": len_response,
        "logp_cond": logp_cond,
        "logp_uncond": logp_uncond,
        "logp_cond_sum": cond_sum,
        "logp_uncond_sum": uncond_sum,
        "ifd": ifd_ratio(logp_cond, logp_uncond),
        "truncated": cat("truncated").astype(np.float64),
    }
    sem = _semantic_state(cfg, shard_dir, n_shards, len(ids))
    cluster = kmeans_classes(sem, cfg.classes, cfg.seed)

    skipped = dict(pool.skipped)
    for s in shards:
        for reason, count in s.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    meta = {
        "fingerprint": final_fp,
        "model": cfg.model,
        "embed_model": cfg.embed_model,
        "template": cfg.template,
        "max_length": cfg.max_length,
        "dtype": cfg.dtype,
        "sem_dim": cfg.sem_dim,
        "sem_pool": cfg.sem_pool,
        "sem_source": "sentence-transformers" if cfg.embed_model else "lm-last-hidden-mean-over-response",
        "classes": cfg.classes,
        "seed": cfg.seed,
        "unconditional_prefix": "bos (eos when the tokenizer has no bos)",
        "pool": {
            "spec": str(cfg.pool),
            "format": pool.format,
            "sources": pool.sources,
            "fingerprint": pool.fingerprint,
        },
        "counts": {
            "pool_examples": len(pool),
            "examples": len(ids),
            "skipped": skipped,
            "duplicates": pool.duplicates,
            "truncated_responses": int(columns["truncated"].sum()),
            "truncated_prompts": int((cat("prompt_cut") > 0).sum()),
        },
        "shards": {"count": n_shards, "size": cfg.shard_size, "processes": num_processes},
        "config": asdict(cfg),
        "versions": _versions(),
    }
    rds = None
    if cfg.rds:
        rds = np.concatenate([Shard.read(shard_path(shard_dir, k)).rds for k in range(n_shards)]).astype(np.float32)
        meta["rds"] = {
            "file": RDS_FILE,
            "dim": int(rds.shape[1]),
            "pooling": "weighted_mean over [start] + prompt + response",
        }
    return FeatureTable(ids=ids, columns=columns, sem=sem, cluster=cluster, meta=meta, rds=rds)


def _semantic_state(cfg, shard_dir: Path, n_shards: int, n_rows: int) -> np.ndarray:
    """H_sem (eq. 4): pooled shard vectors, or a PCA fitted on a seeded sample of them."""
    paths = [shard_path(shard_dir, k) for k in range(n_shards)]
    if cfg.sem_pool == "mean":
        return np.concatenate([Shard.read(p).vectors for p in paths]).astype(np.float32)
    rng = np.random.default_rng(cfg.seed)
    take = np.sort(rng.choice(n_rows, size=min(n_rows, PCA_FIT_ROWS), replace=False))
    sample, start = [], 0
    for p in paths:  # one shard's full-size vectors in memory at a time
        v = Shard.read(p).vectors
        local = take[(take >= start) & (take < start + len(v))] - start
        sample.append(v[local])
        start += len(v)
    pca = fit_pca(np.concatenate(sample), cfg.sem_dim, cfg.seed)
    return np.concatenate([pca.transform(Shard.read(p).vectors) for p in paths]).astype(np.float32)
