"""Benchmark the OMOP data-quality checks (``cehrgpt.omop.quality``) on 100,000 restored patients.

Input: restored-shaped CDM tables written here with numpy (every CDM column, the restore's types,
``--seed``): per patient a Poisson(40)+1 visits, each with Poisson(0.6) conditions, drugs, measurements
and Poisson(0.3) procedures and observations (Eunomia's restore has about 44 visits and 80 events per
patient), an observation period over the visits, a death for one patient in ten, and a vocabulary of
the concepts used. The checks run with the vocabulary on ``--threads`` DuckDB threads.

Baseline, measured in the same run: DuckDB counting the rows of every table (the cost of opening and
scanning the parquet once), so the ratio says what the checks cost beyond reading the data.

    python bench/bench_quality_checks.py                     # 100,000 patients, 2 threads, median of 3
    python bench/bench_quality_checks.py --patients 10000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cehrgpt.omop.cdm import cdm_fields
from cehrgpt.omop.quality import run_checks

OUT = Path(__file__).resolve().parent / "out" / "quality_checks"
ARROW = {"integer": pa.int64(), "float": pa.float64(), "date": pa.date32(), "datetime": pa.timestamp("us")}
DOMAINS = {"Condition": 101_000, "Drug": 201_000, "Measurement": 401_000, "Procedure": 301_000,
           "Observation": 501_000}  # fmt: skip
EVENTS = {  # table → (domain, events per visit, id column, concept column, date column)
    "condition_occurrence": ("Condition", 0.6, "condition_occurrence_id", "condition_concept_id",
                             "condition_start_date"),
    "drug_exposure": ("Drug", 0.6, "drug_exposure_id", "drug_concept_id", "drug_exposure_start_date"),
    "measurement": ("Measurement", 0.6, "measurement_id", "measurement_concept_id", "measurement_date"),
    "procedure_occurrence": ("Procedure", 0.3, "procedure_occurrence_id", "procedure_concept_id", "procedure_date"),
    "observation": ("Observation", 0.3, "observation_id", "observation_concept_id", "observation_date"),
}  # fmt: skip
DAY_OF_1970 = np.datetime64("1970-01-01", "D")


def write(folder: Path, table: str, values: dict[str, np.ndarray | pa.Array]) -> int:
    n = len(next(iter(values.values())))
    columns = {}
    for f in cdm_fields(table):
        kind = ARROW.get(f.datatype, pa.string())
        value = values.get(f.name)
        if value is None:
            columns[f.name] = pa.nulls(n, kind)
        elif kind == pa.date32():
            columns[f.name] = pa.array(np.asarray(value, np.int32), pa.int32()).cast(pa.date32())
        elif kind == pa.timestamp("us"):
            columns[f.name] = pa.array(np.asarray(value, np.int64) * 86_400_000_000, pa.int64()).cast(kind)
        else:
            columns[f.name] = pa.array(value, kind)
    (folder / table).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / table / "part-00000.parquet")
    return n


def restored_tables(folder: Path, patients: int, seed: int) -> dict[str, int]:
    """Write restored-shaped tables for ``patients`` patients and a vocabulary; rows per table."""
    rng = np.random.default_rng(seed)
    person = np.arange(1, patients + 1, dtype=np.int64)
    born = rng.integers(1930, 2000, patients)
    birth_day = (np.array([f"{y}-01-01" for y in range(1930, 2000)], "datetime64[D]") - DAY_OF_1970).astype(
        np.int64
    )[born - 1930]
    visits_per = rng.poisson(40, patients) + 1
    owner = np.repeat(np.arange(patients), visits_per)
    first = np.repeat(birth_day + rng.integers(0, 365 * 20, patients), visits_per)
    gaps = rng.integers(0, 90, len(owner))
    starts_at = np.concatenate([[0], np.cumsum(visits_per)[:-1]])
    cumulative = np.cumsum(gaps)
    start = first + cumulative - np.repeat(cumulative[starts_at], visits_per)
    end = start + (rng.random(len(owner)) < 0.1) * rng.integers(1, 5, len(owner))
    visit_id = (np.arange(len(owner), dtype=np.int64) << 18) + 4
    rows = {
        "person": write(folder, "person", {
            "person_id": person, "gender_concept_id": rng.choice([8507, 8532], patients), "year_of_birth": born,
            "month_of_birth": np.ones(patients, np.int64), "day_of_birth": np.ones(patients, np.int64),
            "birth_datetime": birth_day, "race_concept_id": np.zeros(patients, np.int64),
            "ethnicity_concept_id": np.zeros(patients, np.int64)}),
        "visit_occurrence": write(folder, "visit_occurrence", {
            "visit_occurrence_id": visit_id, "person_id": person[owner],
            "visit_concept_id": rng.choice([9201, 9202, 9203], len(owner)), "visit_start_date": start,
            "visit_start_datetime": start, "visit_end_date": end, "visit_end_datetime": end,
            "visit_type_concept_id": np.full(len(owner), 32817)}),
    }  # fmt: skip
    period_end = np.maximum.reduceat(end, starts_at)
    rows["observation_period"] = write(folder, "observation_period", {
        "observation_period_id": person, "person_id": person, "observation_period_start_date": start[starts_at],
        "observation_period_end_date": period_end, "period_type_concept_id": np.full(patients, 32817)})  # fmt: skip
    dead = rng.random(patients) < 0.1
    rows["death"] = write(folder, "death", {
        "person_id": person[dead], "death_date": period_end[dead], "death_datetime": period_end[dead],
        "death_type_concept_id": np.full(int(dead.sum()), 32817)})  # fmt: skip
    for number, (table, (domain, rate, id_column, concept, date)) in enumerate(EVENTS.items()):
        per_visit = rng.poisson(rate, len(owner))
        visit = np.repeat(np.arange(len(owner)), per_visit)
        values = {
            id_column: visit_id[visit] + 1 + number + 8 * (np.arange(len(visit)) - np.repeat(
                np.concatenate([[0], np.cumsum(per_visit)[:-1]]), per_visit)),
            "person_id": person[owner[visit]], concept: DOMAINS[domain] + rng.integers(0, 300, len(visit)),
            date: start[visit], f"{table.split('_')[0]}_type_concept_id": np.full(len(visit), 32817),
            "visit_occurrence_id": visit_id[visit],
        }  # fmt: skip
        if table == "drug_exposure":
            values["drug_exposure_end_date"] = start[visit]
        values = {k: v for k, v in values.items() if k in {f.name for f in cdm_fields(table)}}
        rows[table] = write(folder, table, values)
    concepts = {**{DOMAINS[d] + i: d for d in DOMAINS for i in range(300)}, 9201: "Visit", 9202: "Visit",
                9203: "Visit", 8507: "Gender", 8532: "Gender", 32817: "Type Concept"}  # fmt: skip
    (folder.parent / "vocab" / "concept").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"concept_id": pa.array(list(concepts), pa.int64()), "domain_id": list(concepts.values())}),
        folder.parent / "vocab" / "concept" / "part-0.parquet",
    )
    return rows


def count_rows(folder: Path, threads: int) -> float:
    import duckdb

    started = time.perf_counter()
    with duckdb.connect() as db:
        db.execute(f"SET threads = {threads}")
        for table in sorted(p.name for p in folder.iterdir()):
            db.execute(f"SELECT count(*) FROM read_parquet('{folder / table}/*.parquet')").fetchone()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    folder = OUT / f"{args.patients}" / "omop"
    if not (folder / "person").exists():
        started = time.perf_counter()
        rows = restored_tables(folder, args.patients, args.seed)
        print(f"wrote {sum(rows.values()):,} rows in {time.perf_counter() - started:.1f}s: {rows}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.1f}; DuckDB threads {args.threads}")  # fmt: skip
    baseline, checks, failed = [], [], set()
    for _ in range(args.repeats):
        baseline.append(count_rows(folder, args.threads))
        started = time.perf_counter()
        results = run_checks(folder, folder.parent / "vocab", threads=args.threads)
        checks.append(time.perf_counter() - started)
        failed |= {(r.name, r.table, r.field) for r in results if r.status == "fail"}
    summary = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "patients": args.patients,
        "checks": len(results),
        "failed_checks": sorted(map(str, failed)),
        "median_seconds": round(statistics.median(checks), 2),
        "baseline_row_count_seconds": round(statistics.median(baseline), 2),
        "ratio_to_baseline": round(statistics.median(checks) / statistics.median(baseline), 1),
        "runs_seconds": [round(s, 2) for s in checks],
    }
    print(json.dumps(summary, indent=2))
    (OUT / f"summary_{args.patients}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
