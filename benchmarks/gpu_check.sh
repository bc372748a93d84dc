#!/usr/bin/env bash
# On a CUDA machine, in one go: the online selectors' per-step cost against a plain step on the
# GPU (bench_online.py, the 10M Llama and SmolLM2-135M's shape, full fine-tuning and LoRA), the
# demo, and the test suite with the GPU visible (every default device is then cuda, so each test
# that trains, scores or evaluates runs its passes there).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # default runs/gpu_check
#
# Reads the real data from $RAISE_SELECT_DATA (default ../shared/data). $PYTHON (default python)
# runs everything; the package is imported from src/ when it is not installed. Logs and the
# timings land in OUT_DIR; the last lines printed are one line per stage with its exit status.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check}
mkdir -p "$out"
py=${PYTHON:-python}
data=${RAISE_SELECT_DATA:-../shared/data}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" RAISE_SELECT_DATA="$data"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
"$py" - <<'EOF' | tee -a "$out/gpu.txt"
import importlib, torch
names = ["torch", "transformers", "peft", "accelerate", "datasets", "pyarrow", "huggingface_hub", "lm_eval", "trl"]
print("versions:", ", ".join(f"{n} {getattr(importlib.import_module(n), '__version__', '?')}" for n in names))
print("cuda", torch.version.cuda, "| tf32 matmul", torch.backends.cuda.matmul.allow_tf32)
EOF

declare -a summary
stage() {  # stage NAME TIMEOUT_S COMMAND...: run, log to OUT/NAME.log, keep the exit status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    summary+=("$(printf '%-22s rc %-4s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
    tail -n 9 "$out/$name.log"
}

# Timings first, on an idle GPU. 20 timed steps each: a GPU step of these sizes takes milliseconds.
bench="$py benchmarks/bench_online.py --data-dir $data --steps 20"
stage online-10m 150 $bench
stage online-10m-lora 150 $bench --lora
stage online-135m 200 $bench --preset 135m
stage online-135m-lora 200 $bench --preset 135m --lora

# The demo and the suite side by side (the demo is the README's main job on its built-in default).
t0=$SECONDS
(timeout "${DEMO_TIMEOUT:-240}" "$py" -m raise_select.cli.main demo --out "$out/demo" >"$out/demo.log" 2>&1
    echo "$? $((SECONDS - t0))" >"$out/demo.rc") &
demo_pid=$!
stage pytest "${PYTEST_TIMEOUT:-300}" "$py" -m pytest -q -n "${WORKERS:-8}" -p no:cacheprovider --durations=10 tests
wait "$demo_pid"
read -r rc secs <"$out/demo.rc"
summary+=("$(printf '%-22s rc %-4s %4ss' demo "$rc" "$secs")")
tail -n 5 "$out/demo.log"

echo "== stages"
printf '%s\n' "${summary[@]}"
grep -E "^(FAILED|ERROR)|passed|failed" "$out/pytest.log" | tail -n 40
