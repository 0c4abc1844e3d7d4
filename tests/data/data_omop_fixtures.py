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


def write_postgres(base_url: str, schema: str, tables: Tables) -> str:
    """The tables in a fresh PostgreSQL schema; returns a URL whose search_path is that schema."""
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(base_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"drop schema if exists {schema} cascade"))
        connection.execute(sa.text(f"create schema {schema}"))
        for name, rows in tables.items():
            pd.DataFrame(rows).to_sql(name, connection, schema=schema, index=False)
    engine.dispose()
    return f"{base_url}?options=-csearch_path%3D{schema}"


def drop_postgres_schema(base_url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(base_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"drop schema if exists {schema} cascade"))
    engine.dispose()


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


def _visit(vid: int, pid: int, concept: int, start: date, discharge: int | None) -> dict[str, Any]:
    return {
        "visit_occurrence_id": vid,
        "person_id": pid,
        "visit_concept_id": concept,
        "visit_start_date": start,
        "visit_end_date": start,
        "visit_type_concept_id": 44818517,
        "discharged_to_concept_id": discharge,
    }


def _event(prefix: str, date_column: str, pid: int, concept: int, on: date | None, vid: int | None):
    return {
        "person_id": pid,
        f"{prefix}_concept_id": concept,
        date_column: on,
        "visit_occurrence_id": vid,
    }


def tiny_omop(cdm53: bool = False) -> Tables:
    """Four persons: 1 (inpatient, outpatient, LT gap, death), 2 (orphans, unknown demographics,
    death before the last visit), 3 (no events), 4 (no birth year); plus rows that must be dropped."""
    c, d, p = "condition", "drug", "procedure"
    tables: Tables = {
        "person": [
            {
                "person_id": 1,
                "gender_concept_id": 8532,
                "year_of_birth": 1980,
                "month_of_birth": 6,
                "day_of_birth": 15,
                "birth_datetime": None,
                "race_concept_id": 8527,
                "ethnicity_concept_id": 0,
            },
            {
                "person_id": 2,
                "gender_concept_id": 0,
                "year_of_birth": 1990,
                "month_of_birth": None,
                "day_of_birth": None,
                "birth_datetime": None,
                "race_concept_id": None,
                "ethnicity_concept_id": 0,
            },
            {
                "person_id": 3,
                "gender_concept_id": 8507,
                "year_of_birth": 1970,
                "month_of_birth": None,
                "day_of_birth": None,
                "birth_datetime": None,
                "race_concept_id": 8516,
                "ethnicity_concept_id": 0,
            },
            {
                "person_id": 4,
                "gender_concept_id": 8507,
                "year_of_birth": None,
                "month_of_birth": None,
                "day_of_birth": None,
                "birth_datetime": None,
                "race_concept_id": 8516,
                "ethnicity_concept_id": 0,
            },
        ],
        "visit_occurrence": [
            _visit(100, 1, 9201, date(2020, 1, 10), 8536),
            _visit(101, 1, 9202, date(2020, 3, 1), None),
            _visit(102, 1, 9203, date(2023, 6, 1), None),
            _visit(103, 2, 9202, date(2021, 5, 5), None),  # no events: dropped as empty
            _visit(104, 99, 9202, date(2021, 5, 5), None),  # unknown person
            _visit(105, 2, 9201, date(2021, 6, 1), None),
        ],
        "condition_occurrence": [
            _event(c, "condition_start_date", 1, 201826, date(2020, 1, 10), 100),
            _event(c, "condition_start_date", 1, 316139, date(2020, 1, 12), 100),
            _event(c, "condition_start_date", 1, 4329847, date(2020, 1, 9), 100),
            _event(c, "condition_start_date", 1, 0, date(2020, 1, 10), 100),  # concept 0
            _event(c, "condition_start_date", 1, 320128, date(2020, 3, 1), 101),
            _event(c, "condition_start_date", 1, 320128, None, 101),  # null date
            _event(c, "condition_start_date", 2, 432867, date(2021, 5, 10), None),  # orphan
            _event(
                c, "condition_start_date", 2, 4329847, date(2021, 5, 10), 999
            ),  # visit that does not exist
            _event(c, "condition_start_date", 2, 255848, date(2021, 5, 12), 100),  # another person's visit
            _event(c, "condition_start_date", 99, 255848, date(2021, 5, 12), None),  # unknown person
        ],
        "drug_exposure": [
            _event(d, "drug_exposure_start_date", 1, 1127433, date(2020, 1, 12), 100),
            _event(d, "drug_exposure_start_date", 1, 1127078, date(2020, 3, 1), 101),
            _event(d, "drug_exposure_start_date", 1, 19059056, date(2023, 6, 1), 102),
            _event(d, "drug_exposure_start_date", 1, 19059056, date(1999, 12, 31), None),  # before min date
        ],
        "procedure_occurrence": [
            _event(p, "procedure_date", 1, 4163872, date(2020, 1, 12), 100),
            _event(p, "procedure_date", 2, 4163872, date(2021, 6, 1), 105),
            _event(p, "procedure_date", 2, 2211, date(2021, 6, 3), 105),
        ],
        "death": [
            {"person_id": 1, "death_date": date(2024, 1, 1), "death_type_concept_id": 32817},
            {"person_id": 2, "death_date": date(2021, 5, 1), "death_type_concept_id": 32817},
        ],
        "concept": concept_rows(8532, 8527, 9201, 9202, 9203, 201826, 316139, 4329847),
    }
    if cdm53:
        for row in tables["visit_occurrence"]:
            row["discharge_to_concept_id"] = row.pop("discharged_to_concept_id")
    return tables


