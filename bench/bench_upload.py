"""Upload speed, rows/s per database, against a plain ``pandas.DataFrame.to_sql`` into PostgreSQL.

Same synthetic ``measurement`` table (ids, dates, datetimes with microseconds,
floats, strings) for every target, written as 4 parquet files; each upload is
the whole :func:`cehrgpt.upload.upload_omop` (staging, bulk load, row-count
check, replace in one transaction). The baseline reads the same parquet into pandas and calls
``to_sql(if_exists="replace")`` with SQLAlchemy's defaults, into a schema of its own (its table is not
the CDM's, so the uploads must not find it). Medians over
``--repeats`` runs, all in this one run, on this machine.

    python bench/bench_upload.py                 # 200,000 rows, 3 repeats (about two minutes on 2 cores)
    python bench/bench_upload.py --rows 2000000  # bigger

Servers: $CEHRGPT_TEST_POSTGRES_URL and $CEHRGPT_TEST_MARIADB_URL (defaults: the local test servers); an
unreachable server is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

os.environ.setdefault("TQDM_DISABLE", "1")

from cehrgpt.upload import upload_omop

POSTGRES_URL = os.environ.get(
    "CEHRGPT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("CEHRGPT_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def synthetic_measurements(rows: int, seed: int) -> pa.Table:
    """A restored ``measurement`` table with realistic column types and values."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2000-01-01T00:00:00.000000")
    moments = start + rng.integers(0, 20 * 365 * 86_400 * 10**6, rows).astype("timedelta64[us]")
    return pa.table(
        {
            "measurement_id": pa.array(np.arange(1, rows + 1, dtype=np.int64)),
            "person_id": pa.array(rng.integers(1, rows // 20 + 2, rows, dtype=np.int64)),
            "measurement_concept_id": pa.array(rng.integers(3_000_000, 3_050_000, rows, dtype=np.int64)),
            "measurement_date": pa.array(moments.astype("datetime64[D]")),
            "measurement_datetime": pa.array(moments, pa.timestamp("us", tz="UTC")),
            "measurement_type_concept_id": pa.array(np.full(rows, 32817, dtype=np.int64)),
            "value_as_number": pa.array(rng.normal(100, 15, rows)),
            "unit_concept_id": pa.array(rng.choice([8840, 8876, 0], rows).astype(np.int64)),
            "measurement_source_value": pa.array([f"LAB{v}" for v in rng.integers(0, 500, rows)]),
        }
    )


def write_input(folder: Path, table: pa.Table, parts: int = 4) -> None:
    (folder / "measurement").mkdir(parents=True)
    size = -(-table.num_rows // parts)
    for part in range(parts):
        pq.write_table(table.slice(part * size, size), folder / "measurement" / f"part-{part:05d}.parquet")


def reachable(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            return True
    except sa.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


class Schema:
    """A throwaway schema (PostgreSQL) or database (MariaDB) for one benchmark run."""

    def __init__(self, url: str, kind: str) -> None:
        self.url, self.kind = url, kind
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        self.engine = sa.create_engine(url)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE {kind} {self.name}")

    def drop(self) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                f"DROP {self.kind} IF EXISTS {self.name}{' CASCADE' if self.kind == 'SCHEMA' else ''}"
            )
        self.engine.dispose()


def time_upload(folder: Path, url: str, schema: str | None, chunk_size: int, summary: Path) -> float:
    started = time.perf_counter()
    upload_omop(folder, url, schema=schema, chunk_size=chunk_size, summary_path=summary)
    return time.perf_counter() - started


def time_to_sql(folder: Path, url: str, schema: str, chunk_size: int) -> float:
    engine = sa.create_engine(url)
    try:
        started = time.perf_counter()
        frame = pd.read_parquet(folder / "measurement")
        frame.to_sql(
            "measurement", engine, schema=schema, if_exists="replace", index=False, chunksize=chunk_size
        )
        return time.perf_counter() - started
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk_size", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("bench/out/upload.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    machine = f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}")
    print(
        f"rows: {args.rows:,} (measurement, 4 parquet files), repeats: {args.repeats}, chunk: {args.chunk_size:,}"
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "restored_omop"
        write_input(folder, synthetic_measurements(args.rows, args.seed))
        summary = Path(tmp) / "summary.json"
        cases: list[tuple[str, callable]] = []  # type: ignore[valid-type]
        schemas: list[Schema] = []
        if reachable(POSTGRES_URL):
            pg = Schema(POSTGRES_URL, "SCHEMA")
            pg_baseline = Schema(POSTGRES_URL, "SCHEMA")
            schemas += [pg, pg_baseline]
            cases.append(
                (
                    "pandas.to_sql -> PostgreSQL (baseline)",
                    lambda: time_to_sql(folder, POSTGRES_URL, pg_baseline.name, args.chunk_size),
                )
            )
            cases.append(
                (
                    "upload_omop -> PostgreSQL (COPY)",
                    lambda: time_upload(folder, POSTGRES_URL, pg.name, args.chunk_size, summary),
                )
            )
        else:
            print(
                f"PostgreSQL at {sa.make_url(POSTGRES_URL).render_as_string()} unreachable: skipped (and no baseline)"
            )
        if reachable(MARIADB_URL):
            maria = Schema(MARIADB_URL, "DATABASE")
            schemas.append(maria)
            cases.append(
                (
                    "upload_omop -> MariaDB (multi-row INSERT)",
                    lambda: time_upload(folder, MARIADB_URL, maria.name, args.chunk_size, summary),
                )
            )
        else:
            print(f"MariaDB at {sa.make_url(MARIADB_URL).render_as_string()} unreachable: skipped")
        duck = f"duckdb:///{Path(tmp) / 'bench.duckdb'}"
        cases.append(
            (
                "upload_omop -> DuckDB (read_parquet)",
                lambda: time_upload(folder, duck, None, args.chunk_size, summary),
            )
        )
        lite = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        cases.append(
            (
                "upload_omop -> SQLite (executemany)",
                lambda: time_upload(folder, lite, None, args.chunk_size, summary),
            )
        )
        try:
            for name, run in cases:
                seconds = [run() for _ in range(args.repeats)]
                median = statistics.median(seconds)
                results[name] = {"median_s": round(median, 3), "rows_per_s": round(args.rows / median, 1)}
        finally:
            for schema in schemas:
                schema.drop()
    baseline = next((r["rows_per_s"] for n, r in results.items() if "baseline" in n), None)
    print(f"{'case':45s} {'median s':>9s} {'rows/s':>12s} {'vs baseline':>12s}")
    for name, result in results.items():
        ratio = f"{result['rows_per_s'] / baseline:.2f}x" if baseline else "n/a"
        result["vs_baseline"] = round(result["rows_per_s"] / baseline, 2) if baseline else None
        print(f"{name:45s} {result['median_s']:9.3f} {result['rows_per_s']:12,.0f} {ratio:>12s}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"machine": machine, "rows": args.rows, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
