"""CDM 5.4 DDL per dialect (SQL Server compiled only) and the swap statements."""

from __future__ import annotations

import duckdb_engine
import pytest
from sqlalchemy.dialects import mssql, mysql, postgresql, sqlite

from cehrgpt.omop.cdm import cdm_fields, cdm_tables, dependency_order, foreign_keys
from cehrgpt.upload.ddl import SwapItem, append_statements, create_table_sql, replace_statements
from cehrgpt.upload.upload import lock_timeout_statements, transaction_statements


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


PERSON_COLUMNS = ", ".join(f.name for f in cdm_fields("person"))


def test_postgresql_replace_empties_and_refills_the_target_and_renames_a_new_one_in():
    assert replace_statements(postgresql.dialect(), "cdm", ITEMS) == [
        "DELETE FROM cdm.person",
        f"INSERT INTO cdm.person ({PERSON_COLUMNS}) SELECT {PERSON_COLUMNS} FROM cdm.person__cehrgpt_staging",
        "ALTER TABLE cdm.death__cehrgpt_staging RENAME TO death",
    ]


def test_sql_server_replace_keeps_the_target_and_uses_sp_rename_for_a_new_one():
    assert replace_statements(mssql.dialect(), "dbo", ITEMS) == [
        "DELETE FROM dbo.person",
        f"INSERT INTO dbo.person ({PERSON_COLUMNS}) SELECT {PERSON_COLUMNS} FROM dbo.person__cehrgpt_staging",
        "EXEC sp_rename N'dbo.death__cehrgpt_staging', N'death'",
    ]


def test_mariadb_replace_is_dml_only_on_targets_that_exist():
    existing = [SwapItem("person", True, True), SwapItem("death", True, False)]
    death = ", ".join(f.name for f in cdm_fields("death"))
    assert replace_statements(mysql.dialect(), "omop", existing) == [
        "DELETE FROM omop.death",  # children emptied first, parents filled first: death.person_id → person
        "DELETE FROM omop.person",
        f"INSERT INTO omop.person ({PERSON_COLUMNS}) SELECT {PERSON_COLUMNS} FROM omop.person__cehrgpt_staging",
        f"INSERT INTO omop.death ({death}) SELECT {death} FROM omop.death__cehrgpt_staging",
    ]
    with pytest.raises(ValueError, match="on MariaDB the target death must exist"):
        replace_statements(mysql.dialect(), "omop", ITEMS)


def test_dependency_order_puts_every_parent_before_its_children():
    restored = ["visit_occurrence", "person", "measurement", "death", "condition_occurrence", "condition_era",
                "observation_period", "drug_exposure", "procedure_occurrence", "device_exposure", "observation"]  # fmt: skip
    assert dependency_order(restored) == [
        "person", "condition_era", "death", "observation_period", "visit_occurrence", "condition_occurrence",
        "device_exposure", "drug_exposure", "measurement", "observation", "procedure_occurrence",
    ]  # fmt: skip
    everything = dependency_order(cdm_tables())
    late = {
        (table, f.foreign_table)
        for table in everything
        for f in foreign_keys(table)
        if everything.index(f.foreign_table) > everything.index(table)
    }
    # self-references, and the three edges that break the vocabulary's cycles through concept
    assert {edge for edge in late if edge[0] != edge[1]} == {
        ("concept_class", "concept"), ("domain", "concept"), ("concept", "vocabulary")
    }  # fmt: skip


def test_mariadb_fills_a_visit_s_preceding_visit_after_the_rows_and_empties_it_before_the_delete():
    visits = [SwapItem("visit_occurrence", True, True)]
    names = [f.name for f in cdm_fields("visit_occurrence")]
    columns = ", ".join(names)
    selected = ", ".join("NULL" if n == "preceding_visit_occurrence_id" else n for n in names)
    unlink = (
        "UPDATE omop.visit_occurrence SET preceding_visit_occurrence_id = NULL "
        "WHERE preceding_visit_occurrence_id IS NOT NULL"
    )
    link = (
        "UPDATE omop.visit_occurrence AS t JOIN omop.visit_occurrence__cehrgpt_staging AS s "
        "ON t.visit_occurrence_id = s.visit_occurrence_id "
        "SET t.preceding_visit_occurrence_id = s.preceding_visit_occurrence_id "
        "WHERE s.preceding_visit_occurrence_id IS NOT NULL"
    )
    assert replace_statements(mysql.dialect(), "omop", visits) == [
        unlink,
        "DELETE FROM omop.visit_occurrence",
        f"INSERT INTO omop.visit_occurrence ({columns}) SELECT {selected} FROM omop.visit_occurrence__cehrgpt_staging",
        link,
    ]
    # PostgreSQL and SQL Server check a key at the end of each statement: one DELETE, one INSERT
    assert [s.split(" (")[0] for s in replace_statements(postgresql.dialect(), "cdm", visits)] == [
        "DELETE FROM cdm.visit_occurrence", "INSERT INTO cdm.visit_occurrence"
    ]  # fmt: skip


def test_append_inserts_into_existing_targets_and_renames_missing_ones():
    statements = append_statements(sqlite.dialect(), None, ITEMS)
    assert statements[0].startswith("INSERT INTO person (person_id, gender_concept_id, year_of_birth, ")
    assert statements[0].endswith("ethnicity_source_concept_id FROM person__cehrgpt_staging")
    assert statements[1:] == ["ALTER TABLE death__cehrgpt_staging RENAME TO death"]


def test_swap_lock_timeouts_per_dialect():
    assert lock_timeout_statements("postgresql", 1.5) == ["SET LOCAL lock_timeout = 1500"]
    assert lock_timeout_statements("mssql", 1.5) == ["SET LOCK_TIMEOUT 1500"]
    assert lock_timeout_statements("mariadb", 1.5) == [
        "SET SESSION lock_wait_timeout = 2",
        "SET SESSION innodb_lock_wait_timeout = 2",
    ]
    assert lock_timeout_statements("duckdb", 1.5) == []


def test_sql_server_final_transaction_sets_nocount_first():
    assert transaction_statements("mssql", 1.5) == ["SET NOCOUNT ON", "SET LOCK_TIMEOUT 1500"]
    assert transaction_statements("postgresql", 1.5) == ["SET LOCAL lock_timeout = 1500"]
