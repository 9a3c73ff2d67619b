#!/usr/bin/env bash
# One GPU session, everything in one go: the textbook's d2l recipe (timed, compiled; under bf16
# autocast, the issue's GPU path, then in fp32), `resnetlab bench` at 28 and 96 px, and the quick
# and best presets. Every result lands in $OUT as it comes
# (JSON from --json, logs, run folders), so a session cut short still returns what finished.
#
#   OUT=/some/folder benchmarks/gpu.sh                      # on the GPU machine (device tool: $OUT is set)
#   OUT=/tmp/dry benchmarks/gpu.sh --dry-run --device cpu  # check the script here: tiny runs, minutes
#
# Options: --device D (default cuda)  --data-dir DIR (default .data if it holds fashion-mnist: carry
# the four .gz files there, see BENCHMARKS.md)  --only "d2l_bf16 d2l bench quick best" (a
# subset, in that order)  --no-compile (default: compile on cuda only)  --dry-run (a few examples and steps: tests the plumbing, measures nothing).
# Per-step wall-clock limits (seconds) come from D2L_LIMIT (120 each precision), BENCH_LIMIT (150 each
# size), QUICK_LIMIT (150), BEST_LIMIT (360): "d2l_bf16 d2l bench" fits one 600 s device call (540 s
# at worst), "quick best" another (510 s).
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda
data_dir=""
only="d2l_bf16 d2l bench quick best"
compile=auto
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --no-compile) compile=0; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
if [ "$compile" = auto ]; then  # compiling pays on a GPU; on a CPU it costs minutes (BENCHMARKS.md)
  case "$device" in cuda*) compile=1 ;; *) compile=0 ;; esac
fi
if [ -z "$data_dir" ] && [ -f .data/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  data_dir=.data
fi
data_args=()
[ -n "$data_dir" ] && data_args=(--data-dir "$data_dir")
compile_args=()
[ "$compile" = 1 ] && compile_args=(--compile)

# The package from this checkout, installed or not.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}

steps_file="$OUT/steps.tsv"
printf 'step\texit\tseconds\tcommand\n' > "$steps_file"

# run NAME LIMIT CMD...: stdout to $OUT/NAME.json, stderr to $OUT/NAME.log, one line in steps.tsv.
run() {
  local name="$1" limit="$2"; shift 2
  echo "== $name: $*" >&2
  local start end rc
  start=$(date +%s.%N)
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  rc=$?
  end=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$*" >> "$steps_file"
  echo "   exit $rc after ${secs}s" >&2
  [ "$rc" = 0 ] || tail -n 5 "$OUT/$name.log" >&2
}

# Where and with what it ran.
{
  date -Is
  git rev-parse HEAD 2>/dev/null || true
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  lscpu | grep -E 'Model name|^CPU\(s\)'
  "$py" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version())'
} > "$OUT/env.txt" 2>&1

if [ "$dry" = 1 ]; then
  # Plumbing only: a few hundred examples, one epoch, small images.
  d2l_args=(--subset 128 --epochs 1 --batch-size 32 --resize 16)
  bench_args=(--steps 1 --repeats 1 --batch-size 8)
  bench_sizes=("")
  quick_args=(--subset 128 --epochs 1 --val-split 32)  # presets may hold out thousands
  best_args=(--subset 128 --epochs 1 --val-split 32)
else
  d2l_args=()
  bench_args=(--steps 5 --repeats 3 --batch-size 256)
  bench_sizes=("" "--resize 96")
  quick_args=()
  best_args=()
fi
bench_variants=textbook,fp32,bf16
[ "$compile" = 1 ] && bench_variants="$bench_variants,bf16-compile"

for step in $only; do
  case "$step" in
    d2l|d2l_bf16)  # the textbook's recipe: resnet18_d2l, 96 px, batch 256, 10 epochs, SGD 0.05;
      # d2l in fp32 (the preset's default: the textbook's numerics), d2l_bf16 under bf16 autocast
      amp_args=()
      [ "$step" = d2l_bf16 ] && amp_args=(--amp)
      run "$step" "${D2L_LIMIT:-120}" "$py" -m resnetlab train --preset d2l --device "$device" "${compile_args[@]}" \
        "${amp_args[@]}" "${data_args[@]}" "${d2l_args[@]}" --out "$OUT/runs/$step" --overwrite --json ;;
    bench)
      for size in "${bench_sizes[@]}"; do
        tag=bench_${size:+${size##* }px}
        tag=${tag%_}
        # shellcheck disable=SC2086  # $size is one flag and its value, or nothing
        run "$tag" "${BENCH_LIMIT:-150}" "$py" -m resnetlab bench --device "$device" --variants "$bench_variants" \
          "${data_args[@]}" "${bench_args[@]}" $size --json
      done ;;
    quick)
      run quick "${QUICK_LIMIT:-150}" "$py" -m resnetlab train --preset quick --device "$device" "${compile_args[@]}" \
        "${data_args[@]}" "${quick_args[@]}" --out "$OUT/runs/quick" --overwrite --json ;;
    best)
      run best "${BEST_LIMIT:-360}" "$py" -m resnetlab train --preset best --device "$device" "${compile_args[@]}" \
        "${data_args[@]}" "${best_args[@]}" --out "$OUT/runs/best" --overwrite --json ;;
    *) echo "gpu.sh: unknown step $step (use d2l_bf16, d2l, bench, quick, best)" >&2; exit 2 ;;
  esac
done

# Weights are large and can be remade; the JSON, logs, metrics and plots are what comes back.
find "$OUT/runs" \( -name '*.safetensors' -o -name 'checkpoint.pt' \) -delete 2>/dev/null || true
echo "results in $OUT:" >&2
column -t -s $'\t' "$steps_file" >&2 || cat "$steps_file" >&2
awk -F'\t' 'NR > 1 && $2 != 0 { bad = 1 } END { exit bad }' "$steps_file"
