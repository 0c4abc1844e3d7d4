#!/usr/bin/env bash
# One GPU check in about 6 minutes on one H200: the generation bench (CUDA, bf16, batches up to 1024; plain
# model.generate at batch 16 as the baseline, a decoder per output file "before", one decoder per shard
# "after", all in the same run) and the training bench (tiny and small presets, bf16 autocast, against a
# bare PyTorch loop), then one table of both.
#
# The GPU machine has python3 + torch (CUDA) + transformers but no Java, no pyspark and no network, so the
# inputs are made beforehand on a machine with the project's venv and carried along (a git-ignored folder):
#
#   export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
#   EUNOMIA=$(python -c 'from cehrgpt.demo import eunomia_path; print(eunomia_path())')
#   python -m cehrgpt.data.prepare --omop_source "$EUNOMIA" --output_folder gpu_inputs/data --seed 0 \
#     --spark_master 'local[2]'
#   python -m cehrgpt.train --data_folder gpu_inputs/data/patient_sequence --output_folder gpu_inputs/model \
#     --preset tiny --max_steps 200 --batch_size 4 --seed 0 --eval_steps 0 --save_steps 0
#
# (the generation bench's own defaults: 200 steps, batch 4 — an untrained model never emits [END]), then on
# the GPU machine, from the repository root:
#
#   DATA=gpu_inputs/data MODEL=gpu_inputs/model bash bench/gpu_check.sh
#
# DATA is a prepare output folder (its prompts/ or patient_sequence/train/ is read) or a folder of sequences.
# Everything below can be overridden from the environment; a CPU smoke run of the whole script:
#
#   DEVICE=cpu BATCHES=8,16 GENERATE_BATCHES=8 BUFFER=8 REPEATS=1 PRESETS=tiny TRAIN_PATIENTS=200 \
#     TRAIN_BATCH=4 TRAIN_STEPS=2 CONTEXT_WINDOW=64 DATA=... MODEL=... bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to a prepared data folder (see the header)}"
: "${MODEL:?set MODEL to a trained model folder (see the header)}"
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-$([ "$DEVICE" = cuda ] && echo bfloat16 || echo float32)}
BATCHES=${BATCHES:-256,1024}
GENERATE_BATCHES=${GENERATE_BATCHES:-16}
BUFFER=${BUFFER:-128}
REPEATS=${REPEATS:-2}
CONTEXT_WINDOW=${CONTEXT_WINDOW:-512}
PRESETS=${PRESETS:-tiny,small}
TRAIN_PATIENTS=${TRAIN_PATIENTS:-5000}
TRAIN_BATCH=${TRAIN_BATCH:-32}
TRAIN_STEPS=${TRAIN_STEPS:-20}
GENERATE_TIMEOUT=${GENERATE_TIMEOUT:-210}
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-150}
RESULTS=${RESULTS:-${OUT:-bench/out}/gpu_check}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"

PROMPTS=$DATA
for candidate in "$DATA/prompts" "$DATA/patient_sequence/train"; do
  if [ -d "$candidate" ]; then PROMPTS=$candidate; break; fi
done
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
fi
THREADS=$([ "$DEVICE" = cuda ] && echo 0 || echo 1)
started=$SECONDS

echo "== generation: $DEVICE $DTYPE, batches $BATCHES, files of $BUFFER patients, $REPEATS repeats"
gen_status=0
timeout "$GENERATE_TIMEOUT" "$PYTHON" bench/bench_generate.py --device "$DEVICE" --dtype "$DTYPE" \
  --model_folder "$MODEL" --data_folder "$PROMPTS" --batch_sizes "$BATCHES" \
  --generate_batch_sizes "$GENERATE_BATCHES" --buffer_size "$BUFFER" --constrained yes \
  --methods generate,per_file,continuous --repeats "$REPEATS" --context_window "$CONTEXT_WINDOW" \
  --threads "$THREADS" --json_output "$RESULTS/generate.json" | tee "$RESULTS/generate.txt" || gen_status=$?
echo "generation bench: exit $gen_status after $((SECONDS - started)) s"

echo "== training: presets $PRESETS, batch $TRAIN_BATCH, $TRAIN_PATIENTS synthetic patients"
train_status=0
CUDA_VISIBLE_DEVICES=$([ "$DEVICE" = cuda ] && echo "${CUDA_VISIBLE_DEVICES:-0}" || echo "") \
  timeout "$TRAIN_TIMEOUT" "$PYTHON" bench/bench_train.py --presets "$PRESETS" --patients "$TRAIN_PATIENTS" \
  --batch_size "$TRAIN_BATCH" --steps_per_window "$TRAIN_STEPS" --windows 3 \
  --output "$RESULTS/train.json" | tee "$RESULTS/train.txt" || train_status=$?
echo "training bench: exit $train_status after $((SECONDS - started)) s"

"$PYTHON" - "$RESULTS" <<'PY'
import json
import sys
from pathlib import Path

results = Path(sys.argv[1])
print("\n| bench | configuration | batch occupancy | tokens/s | baseline tokens/s | ratio | valid patients/s |")
print("|---|---|---:|---:|---:|---:|---:|")
machines = []
if (results / "generate.json").is_file():
    gen = json.loads((results / "generate.json").read_text())
    machines.append(gen["machine"])
    base = gen["results"][0]
    for r in gen["results"]:
        name = {"generate": "model.generate", "per_file": "decoder per file (before)",
                "continuous": "decoder per shard (after)"}[r["method"]]
        constrained = "constrained" if r["constrained"] else "unconstrained"
        print(f"| generate | {name}, batch {r['batch']}, {constrained} | {100 * r['occupancy']:.0f}% "
              f"| {r['tokens_per_s']:,.0f} | {base['tokens_per_s']:,.0f} "
              f"| {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['valid_patients_per_s']:,.1f} |")
else:
    print("| generate | no result (see generate.txt) | | | | | |")
if (results / "train.json").is_file():
    train = json.loads((results / "train.json").read_text())
    machines.append(train["machine"])
    for r in train["results"]:
        print(f"| train | {r['preset']}, batch {r['batch_size']}, {r['mixed_precision']} | | "
              f"{r['pipeline_tokens_per_second']:,.0f} | {r['baseline_tokens_per_second']:,.0f} | {r['ratio']:.2f}x | |")
else:
    print("| train | no result (see train.txt) | | | | | |")
print("\nbaselines: generate = plain model.generate, batch 16, unconstrained, same run; "
      "train = a bare forward/backward/AdamW loop on the same config, same run")
for m in dict.fromkeys(machines):
    print(f"machine: {m}")
PY
echo "total $((SECONDS - started)) s; results in $RESULTS"
exit $((gen_status || train_status))
