"""Evaluate a model with lm-evaluation-harness on the named tasks (paper section 4, A.1-A.2).

With a data folder (`data_dir`), the project's own task definitions in `tasks/` read the
original files: for each task a resolved YAML (`include:` the shipped one, plus the
absolute `data_files` of its splits under `data_dir`) is written to `<out>/tasks/`, so the
exact tasks can be re-run with `lm_eval --include_path <out>/tasks`. Without a data
folder, lm-evaluation-harness's own hub tasks (`mmlu`, `arc_challenge`, `commonsense_qa`,
`gsm8k`, `mathqa`, `mmlu_college_mathematics`) are used.

The model runs through lm-eval's `HFLM` with `max_length` 512 as in the paper. Outputs in
`out`: `metrics.json` (per task: the headline score, its metric, every numeric metric and
the item count), `results.md` (a Markdown table) and `lm_eval_results.json` (lm-eval's
own results and task configs), all written atomically.

With `metric` other than `harness` (`main`, `choice_ce`, `choice_acc`, `neg_loss`,
`accuracy`; `evaluation.loss.heldout_values`), each task's held-out `split` (`test` or `dev`,
`data.benchmarks.split_parts`) is scored item by item instead: `items/<task>.jsonl` holds one
line per item (its source, row, id and value; for the choice metrics also the choices'
log-likelihoods, the gold index, the choice cross-entropy and accuracy), and `metrics.json`
the means. `main` is each task's main figure: the choice cross-entropy on multiple-choice
tasks, the response loss on GSM8K.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..config import check_fields
from ..data.benchmarks import BENCHMARKS, get_benchmark, load_docs
from ..errors import UserError
from ..io import write_json_atomic, write_text_atomic
from ..markdown import markdown_table
from ..models.loading import check_device

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
# The headline metric of each kind of task: accuracy for letter options; for GSM8K exact
# match of the last number generated (the strict "The answer is N" score is kept too).
MC_METRIC = "acc,none"
GSM8K_METRIC = "exact_match,flexible-extract"
HARNESS = "harness"
MAIN = "main"
ITEM_METRICS = ("neg_loss", "accuracy", "choice_ce", "choice_acc")  # training.reward.BUILTIN_METRICS
METRICS = (HARNESS, MAIN, *ITEM_METRICS)
SPLITS = ("test", "dev")
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


@dataclass
class EvaluateConfig:
    """`raise-select evaluate`: lm-evaluation-harness on one model."""

    model: str = field(default="", metadata={"help": "model folder (full model or LoRA adapter) or hub id"})
    tasks: list[str] = field(
        default_factory=lambda: ["mmlu", "arc_challenge", "commonsenseqa"],
        metadata={"help": "evaluation tasks (default: those of Table 1)"},
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "folder with the original files (../shared/data layout); None: lm-eval's hub tasks"},
    )
    num_fewshot: int = field(default=0, metadata={"help": "in-context examples per item"})
    limit: int | None = field(
        default=None, metadata={"help": "score only the first N items of each task (quick checks)"}
    )
    batch_size: int = field(default=8, metadata={"help": "lm-eval batch size"})
    device: str | None = field(default=None, metadata={"help": "torch device; none: cuda when available, else cpu"})
    dtype: str = field(default="float32", metadata={"help": "model weights dtype (float32, bfloat16, float16, auto)"})
    max_length: int = field(default=512, metadata={"help": "context length of the harness (appendix A.2)"})
    max_gen_toks: int = field(default=256, metadata={"help": "generation budget of generate_until tasks (GSM8K)"})
    seed: int = field(default=0, metadata={"help": "lm-eval's python/numpy/torch/few-shot seeds"})
    out: str = field(default="results", metadata={"help": "output folder"})
    metric: str = field(
        default=HARNESS,
        metadata={
            "help": "harness: lm-evaluation-harness's score per task; main (choice_ce on multiple-choice tasks, "
            "neg_loss on GSM8K), choice_ce, choice_acc, neg_loss or accuracy: per-item figures on each task's "
            "held-out split, written to items/<task>.jsonl (docs/metrics.md)"
        },
    )
    split: str = field(
        default="test",
        metadata={"help": "held-out set the per-item metrics score: test (report once) or dev (choose settings)"},
    )
    choice_form: str = field(
        default="cloze",
        metadata={"help": "choice metrics: cloze (each choice's text after the question) or letters (its letter)"},
    )
    template: str = field(default="alpaca", metadata={"help": "prompt template of neg_loss and accuracy"})

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_fields(
            self,
            [
                (self.limit is None or self.limit >= 1, "limit", "must be >= 1; leave it out to score every item"),
                (self.num_fewshot >= 0, "num_fewshot", "must be >= 0"),
                (self.batch_size >= 1, "batch_size", "must be >= 1"),
                (
                    self.max_length >= MIN_CONTEXT,
                    "max_length",
                    f"must be >= {MIN_CONTEXT}: a question and its answer need room",
                ),
                (self.max_gen_toks >= 1, "max_gen_toks", "must be >= 1"),
                (self.metric in METRICS, "metric", f"must be one of {', '.join(METRICS)}"),
                (self.split in SPLITS, "split", f"must be one of {', '.join(SPLITS)}"),
                (self.choice_form in ("cloze", "letters"), "choice_form", "must be cloze or letters"),
                (self.template in ("alpaca", "chat"), "template", "must be alpaca or chat"),
            ],
            "evaluate",
        )
        check_device(self.device)


# Below this many tokens of context the harness scores truncated fragments, not questions.
MIN_CONTEXT = 16


def available_tasks() -> list[str]:
    return list(BENCHMARKS)


def check_tasks(names: list[str]) -> list[str]:
    """Refuse unknown or missing task names, listing those that exist."""
    if not names:
        raise UserError(f"no task given; available: {', '.join(available_tasks())}")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; available: {', '.join(available_tasks())}")
    return list(dict.fromkeys(names))


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads a shipped task YAML without importing its `!function` hooks."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _shipped_config(name: str) -> dict:
    path = TASKS_DIR / f"{name}.yaml"
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYamlLoader)
    if "include" in cfg:
        base = yaml.load((TASKS_DIR / cfg.pop("include")).read_text(encoding="utf-8"), Loader=_TaskYamlLoader)
        cfg = {**base, **cfg}
    return cfg


def write_task_configs(names: list[str], data_dir: str | Path, out_dir: str | Path) -> Path:
    """Write one resolved YAML per task into `out_dir` with the files of `data_dir` filled in."""
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: data folder not found")
    out_dir = Path(out_dir)
    configs = {}  # every task's files checked before the first is written
    for name in check_tasks(names):
        spec = get_benchmark(name)
        shipped = _shipped_config(name)
        data_files = {}
        for split in dict.fromkeys(shipped[k] for k in _SPLIT_KEYS if shipped.get(k)):
            if not any(data_dir.glob(spec.files[split])):
                raise UserError(f"{data_dir / spec.files[split]}: no such file (the {name} {split} split)")
            # Parse every row here first: a bad row is then reported with its file, row and
            # field, not as an error deep inside the harness's own loader.
            load_docs(name, data_dir, split)
            data_files[split] = str(data_dir / spec.files[split])
        configs[name] = {
            "include": str(TASKS_DIR / f"{name}.yaml"),
            "task": name,
            "dataset_kwargs": {**(shipped.get("dataset_kwargs") or {}), "data_files": data_files},
        }
    for name, resolved in configs.items():
        write_text_atomic(out_dir / f"{name}.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return out_dir


def _hf_model_args(model: str) -> dict:
    """`HFLM` arguments for a full model or a LoRA adapter folder (base model + `peft`)."""
    from ..models.resolve import resolve_model

    model = resolve_model(model)
    adapter_cfg = Path(model) / "adapter_config.json"
    if adapter_cfg.is_file():
        base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise UserError(f"{adapter_cfg}: field 'base_model_name_or_path' missing; cannot load the LoRA adapter")
        return {"pretrained": resolve_model(base), "peft": model, "tokenizer": model}
    if not Path(model).exists() and (model.startswith((".", "/")) or model.endswith(("/",))):
        raise UserError(f"{model}: model folder not found")
    return {"pretrained": model}


def run_lm_eval(cfg: EvaluateConfig, lm=None) -> dict:
    """Run `lm_eval.simple_evaluate` and return its results dict.

    `lm` is an lm-eval `LM` to score instead of loading `cfg.model` with `HFLM`.
    """
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from safetensors import SafetensorError

    names = check_tasks(cfg.tasks)
    if not cfg.model and lm is None:
        raise UserError("no model given; pass --model FOLDER_OR_HUB_ID")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.data_dir is not None:
        new_task_dir = not (Path(cfg.out) / "tasks").exists()
        task_dir = write_task_configs(names, cfg.data_dir, Path(cfg.out) / "tasks")
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        task_names = names
    else:
        manager = TaskManager()
        task_names = [BENCHMARKS[n].lm_eval_task for n in names]
    if lm is None:
        try:
            lm = HFLM(
                **_hf_model_args(cfg.model),
                max_length=cfg.max_length,
                batch_size=cfg.batch_size,
                device=device,
                dtype=cfg.dtype,
            )
        except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: a truncated or corrupt weights file
            if cfg.data_dir is not None and new_task_dir:  # a refused run leaves no task files behind
                shutil.rmtree(task_dir, ignore_errors=True)
            raise UserError(f"model '{cfg.model}': cannot be loaded ({' '.join(str(e).split())[:300]})") from None
    log.info(
        "evaluating %s on %s (%s, %d-shot, limit %s)",
        cfg.model,
        ", ".join(names),
        "local files" if cfg.data_dir else "hub tasks",
        cfg.num_fewshot,
        cfg.limit,
    )
    try:
        results = simple_evaluate(
            model=lm,
            tasks=task_names,
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit,
            task_manager=manager,
            gen_kwargs={"max_gen_toks": cfg.max_gen_toks},
            log_samples=False,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
        )
    except OSError as e:  # the hub unreachable, or a dataset not there (no errno: not the machine's own error)
        if cfg.data_dir is not None or e.errno is not None:
            raise
        raise UserError(
            f"{', '.join(names)}: no --data-dir given and loading the tasks' data from the hub failed "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); pass --data-dir with the original "
            "files, or check the network"
        ) from None
    if results is None:  # only on non-zero ranks of a distributed run
        return {}
    results["task_names"] = dict(zip(names, task_names))
    return results


def summarize(results: dict) -> dict[str, dict]:
    """Per task (our names): headline `score`, its `metric`, all numeric `metrics`, item count `n`."""
    out: dict[str, dict] = {}
    for name, lm_name in results["task_names"].items():
        raw = results["results"].get(lm_name)
        if raw is None:
            raise UserError(f"lm-eval returned no results for task '{lm_name}'")
        metrics = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metric = MC_METRIC if BENCHMARKS[name].multiple_choice else GSM8K_METRIC
        if metric not in metrics:
            raise UserError(f"lm-eval results of '{lm_name}' have no '{metric}' (got {', '.join(metrics)})")
        n = results.get("n-samples", {}).get(lm_name, {}).get("effective")
        out[name] = {"score": metrics[metric], "metric": metric, "metrics": metrics, "n": n}
    return out


def results_markdown(model: str, scores: dict[str, dict]) -> str:
    if any("split" in s for s in scores.values()):
        return results_markdown_items(model, scores)
    rows = [
        [name, s["metric"], f"{100 * s['score']:.2f}", "" if s["n"] is None else str(s["n"])]
        for name, s in scores.items()
    ]
    return f"# {model}\n\n" + markdown_table(["task", "metric", "score (%)", "items"], rows)


def results_markdown_items(model: str, scores: dict[str, dict]) -> str:
    rows = [[name, s["metric"], s["split"], f"{s['score']:.4f}", str(s["n"])] for name, s in scores.items()]
    return f"# {model}\n\n" + markdown_table(["task", "metric", "split", "mean", "items"], rows)


def task_metric(cfg_metric: str, task: str) -> str:
    """The per-item metric a task is scored with (`main`: its main figure); choice metrics
    only on multiple-choice tasks."""
    from .loss import default_metric

    metric = default_metric(task) if cfg_metric == MAIN else cfg_metric
    if metric.startswith("choice_") and not BENCHMARKS[task].multiple_choice:
        raise UserError(f"--metric {metric}: task '{task}' has no choices; use neg_loss, accuracy or main")
    return metric


def heldout_examples(task: str, split: str, data_dir: str | None, limit: int | None):
    """The examples of a task's held-out `split` (`<task>:<split>`; a task without held-out
    sets is scored on its evaluation split, and only for `test`), first `limit` of them."""
    from ..data.benchmarks import load_named_set
    from ..data.validation import load_validation

    spec = BENCHMARKS[task]
    if spec.dev_split is not None:
        examples = load_validation(f"{task}:{split}", data_dir)
    elif split == "test":
        examples = load_named_set(task, Path(data_dir) if data_dir else None, spec.eval_split)
    else:
        raise UserError(f"task '{task}' has no dev set; use --split test")
    return examples[:limit] if limit is not None else examples


def evaluate_items(cfg: EvaluateConfig, model=None, tokenizer=None) -> dict[str, dict]:
    """Per-item figures of `cfg.metric` on each task's held-out split; writes
    `items/<task>.jsonl`, `metrics.json` and `results.md` into `cfg.out`."""
    import torch

    from ..models.resolve import resolve_model
    from .choices import score_choices
    from .loss import heldout_values, load_for_eval

    names = check_tasks(cfg.tasks)
    metrics = {name: task_metric(cfg.metric, name) for name in names}
    examples = {name: heldout_examples(name, cfg.split, cfg.data_dir, cfg.limit) for name in names}
    if model is None:
        if not cfg.model:
            raise UserError("no model given; pass --model FOLDER_OR_HUB_ID")
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        from safetensors import SafetensorError

        try:
            model, tokenizer = load_for_eval(resolve_model(cfg.model), dtype=cfg.dtype, device=device)
        except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: a truncated or corrupt weights file
            raise UserError(f"model '{cfg.model}': cannot be loaded ({' '.join(str(e).split())[:300]})") from None
    out = Path(cfg.out)
    scores: dict[str, dict] = {}
    for name in names:
        metric, items = metrics[name], examples[name]
        log.info("scoring %s %s (%d items) by %s", name, cfg.split, len(items), metric)
        rows = [{"index": i, "source": e.source, "row": e.row, "id": e.id} for i, e in enumerate(items)]
        summary: dict[str, float] = {}
        if metric.startswith("choice_"):
            s = score_choices(
                model,
                items,
                tokenizer=tokenizer,
                form=cfg.choice_form,
                batch_size=cfg.batch_size,
                max_length=cfg.max_length,
            )
            values = s.ce if metric == "choice_ce" else s.acc
            for r, ll, gold, ce, acc, acc_norm in zip(rows, s.loglik, s.gold, s.ce, s.acc, s.acc_norm):
                r.update(
                    loglik=[float(x) for x in ll],
                    gold=int(gold),
                    choice_ce=float(ce),
                    choice_acc=float(acc),
                    choice_acc_norm=float(acc_norm),
                )
            summary = {k: float(v) for k, v in s.summary().items() if k != "n"}
        else:
            values = heldout_values(
                model,
                items,
                metric=metric,
                template=cfg.template,
                max_length=cfg.max_length,
                batch_size=cfg.batch_size,
                tokenizer=tokenizer,
                max_new_tokens=cfg.max_gen_toks,
            )
            summary = {metric if metric != "neg_loss" else "loss": float(values.mean())}
        for r, v in zip(rows, values):
            r["value"] = float(v)
        write_text_atomic(out / "items" / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        scores[name] = {
            "score": float(values.mean()),
            "metric": metric,
            "metrics": summary,
            "n": len(items),
            "split": cfg.split,
            "form": cfg.choice_form if metric.startswith("choice_") else None,
        }
        log.info("%s %s = %.4f", name, metric, scores[name]["score"])
    write_json_atomic(out / "metrics.json", {"model": cfg.model, "config": asdict(cfg), "tasks": scores})
    write_text_atomic(out / "results.md", results_markdown_items(cfg.model, scores))
    return scores


def evaluate(cfg: EvaluateConfig, lm=None) -> dict[str, dict]:
    """Evaluate `cfg.model` (or the lm-eval `LM` given) and write `metrics.json`,
    `results.md` and `lm_eval_results.json`; with a per-item `metric`, `evaluate_items`."""
    if cfg.metric != HARNESS:
        if lm is not None:
            raise UserError(f"metric '{cfg.metric}' scores a model, not an lm-eval LM; use metric harness")
        return evaluate_items(cfg)
    out = Path(cfg.out)
    results = run_lm_eval(cfg, lm)
    if not results:
        return {}
    scores = summarize(results)
    write_json_atomic(
        out / "lm_eval_results.json", {k: results.get(k) for k in ("results", "n-samples", "configs", "versions")}
    )
    write_json_atomic(out / "metrics.json", {"model": cfg.model, "config": asdict(cfg), "tasks": scores})
    write_text_atomic(out / "results.md", results_markdown(cfg.model, scores))
    for name, s in scores.items():
        log.info("%s %s = %.4f", name, s["metric"], s["score"])
    return scores


def read_scores(out_dir: str | Path) -> dict[str, float]:
    """Headline score per task of a finished evaluation folder."""
    data = json.loads((Path(out_dir) / "metrics.json").read_text(encoding="utf-8"))
    return {name: float(t["score"]) for name, t in data["tasks"].items()}
