"""Upload fixtures: a tiny hand-made restored-OMOP folder and throwaway schemas on the real servers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from upload_fixtures import DEATH, MEASUREMENT, OBSERVATION_PERIOD, PERSON, write_table


@pytest.fixture
def restored_omop(tmp_path: Path) -> Path:
    """A restore job's output: four CDM tables, a rejected/ folder and a restore report to ignore."""
    folder = tmp_path / "restored_omop"
    write_table(folder, "person", PERSON, parts=2)
    write_table(folder, "death", DEATH)
    write_table(folder, "observation_period", OBSERVATION_PERIOD)
    write_table(folder, "measurement", MEASUREMENT)
    (folder / "rejected").mkdir()
    (folder / "rejected" / "part-0.json").write_text('{"person_id": 9}\n')
    (folder / "restore_report.json").write_text("{}\n")
    (folder / "person" / "_SUCCESS").write_text("")
    (folder / "_SUCCESS").write_text("")  # the restore job writes it last
    return folder


@pytest.fixture
def postgres_schema(postgres_url):
    """A fresh PostgreSQL schema on the test server, dropped afterwards: (url, schema)."""
    url = postgres_url
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield url, schema
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    engine.dispose()


@pytest.fixture
def mariadb_database(mariadb_url):
    """A fresh MariaDB database on the test server, dropped afterwards: (url, database)."""
    url = mariadb_url
    database = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {database}")
    yield url, database
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}")
    engine.dispose()
