"""Against the real PostgreSQL and MariaDB servers: exact values, DDL, all-or-nothing under faults, secrets.

Each test works in its own schema (PostgreSQL) or database (MariaDB), dropped afterwards.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from upload_fixtures import (
    DEATH,
    EXPECTED_DEATH,
    EXPECTED_MEASUREMENT,
    EXPECTED_PERSON,
    PERSON,
    TRICKY_STRINGS,
    select_rows,
    snapshot,
    tricky_person,
    write_table,
)

from cehrgpt.tools.upload_omop import main
from cehrgpt.upload import UploadError, upload_omop

CDM_TABLES = ["death", "measurement", "observation_period", "person"]
PERSON_COLUMNS = (
    "person_id, gender_concept_id, year_of_birth, birth_datetime, race_concept_id, person_source_value"
)
DEATH_COLUMNS = "person_id, death_date, death_datetime, death_type_concept_id"
SECRET = "Wr0ng-Secret!"


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request) -> tuple[str, str]:
    """(url, schema) on each real server."""
    return request.getfixturevalue("postgres_schema" if request.param == "postgresql" else "mariadb_database")


def state(url: str, schema: str) -> dict[str, list[tuple]]:
    engine = sa.create_engine(url)
    try:
        return snapshot(engine, schema)
    finally:
        engine.dispose()


def read(url: str, schema: str, table: str, columns: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        return select_rows(engine, table, columns, schema=schema)
    finally:
        engine.dispose()


def copy_tables(source: Path, destination: Path, names: list[str]) -> None:
    for name in names:
        (destination / name).mkdir(parents=True)
        for file in (source / name).glob("*.parquet"):
            (destination / name / file.name).write_bytes(file.read_bytes())


def test_every_value_arrives_exactly(restored_omop, server):
    url, schema = server
    summary = upload_omop(restored_omop, url, schema=schema)
    assert sorted(state(url, schema)) == CDM_TABLES
    assert read(url, schema, "person", PERSON_COLUMNS) == EXPECTED_PERSON
    assert read(url, schema, "death", DEATH_COLUMNS) == EXPECTED_DEATH
    assert read(url, schema, "measurement", "measurement_id, value_as_number") == EXPECTED_MEASUREMENT
    assert read(url, schema, "observation_period", "observation_period_id, observation_period_end_date") == [
        (10, dt.date(2001, 1, 1)),
        (11, dt.date(2020, 2, 29)),
        (12, dt.date(2019, 1, 2)),
    ]
    assert {name: t["rows_in_target"] for name, t in summary["tables"].items()} == {
        "death": 1,
        "measurement": 2,
        "observation_period": 3,
        "person": 3,
    }


def test_strings_arrive_verbatim(tmp_path, server):
    url, schema = server
    write_table(tmp_path / "omop", "person", tricky_person())
    upload_omop(tmp_path / "omop", url, schema=schema)
    assert [v for (_, v) in read(url, schema, "person", "person_id, person_source_value")] == TRICKY_STRINGS


def test_mariadb_refuses_nan_by_name(tmp_path, mariadb_database):
    url, schema = mariadb_database
    write_table(
        tmp_path / "omop",
        "measurement",
        pa.table(
            {
                "measurement_id": pa.array([1], pa.int64()),
                "person_id": pa.array([1], pa.int64()),
                "measurement_concept_id": pa.array([0], pa.int64()),
                "measurement_date": pa.array([dt.date(2000, 1, 1)]),
                "measurement_type_concept_id": pa.array([0], pa.int64()),
                "value_as_number": pa.array([float("nan")]),
            }
        ),
    )
    with pytest.raises(
        UploadError,
        match=r"^measurement\.value_as_number holds NaN or infinity, which MySQL/MariaDB cannot store$",
    ):
        upload_omop(tmp_path / "omop", url, schema=schema)
    assert state(url, schema) == {}


def column_types(url: str, schema: str, table: str) -> dict[str, tuple[str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                    "WHERE table_schema = :schema AND table_name = :table"
                ),
                {"schema": schema, "table": table},
            )
            return {name.lower(): (kind.lower(), nullable) for name, kind, nullable in found}
    finally:
        engine.dispose()


def test_tables_have_the_cdm_types_not_inferred_ones(restored_omop, postgres_schema, mariadb_database):
    for url, schema in (postgres_schema, mariadb_database):
        upload_omop(restored_omop, url, schema=schema, tables=["death"])
    pg = column_types(*postgres_schema, "death")
    assert pg["person_id"] == ("bigint", "NO")
    assert pg["death_datetime"] == ("timestamp without time zone", "YES")
    assert pg["cause_source_value"] == ("character varying", "YES")
    maria = column_types(*mariadb_database, "death")
    assert maria["death_datetime"] == ("datetime", "YES")
    assert maria["death_date"] == ("date", "NO")
    url, schema = postgres_schema
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        keys = conn.execute(
            sa.text("SELECT conname FROM pg_constraint WHERE connamespace = CAST(:s AS regnamespace)"),
            {"s": schema},
        )
        assert sorted(k for (k,) in keys) == []  # death has no primary key in CDM 5.4
    engine.dispose()


def test_replace_twice_keeps_keys_named_after_the_table(restored_omop, postgres_schema):
    url, schema = postgres_schema
    upload_omop(restored_omop, url, schema=schema)
    upload_omop(restored_omop, url, schema=schema, mode="replace")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        keys = conn.execute(
            sa.text("SELECT conname FROM pg_constraint WHERE connamespace = CAST(:s AS regnamespace)"),
            {"s": schema},
        )
        assert sorted(k for (k,) in keys) == ["measurement_pkey", "observation_period_pkey", "person_pkey"]
    engine.dispose()
    assert sorted(state(url, schema)) == CDM_TABLES


def test_a_bad_row_midway_leaves_the_target_unchanged(restored_omop, tmp_path, server):
    url, schema = server
    upload_omop(restored_omop, url, schema=schema)
    before = state(url, schema)
    bad = tmp_path / "bad"
    copy_tables(restored_omop, bad, ["death", "measurement", "observation_period"])
    write_table(bad, "person", pa.concat_tables([PERSON, PERSON.slice(2, 1)]), parts=2)  # duplicate key
    with pytest.raises(
        UploadError, match=r"^loading person failed: .*[Dd]uplicate.*; the target was left unchanged$"
    ):
        upload_omop(bad, url, schema=schema)
    assert state(url, schema) == before


def test_append_key_conflict_changes_nothing(restored_omop, tmp_path, server):
    url, schema = server
    upload_omop(restored_omop, url, schema=schema, tables=["person", "death"])
    more = tmp_path / "more"
    write_table(more, "person", PERSON.slice(0, 1).set_column(0, "person_id", pa.array([5], pa.int64())))
    copy_tables(restored_omop, more, ["observation_period"])
    upload_omop(more, url, schema=schema, mode="append")
    assert read(url, schema, "person", "person_id") == [(1,), (2,), (5,), (3_000_000_000,)]
    assert sorted(state(url, schema)) == ["death", "observation_period", "person"]
    before = state(url, schema)
    with pytest.raises(
        UploadError, match=r"^appending to the target tables failed: .*; the target was left unchanged$"
    ):
        upload_omop(more, url, schema=schema, mode="append")
    assert state(url, schema) == before


def test_replace_keeps_a_dependent_view_and_its_rows_are_the_new_ones(
    restored_omop, tmp_path, postgres_schema
):
    url, schema = postgres_schema
    upload_omop(restored_omop, url, schema=schema)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE VIEW {schema}.adults AS SELECT person_id FROM {schema}.person")
    replacement = tmp_path / "replacement"
    write_table(replacement, "person", PERSON.slice(1, 1))
    upload_omop(replacement, url, schema=schema)
    with engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT person_id FROM {schema}.adults").all() == [(2,)]
    engine.dispose()


def test_replace_keeps_grants_indexes_and_constraints_on_postgresql(restored_omop, tmp_path, postgres_schema):
    url, schema = postgres_schema
    role = f"r_{schema}"
    upload_omop(restored_omop, url, schema=schema)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role}")
            conn.exec_driver_sql(f"GRANT SELECT ON {schema}.person TO {role}")
            conn.exec_driver_sql(f"CREATE INDEX site_birth ON {schema}.person (year_of_birth)")
            conn.exec_driver_sql(
                f"ALTER TABLE {schema}.person ADD CONSTRAINT site_year CHECK (year_of_birth > 1800)"
            )
        oid_before = _oid(engine, schema, "person")
        replacement = tmp_path / "replacement"
        write_table(replacement, "person", PERSON.slice(1, 1))
        upload_omop(replacement, url, schema=schema, mode="replace")
        with engine.connect() as conn:
            grants = conn.execute(
                sa.text("SELECT privilege_type FROM information_schema.role_table_grants "
                        "WHERE table_schema = :s AND table_name = 'person' AND grantee = :r"),
                {"s": schema, "r": role},
            ).all()  # fmt: skip
            indexes = conn.execute(
                sa.text("SELECT indexname FROM pg_indexes WHERE schemaname = :s AND tablename = 'person'"),
                {"s": schema},
            ).all()
            checks = conn.execute(
                sa.text("SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass)"),
                {"t": f"{schema}.person"},
            ).all()
        assert grants == [("SELECT",)]
        assert sorted(i for (i,) in indexes) == ["person_pkey", "site_birth"]
        assert sorted(c for (c,) in checks) == ["person_pkey", "site_year"]
        assert _oid(engine, schema, "person") == oid_before  # the same table, emptied and refilled
        assert read(url, schema, "person", "person_id") == [(2,)]
        assert sorted(state(url, schema)) == CDM_TABLES  # no staging table left
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        engine.dispose()


def _oid(engine: sa.Engine, schema: str, table: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.text("SELECT CAST(:t AS regclass)::oid"), {"t": f"{schema}.{table}"}).scalar_one()
        )


def test_create_indexes_gives_the_cdm_keys_and_indexes_on_postgresql(restored_omop, postgres_schema):
    url, schema = postgres_schema
    summary = upload_omop(restored_omop, url, schema=schema, create_indexes=True)
    assert summary["tables"]["person"]["indexes_created"] == [
        f"CREATE INDEX idx_gender ON {schema}.person (gender_concept_id)"
    ]
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        indexes = conn.execute(
            sa.text("SELECT tablename, indexname FROM pg_indexes WHERE schemaname = :s"), {"s": schema}
        ).all()
    engine.dispose()
    assert sorted(indexes) == [
        ("death", "idx_death_person_id_1"),
        ("measurement", "idx_measurement_concept_id_1"),
        ("measurement", "idx_measurement_person_id_1"),
        ("measurement", "idx_measurement_visit_id_1"),
        ("measurement", "measurement_pkey"),
        ("observation_period", "idx_observation_period_id_1"),
        ("observation_period", "observation_period_pkey"),
        ("person", "idx_gender"),
        ("person", "person_pkey"),
    ]
    again = upload_omop(
        restored_omop, url, schema=schema, create_indexes=True
    )  # replace keeps them: none to add
    assert {t: s["indexes_created"] for t, s in again["tables"].items()} == {t: [] for t in CDM_TABLES}


def test_seed_credential_file_reaches_the_real_servers(
    restored_omop, tmp_path, postgres_schema, mariadb_database
):
    for url, schema, jdbc in (
        (*postgres_schema, "jdbc:postgresql://{host}:{port}/{database}"),
        (*mariadb_database, "jdbc:mariadb://{host}:{port}/{database}"),
    ):
        parsed = sa.make_url(url)
        ini = tmp_path / f"{schema}.ini"
        ini.write_text(
            "[DEFAULT]\n"
            f"base_url = {jdbc.format(host=parsed.host, port=parsed.port, database=parsed.database)}\n"
            f"user = {parsed.username}\npassword = {parsed.password or ''}\n"
        )
        args = ["--credential_path", str(ini), "--input_folder", str(restored_omop), "--schema", schema]
        assert main([*args, "--tables", "death"]) == 0
        assert read(url, schema, "death", DEATH_COLUMNS) == EXPECTED_DEATH


def run_cli(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cehrgpt.tools.upload_omop", *argv],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_wrong_password_is_one_line_without_the_password(restored_omop, mariadb_database):
    url, schema = mariadb_database
    parsed = sa.make_url(url)
    wrong = parsed.set(password=SECRET).render_as_string(hide_password=False)
    result = run_cli(["--target", wrong, "--input_folder", str(restored_omop), "--schema", schema])
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr
    assert "Wr0ng" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        (
            f"error: connecting to mysql+pymysql://root:***@{parsed.host}:{parsed.port}/{parsed.database} failed: "
            f"(1045, \"Access denied for user '{parsed.username}'@'{parsed.host}' (using password: YES)\"); "
            "the target was left unchanged"
        )
    ]


def test_password_from_environment_never_printed_on_failure(restored_omop, tmp_path, postgres_schema):
    url, _ = postgres_schema
    parsed = sa.make_url(url)
    ini = tmp_path / "c.ini"
    ini.write_text(
        f"[DEFAULT]\nbase_url = jdbc:postgresql://{parsed.host}:{parsed.port}/{parsed.database}\n"
        "user = no_such_role\npassword_env = OMOP_SECRET\n"
    )
    result = run_cli(
        ["--credential_path", str(ini), "--input_folder", str(restored_omop)], env={"OMOP_SECRET": SECRET}
    )
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: connecting to postgresql+psycopg://no_such_role:***@")
    assert 'role "no_such_role" does not exist; the target was left unchanged' in line


def start_paused(argv: list[str], where: str, seconds: int = 60) -> subprocess.Popen:
    """Start the CLI with the fault-injection pause at ``where``; return once it is paused there."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cehrgpt.tools.upload_omop", *argv],
        env={**os.environ, "CEHRGPT_UPLOAD_TEST_PAUSE": f"{where}:{seconds}", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith(f"pausing {float(seconds)} s at {where} "):
            return process
    process.wait()
    raise AssertionError(f"the upload ended (rc={process.returncode}) before pausing at {where}")


@pytest.mark.parametrize("where", ["person", "swap"])
def test_killed_upload_leaves_the_target_unchanged_and_rerun_succeeds(restored_omop, tmp_path, server, where):
    url, schema = server
    upload_omop(restored_omop, url, schema=schema, tables=["death", "person"])
    before = state(url, schema)
    replacement = tmp_path / "replacement"
    write_table(replacement, "person", PERSON.slice(1, 1))
    copy_tables(restored_omop, replacement, ["observation_period"])
    argv = ["--target", url, "--schema", schema, "--input_folder", str(replacement)]
    process = start_paused(argv, where)
    process.send_signal(signal.SIGKILL)
    process.wait()
    after = state(url, schema)
    assert {name: found for name, found in after.items() if name in before} == before
    # MariaDB (DDL commits at once) created the missing target before its transaction: it stays, empty
    created = [] if where == "person" or "postgresql" in url else ["observation_period"]
    assert sorted(n for n in after if n not in before and "__cehrgpt" not in n) == created
    assert all(after[name] == [] for name in created)
    assert main(argv) == 0
    assert sorted(state(url, schema)) == ["death", "observation_period", "person"]
    assert read(url, schema, "person", "person_id") == [(2,)]


def test_dropped_connection_midway_leaves_the_target_unchanged(restored_omop, tmp_path, postgres_schema):
    url, schema = postgres_schema
    upload_omop(restored_omop, url, schema=schema)
    before = state(url, schema)
    application = f"cehrgpt-upload-{schema}"
    tagged = sa.make_url(url).update_query_dict({"application_name": application}).render_as_string(False)
    # Paused after the first of person's two chunks; the next chunk meets the dropped connection.
    argv = ["--target", tagged, "--schema", schema, "--input_folder", str(restored_omop)]
    process = start_paused(argv, "person", seconds=8)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        killed = conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :a"),
            {"a": application},
        ).all()
    engine.dispose()
    assert killed
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: loading person failed: ")
    assert errors[0].endswith("; the target was left unchanged")
    after = state(url, schema)
    assert {name: found for name, found in after.items() if "__cehrgpt" not in name} == before


