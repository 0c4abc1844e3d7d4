#!/usr/bin/env bash
# Generator throughput on one GPU: bench_generate.py on CUDA in bfloat16 at larger batches, the baseline
# (plain model.generate, batch 16, unconstrained) measured side by side in the same run.
#
#   bash bench/gpu_generate.sh                  # writes bench/out/bench_generate_gpu.txt (or $OUT/)
#   BATCHES=16,256,1024,2048 REPEATS=3 bash bench/gpu_generate.sh
#   MODEL=/path/to/model DATA=/path/to/patient_sequence/train bash bench/gpu_generate.sh
#
# Without MODEL/DATA the bench prepares Eunomia and trains the tiny model once into $CACHE (on the GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/out}
BATCHES=${BATCHES:-16,256,1024}
REPEATS=${REPEATS:-3}
CACHE=${CACHE:-/tmp/cehrgpt-bench-generate}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
EXTRA=()
[ -n "${MODEL:-}" ] && EXTRA+=(--model_folder "$MODEL")
[ -n "${DATA:-}" ] && EXTRA+=(--data_folder "$DATA")
"$PYTHON" bench/bench_generate.py --device cuda --dtype bfloat16 --batch_sizes "$BATCHES" --threads 0 \
  --generate_batch_sizes "${GENERATE_BATCHES:-16,256}" \
  --repeats "$REPEATS" --cache_dir "$CACHE" "${EXTRA[@]}" | tee "$OUT/bench_generate_gpu.txt"
echo "results in $OUT/bench_generate_gpu.txt"
