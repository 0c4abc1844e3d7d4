"""Benchmark the OMOP restore against a faithful minimal copy of the original converter, side by side.

Input: real training sequences (Eunomia through ``cehrgpt.data.prepare``, all domains) resampled with
new person ids to each size, split into 16 parquet files like generator shards. Both implementations
run as fresh processes on the same files and machine, on each core count:

- ``restore``: ``python -m cehrgpt.omop.restore --spark_master local[N]``;
- ``original``: pure pandas, row by row, ``multiprocessing.Pool(N)`` (the original's algorithm:
  ``itertuples``, a per-token loop with a date cursor, a concept→domain dict, a pandas DataFrame per
  table every 1,024 patients written to ``<table>/<uuid>.parquet``).

"start-up included" is the process's wall time; "excluded" leaves out interpreter, JVM and Spark
session start (the restore's own ``seconds``; the original's time after its imports).

    python bench/bench_restore.py                       # 10,000 patients, 1 and 2 cores
    python bench/bench_restore.py --sizes 10000 100000  # the issue's figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "restore"


# --- the original converter, minimal and faithful (pandas, row by row, multiprocessing) -----------------------

STOP_TOKENS = ("VE", "[VE]", "[END]")
INPATIENT = (9201, 262, 8971, 8920)
ORIGINAL_TABLES = (
    "person",
    "visit_occurrence",
    "condition_occurrence",
    "procedure_occurrence",
    "drug_exposure",
    "death",
    "measurement",
)


def _att_days(token: str) -> int | None:
    if token == "LT":
        return 365 * 3
    if len(token) > 1 and token[0] in "DWM" and token[1:].isdigit():
        return int(token[1:]) * {"D": 1, "W": 7, "M": 30}[token[0]]
    return None


def _original_worker(worker: int, files: list[str], output: str, domain_map: dict[int, str]) -> int:
    import datetime
    import uuid
    from datetime import timedelta

    import pandas as pd

    rows: dict[str, list[dict]] = {t: [] for t in ORIGINAL_TABLES}
    next_id = worker * 10**12 + 1
    buffered = persons = 0

    def export() -> None:
        for table, records in rows.items():
            if records:
                pd.DataFrame(records).to_parquet(Path(output) / table / f"{uuid.uuid4()}.parquet")
                records.clear()

    for file in files:
        for record in pd.read_parquet(file).itertuples():
            concept_ids = list(record.concept_ids)
            if "start" in concept_ids[0].lower():
                concept_ids = concept_ids[1:]
            events = concept_ids[4:]
            if not events or events[-1] not in STOP_TOKENS:
                continue
            try:
                year = int(concept_ids[0].split(":")[1])
                birth_year = year - int(concept_ids[1].split(":")[1])
            except Exception:
                continue
            if birth_year < 1900 or birth_year > datetime.date.today().year:
                continue
            person_id = record.person_id
            gender, race = concept_ids[2], concept_ids[3]
            rows["person"].append(
                {
                    "person_id": person_id,
                    "gender_concept_id": int(gender) if gender.isnumeric() else 0,
                    "year_of_birth": birth_year,
                    "race_concept_id": int(race) if race.isnumeric() else 0,
                }
            )
            persons += 1
            cursor = datetime.datetime(year=year, month=1, day=1)
            visit: dict | None = None
            inpatient = False
            for i, event in enumerate(events):
                if event == "[OOV]":
                    continue
                if event == "[VS]":
                    if i + 1 < len(events) and events[i + 1] == "[DEATH]":
                        rows["death"].append({"person_id": person_id, "death_date": cursor.date()})
                        break
                    token = events[i + 1] if i + 1 < len(events) else ""
                    visit_concept_id = (
                        int(token[len("Visit/") :]) if token.startswith("Visit/") else int(token)
                    )
                    inpatient = visit_concept_id in INPATIENT
                    visit = {
                        "visit_occurrence_id": next_id,
                        "person_id": person_id,
                        "visit_concept_id": visit_concept_id,
                        "visit_start_date": cursor.date(),
                        "visit_end_date": cursor.date(),
                    }
                    next_id += 1
                    rows["visit_occurrence"].append(visit)
                elif (days := _att_days(event)) is not None:
                    cursor = cursor + timedelta(days=days)
                elif inpatient and event.startswith("i-D"):
                    cursor = cursor + timedelta(days=int(event[3:]))
                elif event == "[VE]":
                    if visit is not None and inpatient:
                        visit["visit_end_date"] = cursor.date()
                elif event.isnumeric() and visit is not None and events[i - 1] != "[VS]":
                    domain = domain_map.get(int(event))
                    table, date_column = {
                        "Condition": ("condition_occurrence", "condition_start_date"),
                        "Procedure": ("procedure_occurrence", "procedure_date"),
                        "Drug": ("drug_exposure", "drug_exposure_start_date"),
                        "Measurement": ("measurement", "measurement_date"),
                    }.get(domain or "", (None, None))
                    if table is None:
                        continue  # the original drops other domains silently
                    rows[table].append(
                        {
                            f"{table}_id": next_id,
                            "person_id": person_id,
                            f"{table.split('_')[0]}_concept_id": int(event),
                            date_column: cursor.date(),
                            "visit_occurrence_id": visit["visit_occurrence_id"],
                        }
                    )
                    next_id += 1
            buffered += 1
            if buffered >= 1024:
                export()
                buffered = 0
    export()
    return persons


def run_original(input_folder: str, output: str, vocabulary: str, cores: int) -> None:
    """The baseline's main: domain dict from the concept table, then a Pool over the input files."""
    started = time.perf_counter()
    from multiprocessing import Pool

    import pandas as pd

    concept = pd.read_parquet(Path(vocabulary) / "concept", columns=["concept_id", "domain_id"])
    domain_map = {row.concept_id: row.domain_id for row in concept.itertuples()}
    shutil.rmtree(output, ignore_errors=True)
    for table in ORIGINAL_TABLES:
        (Path(output) / table).mkdir(parents=True)
    files = sorted(str(p) for p in Path(input_folder).glob("*.parquet"))
    groups = [files[i::cores] for i in range(cores)]
    with Pool(cores) as pool:
        persons = sum(
            pool.starmap(_original_worker, [(i, g, output, domain_map) for i, g in enumerate(groups)])
        )
    seconds = time.perf_counter() - started
    (Path(output) / "summary.json").write_text(json.dumps({"persons": persons, "seconds": seconds}))


