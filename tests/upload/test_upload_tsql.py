"""The T-SQL the SQL Server dialect emits, compiled without a server, against the CDM 5.4 specification CSV.

The CDM 5.4 SQL Server DDL types each spec type as integer → INTEGER, float → FLOAT,
date → DATE, datetime → DATETIME, varchar(n) → VARCHAR(n), varchar(MAX) → VARCHAR(max).
The upload keeps those, widened where synthetic data needs it (documented in
``cehrgpt.upload.ddl``): ``*_id`` integers BIGINT (int64 ids), datetimes DATETIME2
(microseconds; DATETIME rounds to 1/300 s), FLOAT written as FLOAT(53) (the same type).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

from cehrgpt.upload.ddl import SwapItem, cdm_table, create_table_sql, replace_statements, staging_name
from cehrgpt.upload.indexes import index_statements

SPEC = (
    Path(__file__).resolve().parents[2] / "src" / "cehrgpt" / "omop" / "resources" / "OMOP_CDMv5.4_fields.csv"
)
CDM_SQL_SERVER = {"integer": "INTEGER", "float": "FLOAT", "date": "DATE", "datetime": "DATETIME"}
WIDENED = {"INTEGER": "BIGINT", "DATETIME": "DATETIME2", "FLOAT": "FLOAT(53)"}


def spec() -> dict[str, list[dict[str, str]]]:
    tables: dict[str, list[dict[str, str]]] = {}
    with SPEC.open(newline="") as handle:
        for row in csv.DictReader(handle):
            tables.setdefault(row["cdmTableName"].lower(), []).append(row)
    return tables


def cdm_sql_server_type(row: dict[str, str]) -> str:
    datatype = row["cdmDatatype"].strip().lower()
    if datatype.startswith("varchar("):
        size = datatype[len("varchar(") : -1]
        return "VARCHAR(max)" if size == "max" else f"VARCHAR({size})"
    return CDM_SQL_SERVER[datatype]


def field_name(row: dict[str, str]) -> str:
    """The field as SQL Server spells it (the spec writes the reserved word offset as "offset")."""
    return mssql.dialect().identifier_preparer.quote(row["cdmFieldName"].strip('"').lower())


def expected_type(row: dict[str, str]) -> str:
    base = cdm_sql_server_type(row)
    if base == "INTEGER":
        return "BIGINT" if "_id" in row["cdmFieldName"].lower() else "INTEGER"
    return WIDENED.get(base, base)


@pytest.mark.parametrize("table", sorted(spec()))
def test_every_table_compiles_to_the_cdm_sql_server_types(table):
    rows = spec()[table]
    sql = create_table_sql(table, mssql.dialect(), schema="dbo")
    body = [line.strip().rstrip(",") for line in sql.splitlines()[1:-1] if line.strip()]
    columns = [line for line in body if not line.startswith("CONSTRAINT")]
    expected = [
        f"{field_name(row)} {expected_type(row)} "
        f"{'NOT NULL' if row['isRequired'] == 'Yes' or row['isPrimaryKey'] == 'Yes' else 'NULL'}"
        for row in rows
    ]
    assert columns == expected
    for line, row in zip(columns, rows, strict=True):  # widened only as documented, never narrowed
        compiled = line.split()[1]
        assert compiled == cdm_sql_server_type(row) or WIDENED[cdm_sql_server_type(row)] == compiled
    keys = [field_name(row) for row in rows if row["isPrimaryKey"] == "Yes"]
    assert [line for line in body if line.startswith("CONSTRAINT")] == [
        f"CONSTRAINT {table}_pkey PRIMARY KEY ({key})" for key in keys
    ]
    assert sql.startswith(f"CREATE TABLE dbo.{table} (")


def test_load_statement_is_a_parameterised_insert_in_cdm_order():
    staging = cdm_table(
        "death", sa.MetaData(), dialect_name="mssql", name=staging_name("death"), schema="dbo"
    )
    insert = str(staging.insert().compile(dialect=mssql.dialect(paramstyle="qmark")))  # pyodbc's style
    names = [field_name(row) for row in spec()["death"]]
    assert insert == (
        f"INSERT INTO dbo.death__cehrgpt_staging ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
    )


def test_swap_and_index_statements_are_plain_tsql():
    statements = replace_statements(mssql.dialect(), "dbo", [SwapItem("person", True, True)])
    assert statements[0] == "DELETE FROM dbo.person"
    assert re.fullmatch(r"INSERT INTO dbo\.person \(person_id, .*\) SELECT person_id, .* FROM dbo\.person__cehrgpt_staging",
                        statements[1])  # fmt: skip
    indexes = index_statements(mssql.dialect(), "dbo", "person", existing_indexes=set(), has_primary_key=True)
    assert indexes == ["CREATE NONCLUSTERED INDEX idx_gender ON dbo.person (gender_concept_id)"]
