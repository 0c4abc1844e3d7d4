"""Hand-made restored OMOP tables for the upload tests, and what the database should hold afterwards."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from cehrgpt.omop.cdm import cdm_tables
from cehrgpt.upload.ddl import cdm_table, qualified

PERSON = pa.table(
    {
        "person_id": pa.array([1, 2, 3_000_000_000], pa.int64()),
        "gender_concept_id": pa.array([8507, 8532, 8532], pa.int64()),
        "year_of_birth": pa.array([1980, 1991, 2002], pa.int32()),
        "birth_datetime": pa.array(
            [dt.datetime(1980, 1, 2, 3, 4, 5, 678901), None, dt.datetime(2002, 12, 31, 23, 59, 59, 999999)],
            pa.timestamp("us", tz="UTC"),
        ),
        "race_concept_id": pa.array([8527, 0, 8516], pa.int64()),
        "ethnicity_concept_id": pa.array([0, 0, 0], pa.int64()),
        "person_source_value": pa.array(["p1", "", None], pa.string()),
    }
)
DEATH = pa.table(
    {
        "person_id": pa.array([2], pa.int64()),
        "death_date": pa.array([dt.date(2020, 2, 29)], pa.date32()),
        "death_datetime": pa.array([dt.datetime(2020, 2, 29, 13, 14, 15, 161718)], pa.timestamp("us")),
        "death_type_concept_id": pa.array([32817], pa.int64()),
    }
)
OBSERVATION_PERIOD = pa.table(
    {
        "observation_period_id": pa.array([10, 11, 12], pa.int64()),
        "person_id": pa.array([1, 2, 3_000_000_000], pa.int64()),
        "observation_period_start_date": pa.array(
            [dt.date(2000, 1, 1), dt.date(2010, 6, 1), dt.date(2019, 1, 1)], pa.date32()
        ),
        "observation_period_end_date": pa.array(
            [dt.date(2001, 1, 1), dt.date(2020, 2, 29), dt.date(2019, 1, 2)], pa.date32()
        ),
        "period_type_concept_id": pa.array([44814725] * 3, pa.int64()),
    }
)
MEASUREMENT = pa.table(
    {
        "measurement_id": pa.array([100, 101], pa.int64()),
        "person_id": pa.array([1, 1], pa.int64()),
        "measurement_concept_id": pa.array([3004249, 3012888], pa.int64()),
        "measurement_date": pa.array([dt.date(2000, 3, 4)] * 2, pa.date32()),
        "measurement_type_concept_id": pa.array([32817, 32817], pa.int64()),
        "value_as_number": pa.array([120.5, 1 / 3], pa.float64()),
    }
)

# The rows each test expects back (column subsets, ordered by key).
EXPECTED_PERSON = [
    (1, 8507, 1980, dt.datetime(1980, 1, 2, 3, 4, 5, 678901), 8527, "p1"),
    (2, 8532, 1991, None, 0, ""),
    (3_000_000_000, 8532, 2002, dt.datetime(2002, 12, 31, 23, 59, 59, 999999), 8516, None),
]
EXPECTED_DEATH = [(2, dt.date(2020, 2, 29), dt.datetime(2020, 2, 29, 13, 14, 15, 161718), 32817)]
EXPECTED_MEASUREMENT = [(100, 120.5), (101, 1 / 3)]


def write_table(folder: Path, name: str, table: pa.Table, parts: int = 1) -> None:
    """One CDM table as ``parts`` parquet files, the way Spark lays it out."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    size = -(-table.num_rows // parts) if table.num_rows else 0
    for part in range(parts):
        pq.write_table(table.slice(part * size, size), folder / name / f"part-{part:05d}.parquet")


def snapshot(engine: sa.Engine, schema: str | None) -> dict[str, list[tuple]]:
    """Every table in ``schema`` with all its rows, sorted: what "unchanged" is checked against.

    CDM tables are read through their CDM types (SQLite keeps datetimes as text); others as they come.
    """
    tables = sorted(sa.inspect(engine).get_table_names(schema=schema))
    result = {}
    with engine.connect() as conn:
        for name in tables:
            if name in cdm_tables():
                table = cdm_table(name, sa.MetaData(), dialect_name=engine.dialect.name, schema=schema)
                found = conn.execute(sa.select(table))
            else:
                found = conn.exec_driver_sql(f"SELECT * FROM {qualified(engine.dialect, schema, name)}")
            result[name] = sorted((tuple(row) for row in found), key=lambda r: tuple(map(repr, r)))
    return result


def select_rows(engine: sa.Engine, table: str, columns: str, schema: str | None = None) -> list[tuple]:
    """``columns`` (comma-separated) of CDM ``table``, ordered by the first, read through the CDM types."""
    cdm = cdm_table(table, sa.MetaData(), dialect_name=engine.dialect.name, schema=schema)
    selected = [cdm.c[name.strip()] for name in columns.split(",")]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(*selected).order_by(selected[0]))]


# Strings a hand-rolled loader gets wrong: quotes, backslashes, SQL-looking text, %-formatting, NUL-free Unicode.
TRICKY_STRINGS = [
    "O'Brien",
    "back\\slash\\",
    'say "hi"',
    "NULL",
    "",
    "100% %s %(x)s",
    "line\nbreak",
    "Zoë 🩺",
]


def tricky_person() -> pa.Table:
    """One person per tricky string, in person_source_value."""
    n = len(TRICKY_STRINGS)
    return pa.table(
        {
            "person_id": pa.array(range(1, n + 1), pa.int64()),
            "gender_concept_id": pa.array([0] * n, pa.int64()),
            "year_of_birth": pa.array([2000] * n, pa.int32()),
            "race_concept_id": pa.array([0] * n, pa.int64()),
            "ethnicity_concept_id": pa.array([0] * n, pa.int64()),
            "person_source_value": pa.array(TRICKY_STRINGS, pa.string()),
        }
    )