def test_mariadb_killed_after_the_commit_leaves_staging_that_the_rerun_drops(restored_omop, mariadb_database):
    url, schema = mariadb_database
    upload_omop(restored_omop, url, schema=schema, tables=["person"])
    argv = [
        "--target",
        url,
        "--schema",
        schema,
        "--input_folder",
        str(restored_omop),
        "--tables",
        "person,death",
    ]
    process = start_paused(argv, "retire")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert sorted(state(url, schema)) == [  # committed; the staging tables are still to be dropped
        "death",
        "death__cehrgpt_staging",
        "person",
        "person__cehrgpt_staging",
    ]
    assert read(url, schema, "death", DEATH_COLUMNS) == EXPECTED_DEATH
    assert main(argv) == 0
    assert sorted(state(url, schema)) == ["death", "person"]


def test_mariadb_replace_keeps_grants_and_indexes(restored_omop, tmp_path, mariadb_database):
    url, schema = mariadb_database
    upload_omop(restored_omop, url, schema=schema)
    engine = sa.create_engine(url)
    user = f"u_{schema}"[:32]
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE USER '{user}'@'localhost'")
            conn.exec_driver_sql(f"GRANT SELECT ON {schema}.person TO '{user}'@'localhost'")
            conn.exec_driver_sql(f"CREATE INDEX site_birth ON {schema}.person (year_of_birth)")
        replacement = tmp_path / "replacement"
        write_table(replacement, "person", PERSON.slice(1, 1))
        upload_omop(replacement, url, schema=schema)
        with engine.connect() as conn:
            grants = conn.exec_driver_sql(f"SHOW GRANTS FOR '{user}'@'localhost'").all()
            indexes = {r[2] for r in conn.exec_driver_sql(f"SHOW INDEX FROM {schema}.person").all()}
        assert any(f"SELECT ON `{schema}`.`person`" in g for (g,) in grants)
        assert indexes == {"PRIMARY", "site_birth"}
        assert read(url, schema, "person", "person_id") == [(2,)]
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'localhost'")
        engine.dispose()