# --- input ---------------------------------------------------------------------------------------------------


def training_sequences(folder: Path) -> Path:
    """Eunomia's training sequences with every domain, prepared once and kept under bench/out."""
    if not (folder / "prepare_report.json").exists():
        from cehrgpt.data.prepare import prepare
        from cehrgpt.demo import eunomia_path

        eunomia = eunomia_path()
        domains = ("condition", "drug", "procedure", "measurement", "observation", "device")
        prepare(str(eunomia), str(folder), spark_master="local[2]", seed=42, domains=domains)
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


# --- measuring -------------------------------------------------------------------------------------------------


def measure(implementation: str, input_folder: Path, vocabulary: Path, cores: int, output: Path) -> dict:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    if implementation == "restore":
        command = [sys.executable, "-m", "cehrgpt.omop.restore", "--patient_sequence_folder", str(input_folder),
                   "--omop_folder", str(output), "--source_omop_folder", str(vocabulary),
                   "--spark_master", f"local[{cores}]"]  # fmt: skip
    else:
        command = [sys.executable, __file__, "--run-original", str(input_folder), str(output), str(vocabulary),
                   str(cores)]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{implementation} failed:\n{result.stderr[-3000:]}")
    if implementation == "restore":
        report = json.loads((output / "restore_report.json").read_text())
        return {"wall": wall, "inside": report["seconds"], "persons": report["patients_restored"]}
    summary = json.loads((output / "summary.json").read_text())
    return {"wall": wall, "inside": summary["seconds"], "persons": summary["persons"]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--train", type=Path, default=None, help="a prepare OUT folder (default: Eunomia)")
    parser.add_argument(
        "--run-original", nargs=4, metavar=("INPUT", "OUTPUT", "VOCAB", "CORES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.run_original:
        input_folder, output, vocabulary, cores = args.run_original
        run_original(input_folder, output, vocabulary, int(cores))
        return 0

    prepared = training_sequences(args.train or OUT / "eunomia")
    vocabulary = prepared / "omop_vocab"
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
          f"{platform.python_version()}; load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'patients':>9} {'cores':>5} {'implementation':>14} {'wall s':>8} {'inside s':>8} "
          f"{'pat/s incl':>10} {'pat/s excl':>10} {'restored':>9}")  # fmt: skip
    results = []
    for size in args.sizes:
        input_folder = resampled_input(
            prepared / "patient_sequence" / "train", size, args.seed, OUT / f"input_{size}"
        )
        for cores in args.cores:
            row = {}
            for implementation in ("original", "restore"):
                runs = [measure(implementation, input_folder, vocabulary, cores, OUT / f"out_{implementation}")
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