PERSON_1_TOKENS = [
    "year:2020", "age:39", "8532", "8527",
    "[VS]", "9201", "201826", "4329847", "i-D2", "316139", "1127433", "4163872", "8536", "[VE]",
    "D49",
    "[VS]", "9202", "320128", "1127078", "[VE]",
    "LT",
    "[VS]", "9203", "19059056", "[VE]",
    "D214",
    "[VS]", "[DEATH]", "[VE]",
]  # fmt: skip
PERSON_2_TOKENS = [
    "year:2021", "age:31", "Gender/0", "Race/0",
    "[VS]", "Visit/0", "432867", "4329847", "[VE]",
    "D2",
    "[VS]", "Visit/0", "255848", "[VE]",
    "D20",
    "[VS]", "9201", "4163872", "i-D2", "2211", "Discharge/0", "[VE]",
    "D0",
    "[VS]", "[DEATH]", "[VE]",
]  # fmt: skip


def valued_omop() -> Tables:
    """Six persons (1-5 train, 6 test by ``patient_splits``), one outpatient visit each on 2020-01-01, with
    values: lab 3004249 (1..20 over the training persons, mostly in unit 8876; a NaN; person 6's 1000),
    lab 3013682 from two patients only, a categorical observation 4275495, drugs with durations."""
    start = date(2020, 1, 1)
    lab, rare_lab, obs = 3004249, 3013682, 4275495
    tables: Tables = {
        "person": [
            {"person_id": pid, "gender_concept_id": 8507, "year_of_birth": 1980, "race_concept_id": 8527}
            for pid in range(1, 7)
        ],
        "patient_splits": [
            {"person_id": pid, "split": "test" if pid == 6 else "train"} for pid in range(1, 7)
        ],
        "visit_occurrence": [_visit(100 + pid, pid, 9202, start, None) for pid in range(1, 7)],
        "concept": concept_rows(8507, 8527, 9202, lab, rare_lab, obs),
    }

    def measurement(
        pid: int, concept: int, number: float | None, unit: int | None, category: int | None = None
    ):
        return {
            "person_id": pid,
            "measurement_concept_id": concept,
            "measurement_date": start,
            "visit_occurrence_id": 100 + pid,
            "value_as_number": number,
            "value_as_concept_id": category,
            "unit_concept_id": unit,
        }

    rows = []
    for pid in range(1, 6):  # the training values 1..20, four per person
        for k, number in enumerate((pid, pid + 5, pid + 10, pid + 15)):
            unit = 8840 if (pid, k) == (1, 3) else None if (pid, k) == (2, 1) else 8876
            category = 4181412 if (pid, k) == (5, 0) else None  # a number and a category: the number wins
            rows.append(measurement(pid, lab, float(number), unit, category))
    rows.append(measurement(3, lab, float("nan"), 8876))
    rows.append(measurement(6, lab, 1000.0, 8876))  # a test person's extreme value: moves no edge
    rows += [measurement(1, rare_lab, 7.5, 8876), measurement(2, rare_lab, 8.5, 8876)]
    tables["measurement"] = rows
    tables["observation"] = [
        {
            "person_id": pid,
            "observation_concept_id": obs,
            "observation_date": start,
            "visit_occurrence_id": 100 + pid,
            "value_as_number": None,
            "value_as_concept_id": category,
            "unit_concept_id": None,
        }
        for pid, category in ((1, 4181412), (2, 4181412), (3, 4181412), (4, 4328749))
    ]

    def drug(pid: int, concept: int, days: int | None, supply: int | None = None):
        end = None if days is None else date.fromordinal(start.toordinal() + days)
        return {
            "person_id": pid,
            "drug_concept_id": concept,
            "drug_exposure_start_date": start,
            "drug_exposure_end_date": end,
            "days_supply": supply,
            "visit_occurrence_id": 100 + pid,
        }

    tables["drug_exposure"] = [
        drug(1, 1127433, 1),
        drug(1, 1127078, 7),
        drug(2, 1127433, 30),
        drug(2, 1127078, 8),
        drug(3, 1127433, None, 14),  # no end date: the days supply
        drug(3, 1127078, 10),
        drug(4, 1127433, 0),  # ends the day it starts: no token
        drug(5, 1127433, -3),  # ends before it starts: counted, no token
        drug(6, 1127433, 400),
    ]
    return tables


_VALUED_PROMPT = ["year:2020", "age:40", "8507", "8527", "[VS]", "9202"]
_LAB_BINS = ["3004249", "v:1", "3004249", "v:2", "3004249", "v:3", "3004249", "v:4"]
VALUED_TOKENS = {
    1: [*_VALUED_PROMPT, "1127078", "dur:7", "1127433", "dur:1", *_LAB_BINS, "3013682", "4275495", "vc:4181412", "[VE]"],
    2: [*_VALUED_PROMPT, "1127078", "dur:7", "1127433", "dur:30", *_LAB_BINS, "3013682", "4275495", "vc:4181412", "[VE]"],
    3: [*_VALUED_PROMPT, "1127078", "dur:7", "1127433", "dur:14", "3004249", *_LAB_BINS, "4275495", "vc:4181412", "[VE]"],
    4: [*_VALUED_PROMPT, "1127433", *_LAB_BINS, "4275495", "[VE]"],
    5: [*_VALUED_PROMPT, "1127433", "3004249", "v:2", "3004249", "v:3", "3004249", "v:4", "3004249", "v:4", "[VE]"],
    6: [*_VALUED_PROMPT, "1127433", "dur:365", "3004249", "v:4", "[VE]"],
}  # fmt: skip