def test_mariadb_append_drops_the_tables_it_created_when_it_fails(restored_omop, tmp_path, mariadb_database):
    url, schema = mariadb_database
    upload_omop(restored_omop, url, schema=schema, tables=["person"])
    before = state(url, schema)
    conflicting = tmp_path / "conflicting"
    copy_tables(restored_omop, conflicting, ["person", "observation_period"])
    with pytest.raises(UploadError, match=r"^appending to the target tables failed: .*[Dd]uplicate"):
        upload_omop(conflicting, url, schema=schema, mode="append")
    assert state(url, schema) == before


@pytest.mark.parametrize(
    ("fixture", "take"),
    [
        ("postgres_schema", "SELECT pg_advisory_lock(hashtext(:name))"),
        ("mariadb_database", "SELECT GET_LOCK(:name, 0)"),
    ],
)
def test_a_second_upload_into_the_same_schema_is_refused(request, restored_omop, fixture, take):
    url, schema = request.getfixturevalue(fixture)
    upload_omop(restored_omop, url, schema=schema, tables=["death"])
    before = state(url, schema)
    engine = sa.create_engine(url)
    with engine.connect() as holder:  # stands for an upload already running
        holder.execute(sa.text(take), {"name": f"cehrgpt_upload:{schema}"})
        with pytest.raises(
            UploadError, match=rf"^another upload into schema '{schema}' of .* is running; nothing"
        ):
            upload_omop(restored_omop, url, schema=schema)
    engine.dispose()
    assert state(url, schema) == before
    upload_omop(restored_omop, url, schema=schema)  # the lock went with the session


