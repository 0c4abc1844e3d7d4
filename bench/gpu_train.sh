#!/usr/bin/env bash
# Training throughput on GPU(s): bench_train.py for tiny/small/base in bf16, then (with more than one
# GPU) the same training under `accelerate launch`, to show several GPUs are used with no code change.
#
#   bash bench/gpu_train.sh                 # writes bench/out/ (or $OUT/ when set)
#   PYTHON=python3 PATIENTS=50000 bash bench/gpu_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/out}
PATIENTS=${PATIENTS:-20000}
BATCH=${BATCH:-32}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
GPUS=$(nvidia-smi -L | wc -l)

echo "== single GPU: tiny, small, base"
"$PYTHON" bench/bench_train.py --presets tiny,small,base --patients "$PATIENTS" --batch_size "$BATCH" \
  --steps_per_window 20 --windows 3 --output "$OUT/bench_train_gpu.json"

if [ "$GPUS" -gt 1 ]; then
  echo "== $GPUS GPUs under accelerate launch (same command, no code change)"
  DATA=$(mktemp -d)
  "$PYTHON" - "$DATA" "$PATIENTS" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from bench_train import write_data
write_data(Path(sys.argv[1]), int(sys.argv[2]), seed=0)
PY
  "$PYTHON" -m accelerate.commands.launch --multi_gpu --num_processes "$GPUS" -m cehrgpt.train \
    --data_folder "$DATA" --output_folder "$DATA/model" --preset small --batch_size "$BATCH" \
    --max_steps 200 --logging_steps 20 --save_steps 100 --eval_steps 0
  cp "$DATA/model/training_metrics.json" "$OUT/training_metrics_${GPUS}gpu.json"
  rm -rf "$DATA"
fi
echo "results in $OUT"
