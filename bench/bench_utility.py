"""Benchmark the utility analysis (TSTR against TRTR) at 10,000 patients per set (target: ≤ 120 s on 2 cores).

Input: Eunomia through ``cehrgpt.data.prepare`` (all domains; prepared once under ``bench/out`` and
shared with the restore benchmark), resampled with replacement and new ids: the training split to
``--patients`` training and ``--patients`` synthetic patients (different seeds), the test split to
``--patients`` held-out patients. Resampled Eunomia has Eunomia's lengths, concepts and dates, so the
tasks are the ones a real run on Eunomia would pick.

Measured, median of ``--repeats`` runs in this process:

- ``utility``: ``cehrgpt.analysis.utility.main`` end to end (reading, decoding, task choice,
  2 × ``--num_tasks`` logistic regressions, report, outputs), wall and CPU seconds;
- ``read``: the baseline, only reading the three folders (``read_sequence_folder``), which any
  analysis pays; the ratio says how many times the cost of reading its input utility costs.

    python bench/bench_utility.py                       # 10,000 per set, median of 3
    python bench/bench_utility.py --patients 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")

from bench_restore import OUT, resampled_input, training_sequences

from cehrgpt.analysis import utility
from cehrgpt.analysis.io import read_sequence_folder

UTILITY_OUT = OUT.parent / "utility"


def timed(run) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - started, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000, help="patients in each of the three sets")
    parser.add_argument("--num_tasks", type=int, default=utility.DEFAULT_NUM_TASKS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling and of the analysis")
    args = parser.parse_args(argv)

    prepared = training_sequences(OUT / "eunomia") / "patient_sequence"
    n = args.patients
    folders = {
        "training": resampled_input(prepared / "train", n, args.seed, UTILITY_OUT / f"training_{n}"),
        "synthetic": resampled_input(prepared / "train", n, args.seed + 1, UTILITY_OUT / f"synthetic_{n}"),
        "evaluation": resampled_input(prepared / "test", n, args.seed + 2, UTILITY_OUT / f"evaluation_{n}"),
    }
    output = UTILITY_OUT / "result"
    argv_utility = [
        *[f"--{name}_data_folder={folder}" for name, folder in folders.items()],
        f"--output_folder={output}",
        f"--num_tasks={args.num_tasks}",
        f"--seed={args.seed}",
    ]
    machine = f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    load_before = os.getloadavg()[0]
    print(f"machine: {machine}; load average (1 min) at start {load_before:.1f}")

    def run_utility() -> None:
        if utility.main(argv_utility) != 0:
            raise SystemExit("the utility analysis failed")

    runs: dict[str, list[tuple[float, float]]] = {"read": [], "utility": []}
    for _ in range(args.repeats):
        runs["read"].append(timed(lambda: [read_sequence_folder(f, name) for name, f in folders.items()]))
        runs["utility"].append(timed(run_utility))
    metrics = json.loads((output / "metrics.json").read_text())
    wall = {name: statistics.median(w for w, _ in values) for name, values in runs.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in runs.items()}
    load_after = os.getloadavg()[0]
    print(f"\n{'step':>8} {'median wall s':>14} {'median CPU s':>13}")
    for name in runs:
        print(f"{name:>8} {wall[name]:>14.1f} {cpu[name]:>13.1f}")
    print(
        f"utility at {n:,} patients per set: {wall['utility']:.1f} s wall (median of {args.repeats}), "
        f"{wall['utility'] / wall['read']:.1f}x the time to read its input; "
        f"{metrics['utility_num_tasks']} tasks, TRTR {metrics['utility_trtr_auroc_mean']:.3f}, "
        f"TSTR {metrics['utility_tstr_auroc_mean']:.3f} (synthetic = other Eunomia resample)"
    )
    print(f"load average (1 min) before/after: {load_before:.1f} / {load_after:.1f}")
    result = {
        "machine": machine,
        "patients_per_set": n,
        "repeats": args.repeats,
        "median_wall_seconds": wall,
        "median_cpu_seconds": cpu,
        "utility_over_read": wall["utility"] / wall["read"],
        "load_average_before": load_before,
        "load_average_after": load_after,
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("utility_task_")},
    }
    out = OUT.parent / "bench_utility.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