@pytest.mark.parametrize(
    ("fixture", "take"),
    [
        ("postgres_schema", "SELECT pg_advisory_lock(hashtext(:name))"),
        ("mariadb_database", "SELECT GET_LOCK(:name, 0)"),
    ],
)
def test_an_upload_without_schema_waits_for_one_naming_the_same_schema(request, restored_omop, fixture, take):
    """``--schema S`` and no ``--schema`` on a URL whose default schema is S take the same lock."""
    url, schema = request.getfixturevalue(fixture)
    if fixture == "mariadb_database":
        default_is_schema = sa.make_url(url).set(database=schema)
    else:
        default_is_schema = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    engine = sa.create_engine(url)
    with engine.connect() as holder:  # stands for an upload with --schema already running
        holder.execute(sa.text(take), {"name": f"cehrgpt_upload:{schema}"})
        with pytest.raises(
            UploadError, match=rf"^another upload into schema '{schema}' of .* is running; nothing"
        ):
            upload_omop(restored_omop, default_is_schema)
    engine.dispose()
    upload_omop(restored_omop, default_is_schema)  # the lock went with the session
    assert state(url, schema)["person"]


@pytest.mark.parametrize(
    ("fixture", "hold"),
    [
        ("postgres_schema", "LOCK TABLE {schema}.person IN SHARE MODE"),
        ("mariadb_database", "SELECT * FROM {schema}.person FOR UPDATE"),
    ],
)
def test_a_replace_blocked_by_a_writer_gives_up_and_changes_nothing(request, restored_omop, fixture, hold):
    url, schema = request.getfixturevalue(fixture)
    upload_omop(restored_omop, url, schema=schema)
    before = state(url, schema)
    engine = sa.create_engine(url)
    with engine.connect() as writer:  # a writer in an open transaction holds locks the DELETE needs
        writer.exec_driver_sql(hold.format(schema=schema))
        with pytest.raises(
            UploadError, match=r"^swapping the staging tables in failed: .*; the target was left unchanged$"
        ):
            upload_omop(restored_omop, url, schema=schema, lock_timeout_s=1)
        writer.rollback()
    engine.dispose()
    assert state(url, schema) == before


