"""Pipeline plumbing speed: compiling the pipelines, gathering generation shards, collecting run metrics.

- compile: seconds per pipeline (``kfp`` compiler), median of ``--repeats``;
- gather: shards of generated parquet gathered into one Dataset by
  :func:`cehrgpt.pipeline.steps.gather_generated_shards` (file copies) against a
  baseline that reads every shard with pyarrow and rewrites one table, the
  obvious alternative; patients/s and the ratio;
- compare: metrics collected from a run folder with one Metrics file per task.

    python bench/bench_pipeline.py                       # 8 shards × 25,000 patients, 5 repeats (about a minute)
    python bench/bench_pipeline.py --patients_per_shard 250000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cehrgpt.pipeline.compare import collect_metrics
from cehrgpt.pipeline.compile import PIPELINES, compile_pipelines
from cehrgpt.pipeline.steps import gather_generated_shards
from cehrgpt.pipeline.stores import LocalStore

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def make_shards(root: Path, shards: int, patients: int, files_per_shard: int, seed: int) -> list[Path]:
    """Shard folders shaped like the generator's output: <strategy>/generated_sequences/*.parquet."""
    rng = np.random.default_rng(seed)
    folders = []
    for shard in range(shards):
        sequences = root / f"shard{shard}" / "top_p10000" / "generated_sequences"
        sequences.mkdir(parents=True)
        for part in range(files_per_shard):
            n = patients // files_per_shard
            lengths = rng.integers(20, 200, n)
            tokens = [[str(t) for t in rng.integers(1000, 5000, k)] for k in lengths]
            table = pa.table(
                {
                    "person_id": pa.array(np.arange(n, dtype=np.int64) + shard * patients),
                    "concept_ids": tokens,
                }
            )
            pq.write_table(table, sequences / f"part-{part:05d}.parquet")
        (sequences.parent / "generation_summary.json").write_text(json.dumps({"patients": patients}))
        folders.append(root / f"shard{shard}")
    return folders


def baseline_gather(shards: list[Path], out: Path) -> None:
    tables = [pq.read_table(p) for s in shards for p in sorted(s.glob("*/generated_sequences/*.parquet"))]
    (out / "generated_sequences").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), out / "generated_sequences" / "all.parquet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--patients_per_shard", type=int, default=25_000)
    parser.add_argument("--files_per_shard", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    results: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for name in PIPELINES:
            seconds = median_seconds(
                lambda n=name: compile_pipelines(tmp_path / "compiled", REPO, [n]), args.repeats
            )
            results[f"compile_{name}_s"] = seconds
            print(f"compile {name:<15} median {seconds:.2f} s")

        shards = make_shards(
            tmp_path / "shards", args.shards, args.patients_per_shard, args.files_per_shard, args.seed
        )
        patients = args.shards * args.patients_per_shard
        counter = iter(range(10**6))

        def ours() -> None:
            gather_generated_shards(shards, tmp_path / f"ours{next(counter)}")

        def baseline() -> None:
            baseline_gather(shards, tmp_path / f"base{next(counter)}")

        base_s = median_seconds(baseline, args.repeats)
        ours_s = median_seconds(ours, args.repeats)
        results.update(gather_baseline_s=base_s, gather_s=ours_s)
        print(f"gather {args.shards} shards × {args.patients_per_shard:,} patients:")
        print(
            f"  baseline (pyarrow read + concat + write)  median {base_s:.3f} s  {patients / base_s:,.0f} patients/s  1.00×"
        )
        print(
            f"  gather_generated_shards (file copies)     median {ours_s:.3f} s  {patients / ours_s:,.0f} patients/s  {base_s / ours_s:.2f}×"
        )

        run = tmp_path / "run"
        for task in range(200):
            (run / f"task-{task}").mkdir(parents=True)
            (run / f"task-{task}" / "metrics").write_text(json.dumps({f"m{i}": i / 7 for i in range(20)}))
        compare_s = median_seconds(lambda: collect_metrics(LocalStore(run)), args.repeats)
        results["collect_200_tasks_s"] = compare_s
        print(f"compare: collect 200 tasks × 20 metrics  median {compare_s * 1000:.1f} ms")
        shutil.rmtree(tmp_path / "shards")

    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_pipeline.json").write_text(
        json.dumps({"machine": machine(), "args": vars(args), **results}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
