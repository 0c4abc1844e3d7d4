"""CDM 5.4 DDL per dialect (SQL Server compiled only) and the swap statements."""

from __future__ import annotations

import duckdb_engine
from sqlalchemy.dialects import mssql, mysql, postgresql, sqlite

from cehrgpt.upload.ddl import SwapItem, append_statements, create_table_sql, replace_statements
from cehrgpt.upload.upload import lock_timeout_statements


def lines(sql: str) -> list[str]:
    return [line.strip().rstrip(",") for line in sql.splitlines() if line.strip()]


def test_sql_server_death_table():
    assert lines(create_table_sql("death", mssql.dialect(), schema="dbo")) == [
        "CREATE TABLE dbo.death (",
        "person_id BIGINT NOT NULL",
        "death_date DATE NOT NULL",
        "death_datetime DATETIME2 NULL",
        "death_type_concept_id BIGINT NULL",
        "cause_concept_id BIGINT NULL",
        "cause_source_value VARCHAR(50) NULL",
        "cause_source_concept_id BIGINT NULL",
        ")",
    ]


def test_sql_server_types_keys_and_varchar_max():
    note = lines(create_table_sql("note", mssql.dialect(), name="note__cehrgpt_staging"))
    assert "note_id BIGINT NOT NULL" in note
    assert "note_datetime DATETIME2 NULL" in note
    assert "note_text VARCHAR(max) NOT NULL" in note
    assert "note_title VARCHAR(250) NULL" in note
    assert "CONSTRAINT note__cehrgpt_staging_pkey PRIMARY KEY (note_id)" in note
    measurement = lines(create_table_sql("measurement", mssql.dialect()))
    assert "value_as_number FLOAT(53) NULL" in measurement
    assert "measurement_datetime DATETIME2 NULL" in measurement
    person = lines(create_table_sql("person", mssql.dialect()))
    assert "year_of_birth INTEGER NOT NULL" in person
    assert not any("IDENTITY" in line for line in person)


def test_postgresql_mariadb_duckdb_sqlite_datetime_and_text_types():
    pg = lines(create_table_sql("note", postgresql.dialect()))
    assert "note_datetime TIMESTAMP WITHOUT TIME ZONE" in pg
    assert "note_text TEXT NOT NULL" in pg
    assert "note_id BIGINT NOT NULL" in pg  # not BIGSERIAL: ids come from the data
    maria = lines(create_table_sql("note", mysql.dialect()))
    assert "note_datetime DATETIME(6)" in maria
    assert "note_text LONGTEXT NOT NULL" in maria
    assert "note_id BIGINT NOT NULL" in maria
    assert maria[-1] == ")ENGINE=InnoDB CHARSET=utf8mb4"
    duck = lines(create_table_sql("death", duckdb_engine.Dialect()))
    assert "death_datetime TIMESTAMP WITHOUT TIME ZONE" in duck
    lite = lines(create_table_sql("measurement", sqlite.dialect()))
    assert "measurement_datetime DATETIME" in lite
    assert "value_as_number DOUBLE" in lite


def test_every_restored_table_has_ddl_and_observation_period_keeps_its_key():
    sql = lines(create_table_sql("observation_period", postgresql.dialect()))
    assert sql == [
        "CREATE TABLE observation_period (",
        "observation_period_id BIGINT NOT NULL",
        "person_id BIGINT NOT NULL",
        "observation_period_start_date DATE NOT NULL",
        "observation_period_end_date DATE NOT NULL",
        "period_type_concept_id BIGINT NOT NULL",
        "CONSTRAINT observation_period_pkey PRIMARY KEY (observation_period_id)",
        ")",
    ]


ITEMS = [SwapItem("person", target_exists=True, has_primary_key=True), SwapItem("death", False, False)]


def test_postgresql_replace_renames_tables_and_keys():
    assert replace_statements(postgresql.dialect(), "cdm", ITEMS) == [
        "DROP TABLE cdm.person",
        "ALTER TABLE cdm.person__cehrgpt_staging RENAME TO person",
        "ALTER TABLE cdm.person RENAME CONSTRAINT person__cehrgpt_staging_pkey TO person_pkey",
        "ALTER TABLE cdm.death__cehrgpt_staging RENAME TO death",
    ]


def test_sql_server_replace_uses_sp_rename():
    assert replace_statements(mssql.dialect(), "dbo", ITEMS) == [
        "DROP TABLE dbo.person",
        "EXEC sp_rename N'dbo.person__cehrgpt_staging', N'person'",
        "EXEC sp_rename N'dbo.person__cehrgpt_staging_pkey', N'person_pkey', N'OBJECT'",
        "EXEC sp_rename N'dbo.death__cehrgpt_staging', N'death'",
    ]


def test_mariadb_replace_is_one_atomic_rename():
    assert replace_statements(mysql.dialect(), "omop", ITEMS) == [
        (
            "RENAME TABLE omop.person TO omop.person__cehrgpt_old, "
            "omop.person__cehrgpt_staging TO omop.person, "
            "omop.death__cehrgpt_staging TO omop.death"
        )
    ]


def test_append_inserts_into_existing_targets_and_renames_missing_ones():
    statements = append_statements(sqlite.dialect(), None, ITEMS)
    assert statements[0].startswith("INSERT INTO person (person_id, gender_concept_id, year_of_birth, ")
    assert statements[0].endswith("ethnicity_source_concept_id FROM person__cehrgpt_staging")
    assert statements[1:] == ["ALTER TABLE death__cehrgpt_staging RENAME TO death"]


def test_swap_lock_timeouts_per_dialect():
    assert lock_timeout_statements("postgresql", 1.5) == ["SET LOCAL lock_timeout = 1500"]
    assert lock_timeout_statements("mssql", 1.5) == ["SET LOCK_TIMEOUT 1500"]
    assert lock_timeout_statements("mariadb", 1.5) == ["SET SESSION lock_wait_timeout = 2"]
    assert lock_timeout_statements("duckdb", 1.5) == []