@pytest.mark.parametrize(
    ("fixture", "read_in_transaction"),
    [
        ("postgres_schema", "LOCK TABLE {schema}.person IN ACCESS SHARE MODE"),
        ("mariadb_database", "SELECT COUNT(*) FROM {schema}.person"),
    ],
)
def test_a_reader_does_not_block_a_replace_and_sees_the_old_rows(request, restored_omop, tmp_path, fixture,
                                                                 read_in_transaction):  # fmt: skip
    url, schema = request.getfixturevalue(fixture)
    upload_omop(restored_omop, url, schema=schema)
    replacement = tmp_path / "replacement"
    write_table(replacement, "person", PERSON.slice(1, 1))
    engine = sa.create_engine(url)
    with engine.connect() as reader:
        reader.exec_driver_sql(read_in_transaction.format(schema=schema))
        upload_omop(replacement, url, schema=schema, lock_timeout_s=1)
        reader.rollback()
    engine.dispose()
    assert read(url, schema, "person", "person_id") == [(2,)]


def _restore_generated_run(spark, root: Path, seed: int) -> Path:
    """Two patients as generation run ``seed`` writes them, restored to ``root/omop<seed>``."""
    from cehrgpt.generation.sharding import person_id
    from cehrgpt.omop.restore import restore

    vocabulary = root / "vocab" / "concept"
    if not vocabulary.exists():
        vocabulary.mkdir(parents=True)
        concepts = {101: "Condition", 201: "Drug", 9202: "Visit"}
        pq.write_table(
            pa.table(
                {"concept_id": pa.array(list(concepts), pa.int64()), "domain_id": list(concepts.values())}
            ),
            vocabulary / "part-0.parquet",
        )
    texts = ["year:2001 age:12 8532 8527 [VS] 9202 101 201 [VE] D5 [VS] 9202 101 [VE]",
             "year:1990 age:40 8507 8527 [VS] 9202 201 [VE]"]  # fmt: skip
    sequences = root / f"seq{seed}"
    sequences.mkdir()
    pq.write_table(
        pa.table(
            {
                "person_id": pa.array([person_id(seed, i) for i in range(len(texts))], pa.int64()),
                "concept_ids": pa.array([t.split() for t in texts], pa.list_(pa.string())),
            }
        ),
        sequences / "part-0.parquet",
    )
    restore(str(sequences), str(root / f"omop{seed}"), str(root / "vocab"), spark=spark)
    return root / f"omop{seed}"


