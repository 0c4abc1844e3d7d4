"""Benchmark the fidelity report: the vectorised profile pass against the per-patient reference path.

Input: Eunomia training sequences (``cehrgpt.data.prepare``, all domains, shared with the restore
benchmark under ``bench/out``) resampled with new ids to each size; the same folder serves as real and
synthetic set, so both sides do the full work (the synthetic side with its grammar check).
Both implementations run ``cehrgpt.analysis.fidelity.run_fidelity`` end to end (reading, profiles,
metrics, plots, report) in this process, alternating, and must give identical metrics:

- ``reference``: ``profile_sequences(..., vectorised=False)``, one patient at a time over the grammar;
- ``vectorised``: the default, the restore's ``decode_arrow`` for every grammar-valid patient.

    python bench/bench_fidelity.py                         # 10,000 + 10,000 patients, median of 3
    python bench/bench_fidelity.py --sizes 10000 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from bench_restore import OUT, resampled_input, training_sequences

from cehrgpt.analysis import fidelity


def timed_fidelity(folder: Path, vocabulary: Path, output: Path, vectorised: bool) -> tuple[float, dict]:
    started = time.perf_counter()
    metrics = fidelity.run_fidelity(
        str(folder), str(folder), str(output), vocab_folder=str(vocabulary), vectorised=vectorised
    )
    return time.perf_counter() - started, metrics


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    args = parser.parse_args()

    prepared = training_sequences(OUT / "eunomia")
    vocabulary = prepared / "omop_vocab"
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'patients':>9} {'implementation':>14} {'median s':>9} {'patients/s':>11}")
    results = []
    for size in args.sizes:
        folder = resampled_input(
            prepared / "patient_sequence" / "train", size, args.seed, OUT / f"input_{size}"
        )
        seconds: dict[str, list[float]] = {"reference": [], "vectorised": []}
        metrics: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name in seconds:
                wall, metrics[name] = timed_fidelity(
                    folder, vocabulary, OUT.parent / "fidelity" / name, name == "vectorised"
                )
                seconds[name].append(wall)
        if not same(metrics["reference"], metrics["vectorised"]):
            raise SystemExit(f"the two implementations disagree at {size} patients")
        row = {"patients": size, **{f"{k}_median_s": statistics.median(v) for k, v in seconds.items()}}
        for name, runs in seconds.items():
            median = statistics.median(runs)
            print(f"{size:>9} {name:>14} {median:>9.1f} {2 * size / median:>11.0f}")
        row["speedup"] = row["reference_median_s"] / row["vectorised_median_s"]
        print(f"{'':>9} {'ratio':>14} vectorised is {row['speedup']:.2f}x the reference; metrics identical")
        results.append(row)
    out = OUT.parent / "bench_fidelity.json"
    out.write_text(json.dumps({"machine": platform.platform(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
