"""Benchmark the OMOP restore against the original CEHR-GPT converter, side by side.

Input: real training sequences (Eunomia through ``cehrgpt.data.prepare``, all domains) resampled with
new person ids to each size, split into 16 parquet files like generator shards. Both implementations
run as fresh processes on the same files and machine, on each core count:

- ``restore``: ``python -m cehrgpt.omop.restore --spark_master local[N]``;
- ``original``: ``cehrgpt.generation.omop_converter_batch`` from the published ``cehrgpt==0.1.9``
  wheel, run unmodified with ``--cpu_cores N`` (``bench/original_converter.py`` says how, and which
  two unknown-concept spellings it is given in its own older form so that it keeps the patients).

"start-up included" is the process's wall time; "excluded" leaves out interpreter, JVM and Spark
session start (the restore's ``seconds`` less its ``spark_startup_seconds``; the original's time inside
its ``main``).

    python bench/bench_restore.py                       # 10,000 patients, 1 and 2 cores
    python bench/bench_restore.py --sizes 10000 100000  # the issue's figures
    python bench/bench_restore.py --values_cost         # ours only: the same patients with and without values

``--values_cost`` restores each resampled input twice with this project's restore only: as prepared
(drug durations, and numbers where the source has them) and with every value token removed, so the
cost of values reads off one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

import original_converter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "restore"


# --- input ---------------------------------------------------------------------------------------------------


def training_sequences(folder: Path) -> Path:
    """Eunomia's training sequences with every domain, prepared once and kept under bench/out."""
    if not (folder / "prepare_report.json").exists():
        from cehrgpt.data.prepare import prepare
        from cehrgpt.demo import eunomia_path

        eunomia = eunomia_path()
        domains = ("condition", "drug", "procedure", "measurement", "observation", "device")
        # test_fraction 0.1: the split the README figures were measured with (before the default became 0.2)
        prepare(
            str(eunomia), str(folder), spark_master="local[2]", seed=42, test_fraction=0.1, domains=domains
        )
    return folder


def resampled_input(train: Path, size: int, seed: int, folder: Path, files: int = 16) -> Path:
    """``size`` training rows drawn with replacement, new ids 1..size, in ``files`` parquet files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (folder / "_DONE").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = pq.read_table(train, columns=["concept_ids"])
    picks = np.random.default_rng(seed).integers(0, source.num_rows, size)
    table = pa.table(
        {
            "person_id": pa.array(np.arange(1, size + 1), pa.int64()),
            "concept_ids": source.column(0).take(picks),
        }
    )
    step = -(-size // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), folder / f"part-{i:05d}.parquet")
    (folder / "_DONE").write_text("")
    return folder


def without_values(input_folder: Path, folder: Path) -> Path:
    """The same files with every value token (``grammar.value_class``) removed from ``concept_ids``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cehrgpt import grammar

    if (folder / "_DONE").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in sorted(input_folder.glob("*.parquet")):
        table = pq.read_table(path)
        tokens = [
            [t for t in row if not grammar.value_class(t)] for row in table.column("concept_ids").to_pylist()
        ]
        table = table.set_column(
            table.schema.get_field_index("concept_ids"),
            "concept_ids",
            pa.array(tokens, pa.list_(pa.string())),
        )
        pq.write_table(table, folder / path.name)
    (folder / "_DONE").write_text("")
    return folder


def values_cost(sizes: list[int], cores: int, repeats: int, seed: int, prepared: Path) -> list[dict]:
    """Patients/s of the restore with and without value tokens on the same patients."""
    results = []
    for size in sizes:
        valued = resampled_input(prepared / "patient_sequence" / "train", size, seed, OUT / f"input_{size}")
        plain = without_values(valued, OUT / f"input_{size}_no_values")
        row = {}
        for name, folder in (("without values", plain), ("with values", valued)):
            runs = [
                measure_restore(folder, prepared / "omop_vocab", cores, OUT / "out_restore")
                for _ in range(repeats)
            ]
            wall = statistics.median(r["wall"] for r in runs)
            inside = statistics.median(r["inside"] for r in runs)
            row[name] = {"wall_s": wall, "inside_s": inside, "patients_per_s_excl": size / inside}
            print(f"{size:>9} {cores:>5} {name:>14} {wall:>8.1f} {inside:>8.1f} {size / wall:>10.0f} "
                  f"{size / inside:>10.0f} {runs[0]['persons']:>9}", flush=True)  # fmt: skip
        ratio = row["with values"]["patients_per_s_excl"] / row["without values"]["patients_per_s_excl"]
        print(f"{'':>9} {'':>5} {'ratio':>14} with/without values: {ratio:.2f}x excl")
        results.append({"patients": size, "cores": cores, **row, "ratio_excl": ratio})
    return results