def test_restores_of_two_generation_runs_append_to_one_cdm(spark, tmp_path, server):
    url, schema = server
    first, second = (_restore_generated_run(spark, tmp_path, seed) for seed in (1, 2))
    upload_omop(first, url, schema=schema, mode="append")
    upload_omop(second, url, schema=schema, mode="append")
    counts = {table: len(rows) for table, rows in state(url, schema).items()}
    assert counts["person"] == 4 and counts["visit_occurrence"] == 6 and counts["condition_occurrence"] == 4
    visits = read(url, schema, "visit_occurrence", "visit_occurrence_id")
    assert sorted({v >> 40 for (v,) in visits}) == [1, 2]
    before = state(url, schema)
    with pytest.raises(UploadError, match=r"^appending to the target tables failed: .*left unchanged$"):
        upload_omop(second, url, schema=schema, mode="append")  # the same run twice: its ids are taken
    assert state(url, schema) == before


def test_an_empty_release_never_replaces_a_database(restored_omop, tmp_path, server):
    url, schema = server
    upload_omop(restored_omop, url, schema=schema)
    before = state(url, schema)
    empty = tmp_path / "empty"
    copy_tables(restored_omop, empty, ["death", "measurement"])
    write_table(empty, "person", PERSON.slice(0, 0))
    result = run_cli(["--target", url, "--input_folder", str(empty), "--schema", schema])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            f"error: {empty / 'person'} holds 0 persons, fewer than --min_persons 1: an empty release never "
            "replaces a database (--allow_empty uploads it anyway); the target was left unchanged"
        )
    ]
    assert state(url, schema) == before
    assert not (empty / "upload_summary.json").exists()
    two = tmp_path / "two"
    write_table(two, "person", PERSON.slice(0, 2))
    with pytest.raises(UploadError, match=r"holds 2 persons, fewer than --min_persons 3: "):
        upload_omop(two, url, schema=schema, min_persons=3)
    assert state(url, schema) == before


