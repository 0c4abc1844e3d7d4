"""Tiny hand-made OMOP databases, written as CSV, parquet or DuckDB from plain Python rows."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

Tables = dict[str, list[dict[str, Any]]]


def write_csv(folder: Path, tables: Tables, upper: bool = False) -> Path:
    """One ``<table>.csv`` per table; ``upper`` spells file and column names in upper case."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        columns = list(rows[0])
        path = folder / f"{name.upper() if upper else name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([c.upper() if upper else c for c in columns])
            for row in rows:
                writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return folder


def _arrow(rows: list[dict[str, Any]], upper: bool = False) -> pa.Table:
    columns = list(rows[0])
    arrays = {}
    for c in columns:
        values = [r[c] for r in rows]
        kind = next((type(v) for v in values if v is not None), str)
        typ = {int: pa.int64(), float: pa.float64(), date: pa.date32(), str: pa.string()}[kind]
        arrays[c.upper() if upper else c] = pa.array(values, type=typ)
    return pa.table(arrays)


def write_parquet(folder: Path, tables: Tables, upper: bool = False) -> Path:
    """One sub-folder per table holding one parquet file (the layout Spark writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        sub = folder / (name.upper() if upper else name)
        sub.mkdir()
        pq.write_table(_arrow(rows, upper), sub / "part-0.parquet")
    return folder


def write_duckdb(path: Path, tables: Tables) -> Path:
    import duckdb

    con = duckdb.connect(str(path))
    for name, rows in tables.items():
        arrow = _arrow(rows)  # noqa: F841 - read by DuckDB's replacement scan
        con.execute(f"create table {name} as select * from arrow")
    con.close()
    return path


def concept_rows(*concept_ids: int) -> list[dict[str, Any]]:
    return [
        {
            "concept_id": cid,
            "concept_name": f"concept {cid}",
            "domain_id": "Condition",
            "vocabulary_id": "SNOMED",
            "concept_class_id": "Clinical Finding",
            "standard_concept": "S",
            "concept_code": str(cid),
            "valid_start_date": date(1970, 1, 1),
            "valid_end_date": date(2099, 12, 31),
            "invalid_reason": None,
        }
        for cid in concept_ids
    ]