# --- measuring -------------------------------------------------------------------------------------------------


def measure_restore(input_folder: Path, vocabulary: Path, cores: int, output: Path) -> dict:
    command = [sys.executable, "-m", "cehrgpt.omop.restore", "--patient_sequence_folder", str(input_folder),
               "--omop_folder", str(output), "--source_omop_folder", str(vocabulary),
               "--spark_master", f"local[{cores}]"]  # fmt: skip
    wall = original_converter.timed_run(command, "restore")
    report = json.loads((output / "restore_report.json").read_text())
    inside = report["seconds"] - report["spark_startup_seconds"]
    return {"wall": wall, "inside": inside, "persons": report["patients_restored"]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--train", type=Path, default=None, help="a prepare OUT folder (default: Eunomia)")
    parser.add_argument("--values_cost", action="store_true", help="ours only, with and without value tokens")
    args = parser.parse_args()

    prepared = training_sequences(args.train or OUT / "eunomia")
    vocabulary = prepared / "omop_vocab"
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
          f"{platform.python_version()}; load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'patients':>9} {'cores':>5} {'implementation':>14} {'wall s':>8} {'inside s':>8} "
          f"{'pat/s incl':>10} {'pat/s excl':>10} {'restored':>9}")  # fmt: skip
    if args.values_cost:
        results = [
            r
            for cores in args.cores
            for r in values_cost(args.sizes, cores, args.repeats, args.seed, prepared)
        ]
        (OUT / "bench_restore_values.json").write_text(json.dumps({"results": results}, indent=2))
        return 0
    results = []
    for size in args.sizes:
        input_folder = resampled_input(
            prepared / "patient_sequence" / "train", size, args.seed, OUT / f"input_{size}"
        )
        original_input = original_converter.respelled_input(input_folder, OUT / f"input_{size}_original")
        for cores in args.cores:
            row = {}
            for implementation in ("original", "restore"):
                if implementation == "original":
                    runs = [original_converter.run(original_input, OUT / "out_original", vocabulary / "concept",
                                                   cores, OUT.parent / "original") for _ in range(args.repeats)]  # fmt: skip
                else:
                    runs = [measure_restore(input_folder, vocabulary, cores, OUT / "out_restore")
                            for _ in range(args.repeats)]  # fmt: skip
                wall = statistics.median(r["wall"] for r in runs)
                inside = statistics.median(r["inside"] for r in runs)
                row[implementation] = {"wall_s": wall, "inside_s": inside, "restored": runs[0]["persons"],
                                       "patients_per_s_incl": size / wall, "patients_per_s_excl": size / inside}  # fmt: skip
                print(f"{size:>9} {cores:>5} {implementation:>14} {wall:>8.1f} {inside:>8.1f} "
                      f"{size / wall:>10.0f} {size / inside:>10.0f} {runs[0]['persons']:>9}", flush=True)  # fmt: skip
            ratio_incl = row["restore"]["patients_per_s_incl"] / row["original"]["patients_per_s_incl"]
            ratio_excl = row["restore"]["patients_per_s_excl"] / row["original"]["patients_per_s_excl"]
            print(
                f"{'':>9} {'':>5} {'ratio':>14} restore/original: {ratio_incl:.2f}x incl, {ratio_excl:.2f}x excl"
            )
            results.append(
                {"patients": size, "cores": cores, **row, "ratio_incl": ratio_incl, "ratio_excl": ratio_excl}
            )
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_end": os.getloadavg()[0],
    }
    (OUT / "bench_restore.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