def test_allow_empty_uploads_an_empty_release(restored_omop, tmp_path, server):
    url, schema = server
    upload_omop(restored_omop, url, schema=schema)
    empty = tmp_path / "empty"
    write_table(empty, "person", PERSON.slice(0, 0))
    result = run_cli(["--target", url, "--input_folder", str(empty), "--schema", schema, "--allow_empty"])
    assert result.returncode == 0, result.stderr
    assert read(url, schema, "person", "person_id") == []
    assert len(read(url, schema, "death", "person_id")) == 1  # tables not in the release are not touched


def _visits(rows: list[tuple[int, int, int | None]]) -> pa.Table:
    """visit_occurrence rows (id, person, preceding visit)."""
    return pa.table(
        {
            "visit_occurrence_id": pa.array([r[0] for r in rows], pa.int64()),
            "person_id": pa.array([r[1] for r in rows], pa.int64()),
            "visit_concept_id": pa.array([9202] * len(rows), pa.int64()),
            "visit_start_date": pa.array([dt.date(2010, 6, 2)] * len(rows), pa.date32()),
            "visit_end_date": pa.array([dt.date(2010, 6, 2)] * len(rows), pa.date32()),
            "visit_type_concept_id": pa.array([32817] * len(rows), pa.int64()),
            "preceding_visit_occurrence_id": pa.array([r[2] for r in rows], pa.int64()),
        }
    )


def _conditions(rows: list[tuple[int, int, int]]) -> pa.Table:
    """condition_occurrence rows (id, person, visit)."""
    return pa.table(
        {
            "condition_occurrence_id": pa.array([r[0] for r in rows], pa.int64()),
            "person_id": pa.array([r[1] for r in rows], pa.int64()),
            "condition_concept_id": pa.array([201826] * len(rows), pa.int64()),
            "condition_start_date": pa.array([dt.date(2010, 6, 2)] * len(rows), pa.date32()),
            "condition_type_concept_id": pa.array([32817] * len(rows), pa.int64()),
            "visit_occurrence_id": pa.array([r[2] for r in rows], pa.int64()),
        }
    )


def _release(folder: Path, persons: list[int], visits, conditions, deaths: list[int]) -> Path:
    """A release of the tables the OHDSI foreign keys tie together."""
    keep = pa.array([p in persons for p in PERSON["person_id"].to_pylist()])
    write_table(folder, "person", PERSON.filter(keep))
    write_table(folder, "visit_occurrence", _visits(visits))
    write_table(folder, "condition_occurrence", _conditions(conditions))
    write_table(
        folder, "death", DEATH.filter(pa.array([p in deaths for p in DEATH["person_id"].to_pylist()]))
    )
    return folder


def _foreign_keys(url: str, schema: str) -> set[tuple[str, str]]:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {
            (table, str(key["name"]).lower())
            for table in inspector.get_table_names(schema=schema)
            for key in inspector.get_foreign_keys(table, schema=schema)
        }
    finally:
        engine.dispose()


