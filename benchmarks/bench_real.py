"""Real data, a real model: which selector helps a target task most, with 95% intervals?

The benchmark is a study (`src/raise_select/configs/study_real_smollm2.yaml`); this script runs
it (or, with --report, reads its finished cells) and adds its extra tables
(`raise_select.experiments.bench`): the RAISE rows' cost per part and cell by cell, the
LESS-prior rows against LESS's own choice, the on-topic shares, and the gain plot.

    OMP_NUM_THREADS=2 python benchmarks/bench_real.py --set study.heldout_split=dev   # the grid, scored on dev
    OMP_NUM_THREADS=2 python benchmarks/bench_real.py                          # then test (the config's default)
    python benchmarks/bench_real.py --set 'study.methods=[random,rds]' --set 'study.targets=[gsm8k]'
    python benchmarks/bench_real.py --report                                   # tables from finished cells only
    raise-select study --config study_real_smollm2                             # the same grid, gain table only

The trusted protocol (docs/benchmarks.md): settings are chosen on the dev split; the test run
scores the same cells (nothing is retrained) and reads the best static selector from their dev
evaluations.

Output in the study folder: study_gains.{md,json} and bench_real.{md,json,png}. The results
committed under benchmarks/results/bench_real/ were made by the script this one replaced (the
code of commit 8a6c789); docs/benchmarks.md says how they relate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raise_select.cli.study import check_method_options
from raise_select.config import resolve
from raise_select.errors import UserError
from raise_select.experiments.bench import bench_tables
from raise_select.experiments.study import Study, StudyConfig, method_sections
from raise_select.io import check_output, lock_output
from raise_select.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="study_real_smollm2", help="study config (default: study_real_smollm2)")
    p.add_argument("--set", action="append", default=[], dest="overrides", help="KEY=VALUE, as `raise-select study`")
    p.add_argument("--report", action="store_true", help="tables from the finished cells only: nothing is computed")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    try:
        cfg = resolve(StudyConfig, "study", a.config, a.overrides, {"report_only": True if a.report else None})
        options = method_sections(a.config, a.overrides, cfg.methods)
        check_method_options(options, a.config)
        check_output(cfg.out, {"pool": cfg.pool, "model": cfg.model, "config": a.config})
        if not cfg.report_only:
            lock_output(cfg.out, "study")
        setup_logging(Path(cfg.out), "study.log")
        study = Study(cfg, options)
        summary = bench_tables(study, study.run())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
