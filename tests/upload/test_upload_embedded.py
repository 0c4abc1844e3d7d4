"""End to end into the embedded targets (DuckDB through duckdb_engine, SQLite): API, CLI, faults."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from upload_fixtures import (
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


@pytest.fixture(params=["duckdb", "sqlite"])
def target(request, tmp_path) -> str:
    return f"{request.param}:///{tmp_path / f'omop.{request.param}'}"


def rows(url: str, table: str, columns: str) -> list[tuple]:
    """``columns`` of ``table`` ordered by the first, read through the reflected types (SQLite keeps text)."""
    engine = sa.create_engine(url)
    try:
        return select_rows(engine, table, columns)
    finally:
        engine.dispose()


def table_names(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return sorted(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def current(url: str) -> dict[str, list[tuple]]:
    engine = sa.create_engine(url)
    try:
        return snapshot(engine, None)
    finally:
        engine.dispose()


def test_upload_keeps_every_value_exactly(restored_omop, target):
    summary = upload_omop(restored_omop, target)
    assert table_names(target) == CDM_TABLES
    person_columns = (
        "person_id, gender_concept_id, year_of_birth, birth_datetime, race_concept_id, person_source_value"
    )
    assert rows(target, "person", person_columns) == EXPECTED_PERSON
    death_columns = "person_id, death_date, death_datetime, death_type_concept_id"
    assert rows(target, "death", death_columns) == EXPECTED_DEATH
    assert rows(target, "measurement", "measurement_id, value_as_number") == EXPECTED_MEASUREMENT
    assert rows(
        target, "observation_period", "observation_period_id, person_id, observation_period_end_date"
    ) == [
        (10, 1, dt.date(2001, 1, 1)),
        (11, 2, dt.date(2020, 2, 29)),
        (12, 3_000_000_000, dt.date(2019, 1, 2)),
    ]
    assert summary["total_rows"] == 9
    assert summary["mode"] == "replace"
    assert summary["tables"]["person"] == {
        "rows_loaded": 3,
        "rows_in_target": 3,
        "files": 2,
        "seconds": summary["tables"]["person"]["seconds"],
    }
    written = json.loads((restored_omop / "upload_summary.json").read_text())
    assert written["tables"] == summary["tables"]
    assert written["target"] == target


def test_strings_arrive_verbatim(tmp_path, target):
    write_table(tmp_path / "omop", "person", tricky_person())
    upload_omop(tmp_path / "omop", target)
    assert [v for (_, v) in rows(target, "person", "person_id, person_source_value")] == TRICKY_STRINGS


def test_replace_twice_is_safe_and_leaves_no_staging(restored_omop, target):
    upload_omop(restored_omop, target)
    first = current(target)
    upload_omop(restored_omop, target, mode="replace")
    assert current(target) == first
    assert table_names(target) == CDM_TABLES


def test_append_adds_rows_and_a_key_conflict_changes_nothing(restored_omop, tmp_path, target):
    upload_omop(restored_omop, target, tables=["person"])
    more = tmp_path / "more"
    write_table(more, "person", PERSON.slice(0, 1).set_column(0, "person_id", pa.array([4], pa.int64())))
    write_table(
        more,
        "death",
        PERSON.slice(0, 0).select(["person_id"]).append_column("death_date", pa.array([], pa.date32())),
    )
    summary = upload_omop(more, target, mode="append", summary_path=tmp_path / "s.json")
    assert summary["tables"]["person"]["rows_in_target"] == 4
    assert rows(target, "person", "person_id") == [(1,), (2,), (4,), (3_000_000_000,)]
    assert table_names(target) == ["death", "person"]
    before = current(target)
    with pytest.raises(
        UploadError, match=r"appending to the target tables failed: .*; the target was left unchanged"
    ):
        upload_omop(more, target, mode="append", summary_path=tmp_path / "s.json")
    assert current(target) == before


def test_fail_mode_refuses_when_a_target_table_exists(restored_omop, target):
    upload_omop(restored_omop, target, tables=["death"])
    with pytest.raises(
        UploadError, match=r"--mode fail: table death already exists \(1 of the 4 tables do\)"
    ):
        upload_omop(restored_omop, target, mode="fail")
    assert table_names(target) == ["death"]


def test_a_bad_row_midway_leaves_the_target_exactly_as_it_was(restored_omop, tmp_path, target):
    upload_omop(restored_omop, target)
    before = current(target)
    bad = tmp_path / "bad"
    for name in ("death", "measurement", "observation_period"):
        (bad / name).mkdir(parents=True)
        for file in (restored_omop / name).glob("*.parquet"):
            (bad / name / file.name).write_bytes(file.read_bytes())
    # person is loaded last; its second file repeats the first one's key.
    write_table(bad, "person", pa.concat_tables([PERSON, PERSON.slice(1, 1)]), parts=2)
    with pytest.raises(UploadError, match=r"^loading person failed: .*; the target was left unchanged$"):
        upload_omop(bad, target)
    assert current(target) == before
    assert table_names(target) == CDM_TABLES


def test_stale_staging_tables_of_a_killed_run_are_dropped(restored_omop, target, caplog):
    engine = sa.create_engine(target)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE person__cehrgpt_staging (junk INTEGER)")
        conn.exec_driver_sql("CREATE TABLE death__cehrgpt_old (junk INTEGER)")
        conn.exec_driver_sql("CREATE TABLE mine__cehrgpt_staging (junk INTEGER)")  # not ours: kept
    engine.dispose()
    with caplog.at_level(logging.INFO, logger="cehrgpt.upload.upload"):
        upload_omop(restored_omop, target)
    assert table_names(target) == sorted([*CDM_TABLES, "mine__cehrgpt_staging"])
    dropped = [r.getMessage() for r in caplog.records if "left behind" in r.getMessage()]
    assert dropped == [
        "dropping death__cehrgpt_old, person__cehrgpt_staging, left behind by an earlier upload that did not finish"
    ]


def test_a_killed_runs_staging_is_dropped_even_when_the_next_run_refuses(restored_omop, target):
    upload_omop(restored_omop, target)
    engine = sa.create_engine(target)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE person__cehrgpt_staging (junk INTEGER)")
    engine.dispose()
    with pytest.raises(
        UploadError, match=r"^--mode fail: table death already exists \(4 of the 4 tables do\)"
    ):
        upload_omop(restored_omop, target, mode="fail")
    assert table_names(target) == CDM_TABLES


def test_empty_tables_and_upper_case_columns(tmp_path, target):
    folder = tmp_path / "omop"
    write_table(
        folder,
        "death",
        PERSON.slice(0, 0).select(["person_id"]).append_column("death_date", pa.array([], pa.date32())),
    )
    upper = PERSON.rename_columns([name.upper() for name in PERSON.column_names])
    write_table(folder, "person", upper)
    summary = upload_omop(folder, target)
    assert summary["tables"]["death"]["rows_in_target"] == 0
    assert rows(target, "person", PERSON_COLUMNS) == EXPECTED_PERSON


def test_the_default_schema_can_be_named(restored_omop, target):
    upload_omop(restored_omop, target, schema="main", tables=["death"])
    assert rows(target, "death", "person_id") == [(2,)]


def test_missing_schema_is_refused(restored_omop, target):
    with pytest.raises(UploadError, match=r"schema 'nowhere' does not exist in .*; create it first"):
        upload_omop(restored_omop, target, schema="nowhere")


def test_cli_uploads_and_prints_one_line(restored_omop, tmp_path, capsys):
    url = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    summary = tmp_path / "out" / "summary.json"
    assert main(["--target", url, "--input_folder", str(restored_omop), "--summary_path", str(summary)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith(f"uploaded 9 rows in 4 tables to schema main of {url} (")
    assert json.loads(summary.read_text())["total_rows"] == 9


def test_cli_credential_file_with_sqlalchemy_url(restored_omop, tmp_path, capsys):
    ini = tmp_path / "c.ini"
    ini.write_text(f"[DEFAULT]\nsqlalchemy_url = sqlite:///{tmp_path / 'c.sqlite'}\n")
    assert (
        main(["--credential_path", str(ini), "--input_folder", str(restored_omop), "--tables", "death"]) == 0
    )
    assert rows(f"sqlite:///{tmp_path / 'c.sqlite'}", "death", "person_id") == [(2,)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--input_folder", "{tmp}/nowhere"],
            "error: input folder {tmp}/nowhere does not exist; expected the",
        ),
        (
            ["--input_folder", "{omop}", "--tables", "person,visits"],
            "error: --tables: 'visits' is not an OMOP",
        ),
        (
            ["--input_folder", "{omop}", "--schema", "other"],
            "error: schema 'other' does not exist in duckdb:///",
        ),
    ],
)
def test_cli_bad_input_is_one_error_line_and_exit_2(restored_omop, tmp_path, capsys, args, message):
    argv = ["--target", f"duckdb:///{tmp_path / 'x.duckdb'}"]
    argv += [a.format(tmp=tmp_path, omop=restored_omop) for a in args]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(message.format(tmp=tmp_path))


def test_cli_bad_target_url(restored_omop, capsys):
    assert main(["--target", "not a url", "--input_folder", str(restored_omop)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --target is not a SQLAlchemy database URL; expected e.g. "
        "postgresql+psycopg://user@host:5432/db or duckdb:///path/to/omop.duckdb"
    )
    assert main(["--target", "nosuchdb://h/x", "--input_folder", str(restored_omop)]) == 2
    assert "error: no SQLAlchemy dialect for 'nosuchdb'" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["postgresql://u@h:abc/db", "mysql+pymysql://root@127.0.0.1:33o6/test"])
def test_cli_non_numeric_port_is_one_line(restored_omop, tmp_path, capsys, url):
    assert main(["--target", url, "--input_folder", str(restored_omop)]) == 2
    port = url.rpartition(":")[2].partition("/")[0]
    assert capsys.readouterr().err.strip() == f"error: --target: port {port!r} is not a number"
    ini = tmp_path / "c.ini"
    ini.write_text(f"[DEFAULT]\nsqlalchemy_url = {url}\n")
    assert main(["--credential_path", str(ini), "--input_folder", str(restored_omop)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: sqlalchemy_url in {ini}: port {port!r} is not a number"
    )


def test_cli_usage_errors_exit_2(restored_omop, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--input_folder", str(restored_omop)])
    assert exit_info.value.code == 2
    assert "one of the arguments --credential_path --target is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--target", "sqlite://", "--input_folder", "x", "--mode", "merge"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--target", "sqlite://", "--input_folder", "x", "--chunk_size", "0"])
    assert exit_info.value.code == 2
    assert "--chunk_size: 0 must be at least 1" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--credential_path" in capsys.readouterr().out


def start_paused(argv: list[str], where: str, cwd: Path) -> subprocess.Popen:
    """Start the CLI with the fault-injection pause at ``where``; return once it is paused there."""
    env = {**os.environ, "CEHRGPT_UPLOAD_TEST_PAUSE": f"{where}:60", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cehrgpt.tools.upload_omop", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith(f"pausing 60.0 s at {where} "):
            return process
    process.wait()
    raise AssertionError(f"the upload ended (rc={process.returncode}) before pausing at {where}")


def cdm_only(tables: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    return {name: found for name, found in tables.items() if "__cehrgpt" not in name}


@pytest.mark.parametrize("where", ["observation_period", "swap"])
def test_killed_upload_leaves_duckdb_target_unchanged_and_rerun_succeeds(restored_omop, tmp_path, where):
    url = f"duckdb:///{tmp_path / 'k.duckdb'}"
    upload_omop(restored_omop, url, tables=["death", "person"])
    before = current(url)
    replacement = tmp_path / "replacement"
    write_table(replacement, "person", PERSON.slice(0, 1))
    for name in ("death", "observation_period"):
        (replacement / name).mkdir()
        for file in (restored_omop / name).glob("*.parquet"):
            (replacement / name / file.name).write_bytes(file.read_bytes())
    process = start_paused(["--target", url, "--input_folder", str(replacement)], where, tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait()
    after_kill = current(url)
    assert cdm_only(after_kill) == before
    assert main(["--target", url, "--input_folder", str(replacement)]) == 0
    assert table_names(url) == ["death", "observation_period", "person"]
    assert rows(url, "person", "person_id") == [(1,)]


def _index_names(url: str) -> list[tuple[str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:  # duckdb_engine's inspector cannot list indexes
            if url.startswith("duckdb"):
                found = conn.exec_driver_sql("SELECT table_name, index_name FROM duckdb_indexes()").all()
            else:
                found = conn.exec_driver_sql(
                    "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                ).all()
        return sorted((str(t), str(n)) for t, n in found)
    finally:
        engine.dispose()


def test_create_indexes_adds_the_cdm_indexes_once_and_replace_keeps_them(restored_omop, target):
    summary = upload_omop(restored_omop, target, create_indexes=True)
    assert summary["tables"]["person"]["indexes_created"] == [
        "CREATE INDEX idx_gender ON person (gender_concept_id)"
    ]
    assert _index_names(target) == [
        ("death", "idx_death_person_id_1"),
        ("measurement", "idx_measurement_concept_id_1"),
        ("measurement", "idx_measurement_person_id_1"),
        ("measurement", "idx_measurement_visit_id_1"),
        ("observation_period", "idx_observation_period_id_1"),
        ("person", "idx_gender"),
    ]
    again = upload_omop(restored_omop, target, mode="replace", create_indexes=True)
    assert {t: s["indexes_created"] for t, s in again["tables"].items()} == {t: [] for t in CDM_TABLES}
    assert len(_index_names(target)) == 6 and table_names(target) == CDM_TABLES


def test_replace_keeps_a_view_on_the_target(restored_omop, tmp_path, target):
    upload_omop(restored_omop, target)
    engine = sa.create_engine(target)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW born AS SELECT person_id, year_of_birth FROM person")
    engine.dispose()
    replacement = tmp_path / "replacement"
    write_table(replacement, "person", PERSON.slice(1, 1))
    upload_omop(replacement, target)
    engine = sa.create_engine(target)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT person_id FROM born").all() == [(2,)]
    engine.dispose()


def test_cli_create_indexes_flag(restored_omop, tmp_path):
    url = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    assert main(["--target", url, "--input_folder", str(restored_omop), "--create_indexes"]) == 0
    assert ("person", "idx_gender") in _index_names(url)