def test_replace_keeps_and_satisfies_the_ohdsi_foreign_keys(tmp_path, server):
    from cehrgpt.upload.indexes import foreign_key_statements

    url, schema = server
    first = _release(tmp_path / "first", [1, 2, 3_000_000_000], [(10, 1, None), (11, 1, 10), (12, 2, None)],
                     [(20, 1, 11), (21, 2, 12)], [2])  # fmt: skip
    upload_omop(first, url, schema=schema)
    engine = sa.create_engine(url)
    tables = {"person", "visit_occurrence", "condition_occurrence", "death"}
    with engine.begin() as conn:
        for table in sorted(tables):
            for statement in foreign_key_statements(
                engine.dialect, schema, table, parents=tables, existing=set()
            ):
                conn.exec_driver_sql(statement)
    engine.dispose()
    keys = _foreign_keys(url, schema)
    assert keys == {
        ("condition_occurrence", "fpk_condition_occurrence_person_id"),
        ("condition_occurrence", "fpk_condition_occurrence_visit_occurrence_id"),
        ("death", "fpk_death_person_id"),
        ("visit_occurrence", "fpk_visit_occurrence_person_id"),
        ("visit_occurrence", "fpk_visit_occurrence_preceding_visit_occurrence_id"),
    }
    # person 1, its visits and conditions go; person 2's visit is replaced by two, the second after the first
    second = _release(tmp_path / "second", [2, 3_000_000_000], [(13, 2, None), (14, 2, 13), (15, 3_000_000_000, None)],
                      [(22, 2, 14), (23, 3_000_000_000, 15)], [2])  # fmt: skip
    summary = upload_omop(second, url, schema=schema, mode="replace")
    assert {t: s["rows_in_target"] for t, s in summary["tables"].items()} == {
        "condition_occurrence": 2, "death": 1, "person": 2, "visit_occurrence": 3
    }  # fmt: skip
    assert read(url, schema, "person", "person_id") == [(2,), (3_000_000_000,)]
    assert read(url, schema, "visit_occurrence", "visit_occurrence_id, person_id, preceding_visit_occurrence_id") == [
        (13, 2, None), (14, 2, 13), (15, 3_000_000_000, None)
    ]  # fmt: skip
    assert read(url, schema, "condition_occurrence", "condition_occurrence_id, visit_occurrence_id") == [
        (22, 14), (23, 15)
    ]  # fmt: skip
    assert _foreign_keys(url, schema) == keys
    assert sorted(state(url, schema)) == sorted(tables)  # no staging table left


def test_create_indexes_adds_the_ohdsi_foreign_keys_among_the_uploaded_tables_once(tmp_path, server):
    url, schema = server

    def key(table: str, field: str, parent: str, parent_field: str) -> str:
        return (
            f"ALTER TABLE {schema}.{table} ADD CONSTRAINT fpk_{table}_{field} "
            f"FOREIGN KEY ({field}) REFERENCES {schema}.{parent} ({parent_field})"
        )

    first = _release(tmp_path / "first", [1, 2], [(10, 1, None), (11, 1, 10)], [(20, 1, 11)], [2])
    summary = upload_omop(first, url, schema=schema, create_indexes=True)
    assert {t: s["foreign_keys_created"] for t, s in summary["tables"].items()} == {
        "condition_occurrence": [
            key("condition_occurrence", "person_id", "person", "person_id"),
            key("condition_occurrence", "visit_occurrence_id", "visit_occurrence", "visit_occurrence_id"),
        ],
        "death": [key("death", "person_id", "person", "person_id")],
        "person": [],
        "visit_occurrence": [
            key("visit_occurrence", "person_id", "person", "person_id"),
            key(
                "visit_occurrence", "preceding_visit_occurrence_id", "visit_occurrence", "visit_occurrence_id"
            ),
        ],
    }
    keys = _foreign_keys(url, schema)
    assert len(keys) == 5
    second = _release(tmp_path / "second", [2], [(12, 2, None), (13, 2, 12)], [(21, 2, 13)], [2])
    again = upload_omop(second, url, schema=schema, create_indexes=True)  # replace keeps them: none to add
    assert {t: s["foreign_keys_created"] for t, s in again["tables"].items()} == {
        "condition_occurrence": [], "death": [], "person": [], "visit_occurrence": []
    }  # fmt: skip
    assert _foreign_keys(url, schema) == keys
    assert read(url, schema, "visit_occurrence", "visit_occurrence_id, preceding_visit_occurrence_id") == [
        (12, None), (13, 12)
    ]  # fmt: skip
